"""The video-text gain of a finished study under several linear probes, and how much of its
spread the validation sample explains.

For every masking with MAE and MAE + contrastive runs over the same seeds (ROOT/runs/<mask>__mae__s<k>
and <mask>__mae_contrastive__s<k>), reads each run's cached probe features (read only; no model
runs) and fits, per probe variant, an L-BFGS logistic regression (`tgmae.evaluate.logistic`):
`cv` (the default L2 grid, 4-fold CV: what `eval.probe_optimizer=lbfgs` does), `cv_wide` (grid
1e-6 ... 1) and `l2=1e-3`. Prints per masking the paired gain (points), its 95% t-interval over
seeds, and, for the `cv` probe, the paired-bootstrap standard deviation of each seed's gain over
the validation videos (2,000 resamples): when that is as large as the spread between seeds, more
validation videos narrow the interval. Deterministic (fixed folds and resampling seeds).

    PYTHONPATH=src python benchmarks/study_probe_gains.py runs/study [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from tgmae.autotune import cpu_info
from tgmae.evaluate.logistic import fit_logistic, select_l2

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
PROBES = {"cv": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "cv_wide": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0], "l2=1e-3": [1e-3]}


def features(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for split in ("train", "val"):
        files = sorted((run / "probe" / "features").glob(f"{split}-*.safetensors"), key=lambda f: f.stat().st_mtime)
        if not files:
            raise SystemExit(f"{run}/probe/features: no cached {split} features")
        data = load_file(str(files[-1]))
        out[split], out[f"{split}_y"] = data["features"].float(), data["labels"].long()
    return out


def correct(f: dict[str, torch.Tensor], grid: list[float], classes: int) -> torch.Tensor:
    """bool [N_val]: which validation videos the probe gets right."""
    l2 = select_l2(f["train"], f["train_y"], grid, 4, 0, classes)[0] if len(grid) > 1 else grid[0]
    return fit_logistic(f["train"], f["train_y"], l2, classes).predict(f["val"]) == f["val_y"]


def interval(d: list[float]) -> tuple[float, float, float]:
    n, mu = len(d), sum(d) / len(d)
    if n < 2:
        return mu, float("nan"), float("nan")
    h = T975[n - 1] * math.sqrt(sum((x - mu) ** 2 for x in d) / (n - 1)) / math.sqrt(n)
    return mu, mu - h, mu + h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a study folder (its runs/ subfolder holds the cells)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = args.root / "runs"
    masks = sorted({p.name.split("__")[0] for p in runs.glob("*__mae__s*")})
    print(f"CPU: {cpu_info()[0]}, torch {torch.__version__}")
    result: dict = {"cpu_model": cpu_info()[0]}
    for mask in masks:
        seeds = sorted(int(p.name.rsplit("__s", 1)[1]) for p in runs.glob(f"{mask}__mae__s*")
                       if (runs / f"{mask}__mae_contrastive__s{p.name.rsplit('__s', 1)[1]}").is_dir())
        if not seeds:
            continue
        feats = {(o, s): features(runs / f"{mask}__{o}__s{s}") for o in ("mae", "mae_contrastive") for s in seeds}
        classes = int(max(f["train_y"].max() for f in feats.values())) + 1
        result[mask] = {}
        for probe, grid in PROBES.items():
            gains, boot = [], []
            for s in seeds:
                a, b = (correct(feats[(o, s)], grid, classes).float() for o in ("mae", "mae_contrastive"))
                diff = b - a
                gains.append(100 * diff.mean().item())
                if probe == "cv":
                    g = torch.Generator().manual_seed(s)
                    idx = torch.randint(0, len(diff), (2000, len(diff)), generator=g)
                    boot.append(100 * diff[idx].mean(1).std().item())
            mu, lo, hi = interval(gains)
            result[mask][probe] = {"gains": gains, "mean": mu, "ci": [lo, hi], "bootstrap_sd": boot or None}
            extra = f"; bootstrap s.d. per seed {', '.join(f'{b:.1f}' for b in boot)}" if boot else ""
            print(f"{mask:12s} {probe:8s} gain {mu:+.1f} [{lo:+.1f}, {hi:+.1f}] per seed "
                  f"{', '.join(f'{g:+.1f}' for g in gains)}{extra}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
