"""Loss curves from metrics logs (JSONL records with a `step` and metric keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from tgmae.viz.plotting import pyplot, save_figure


def plot_curves(
    runs: Mapping[str, Sequence[dict]],
    keys: Sequence[str],
    out_path: str | Path,
    title: str = "",
    smooth: int = 1,
) -> Path:
    """One panel per metric key, one line per run; `smooth` = moving-average window in records."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, records in runs.items():
            pts = [(r["step"], r[key]) for r in records if key in r and r[key] == r[key]]
            if not pts:
                continue
            steps, values = zip(*pts)
            values = _moving_average(list(values), smooth)
            ax.plot(steps, values, label=name, linewidth=1.4)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    return save_figure(fig, out_path, title, dpi=120)


def _moving_average(values: list[float], window: int) -> list[float]:
    """Mean of each value and up to `window` - 1 before it."""
    if window <= 1:
        return values
    return [sum(values[max(0, i + 1 - window):i + 1]) / min(i + 1, window) for i in range(len(values))]
