"""Seed-paired statistics of a study's cells: a cell is a (masking, objective, variant) over seeds;
two cells are compared by the per-seed difference of a metric, its mean and a two-sided Student-t
interval (n >= 2), "beyond noise" when the interval excludes zero, and how many seeds a difference
of the observed size would need (`seeds_to_resolve`). The interval covers training randomness,
not the sampling of the validation videos. Tables and words around them: `tgmae.study.report`.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence


def cell_key(record: dict) -> tuple[str, str, str]:
    """(masking, objective, variant) of a study record; variant "" for the study's base runs."""
    return record["masking"], record["objective"], record.get("variant") or ""


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def diff_stats(diffs: list[float]) -> dict:
    """{"diffs", "n", "mean", "std", "ci" (95% t-interval or None), "wins"} of paired differences."""
    return {"diffs": diffs, "n": len(diffs), "mean": statistics.fmean(diffs), "std": sample_std(diffs),
            "ci": t_interval(diffs), "wins": sum(d > 0 for d in diffs)}


def t_interval(values: Sequence[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """Two-sided Student-t confidence interval (lo, hi) of the mean of `values` at `level`;
    None with fewer than 2 values (no spread to estimate)."""
    n = len(values)
    if n < 2:
        return None
    from scipy.stats import t

    mean, half = statistics.fmean(values), float(t.ppf(0.5 + level / 2, n - 1)) * sample_std(values) / math.sqrt(n)
    return mean - half, mean + half


def paired_difference(records: Sequence[dict], a: tuple[str, str, str], b: tuple[str, str, str],
                      metric: str = "linear_probe_top1") -> Optional[dict]:
    """`metric` of cell a minus cell b (`cell_key`s), paired by seed: {"a", "b", "metric", "seeds"} +
    `diff_stats`; None when no seed has both."""
    by_key = {cell_key(r) + (r["seed"],): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    pairs = [(s, by_key[a + (s,)].get(metric), by_key[b + (s,)].get(metric)) for s in seeds
             if a + (s,) in by_key and b + (s,) in by_key]
    pairs = [(s, x, y) for s, x, y in pairs if x is not None and y is not None]
    if not pairs:
        return None
    return {"a": a, "b": b, "metric": metric, "seeds": [s for s, _, _ in pairs],
            **diff_stats([x - y for _, x, y in pairs])}


def contrastive_gains(records: Sequence[dict], metric: str = "linear_probe_top1") -> list[dict]:
    """Per masking (and variant): `metric` of MAE + contrastive minus MAE alone, paired by seed
    (Table 2's question); rows as `paired_difference` plus "masking" and "variant"."""
    rows = []
    for masking, variant in sorted({(r["masking"], cell_key(r)[2]) for r in records}):
        d = paired_difference(records, (masking, "mae+contrastive", variant), (masking, "mae", variant), metric)
        if d is not None:
            rows.append(dict(d, masking=masking, variant=variant))
    return rows


def points(value: float) -> str:
    """A difference of fractions in signed percentage points, one decimal (0.0123 -> "+1.2")."""
    return f"{round(100 * value, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def verdict(d: dict) -> str:
    """Whether a paired difference is beyond noise, in words (points = percentage points)."""
    if d["ci"] is None:
        return (f"{points(d['mean'])} points from {d['n']} seed: no interval, so it cannot be told from noise "
                "(run seeds=[0,1,2])")
    lo, hi = d["ci"]
    if d["std"] < 1e-6:  # a degenerate interval (float32 accuracies: ~1e-7 apart when "equal")
        return (f"{points(d['mean'])} points in each of the {d['n']} seeds: no spread between seeds to judge "
                "noise by, so it cannot be told from noise")
    where = f"the 95% interval over n = {d['n']} seeds, [{points(lo)}, {points(hi)}],"
    if lo > 0:
        return f"{points(d['mean'])} points, beyond noise: {where} lies above zero"
    if hi < 0:
        return f"{points(d['mean'])} points, beyond noise in the other direction: {where} lies below zero"
    need = seeds_to_resolve(d["mean"], d["std"])
    spread = f"; at this seed-to-seed s.d. ({100 * d['std']:.1f} points)"
    if need is not None:
        power = f"{spread} a difference this size needs ~{need} seeds for its interval to exclude zero"
    elif round(100 * d["mean"], 1) == 0:
        power = ": no number of seeds tells a zero difference from zero"
    else:
        power = f"{spread} more than {MAX_SEEDS} seeds would be needed to tell a difference this size from zero"
    return f"{points(d['mean'])} points, within noise: {where} includes zero{power}"


MAX_SEEDS = 100


def seeds_to_resolve(mean: float, std: float, level: float = 0.95) -> Optional[int]:
    """Smallest n >= 2 with t(n-1) * std / sqrt(n) < |mean| (the interval excludes zero), taking the
    observed mean and std as true; None above MAX_SEEDS or for a zero mean."""
    from scipy.stats import t

    for n in range(2, MAX_SEEDS + 1):
        if float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n) < abs(mean):
            return n
    return None
