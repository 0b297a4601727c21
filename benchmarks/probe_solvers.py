"""Linear probe solvers on the same features: LARS on the loop (the study's probe) vs L-BFGS (CLIP's).

Times, in CPU seconds of this process with 1 torch thread (time.process_time), the two ways
`tgmae probe` fits a head on cached features, alternating round by round:
- lars: `ProbeTask` on the shared `Trainer`, the study's settings (tgmae.study.run.PROBE_BASE:
  100 epochs, batch 32, lr 1.0, 10 warmup epochs; checkpoints as the study writes them);
- lbfgs: `logistic_probe` (eval.probe_optimizer=lbfgs): 4-fold CV over the default L2 grid, then
  the fit on all training features; results, head and config written.
Features: synthetic [1152, 64] train / [288, 64] val, 10 classes (the study's shapes), or a probe
folder's cached ones (`--features DIR`, read only). `--cells ROOT` adds, for every ROOT/*/probe with
cached features and a probe_results.json, the lbfgs top-1 beside the recorded one.

    PYTHONPATH=src python benchmarks/probe_solvers.py --rounds 3 [--features RUN/probe/features] \\
        [--cells runs/study/runs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def synthetic(n: int, seed: int, dim: int = 64, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Weak class means under a large low-rank nuisance (as pooled features of a small encoder)."""
    g = torch.Generator().manual_seed(seed)
    fixed = torch.Generator().manual_seed(1234)
    means, mix = 0.25 * torch.randn(classes, dim, generator=fixed), torch.randn(4, dim, generator=fixed)
    y = torch.arange(n) % classes
    return means[y] + 3 * torch.randn(n, 4, generator=g) @ mix + torch.randn(n, dim, generator=g), y


def cached(features_dir: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    out = []
    for subset in ("train", "val"):
        files = sorted(features_dir.glob(f"{subset}-*.safetensors"), key=lambda f: f.stat().st_mtime)
        t = load_file(str(files[-1]))
        out.append((t["features"].float(), t["labels"].long()))
    return out[0], out[1]


def probe_config(out: Path, optimizer: str):
    from tgmae.evaluate.recipes import PROBE_RECIPE, with_recipe
    from tgmae.study.run import PROBE_BASE

    return with_recipe(PROBE_RECIPE, None, PROBE_BASE + [
        f"train.output_dir={out}", "train.precision=fp32", "train.device=cpu", "log.tensorboard=false",
        "data.num_workers=0", "checkpoint.resume=", f"eval.probe_optimizer={optimizer}"])


def run_lars(train, val, classes: int, out: Path) -> float:
    from tgmae.evaluate.probe import ProbeTask, score_probe
    from tgmae.train.loop import Trainer

    cfg = probe_config(out, "lars")
    fit = Trainer(ProbeTask(cfg, train, val, classes), cfg).fit()
    return score_probe(fit.model, val)["top1"]


def run_lbfgs(train, val, classes: int, out: Path) -> float:
    from tgmae.evaluate.probe import logistic_probe

    return logistic_probe(probe_config(out, "lbfgs"), train, val, classes).top1


def main(argv=None) -> int:
    from tgmae.evaluate.probe import FeatureDataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--features", default="", help="a probe folder's features/ (default: synthetic)")
    p.add_argument("--cells", default="", help="a study's runs/ folder: lbfgs top-1 of every probe there")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.features:
        (x, y), (xv, yv) = cached(Path(args.features))
    else:
        (x, y), (xv, yv) = synthetic(1152, 0), synthetic(288, 1)
    train, val = FeatureDataset(x, y), FeatureDataset(xv, yv)
    classes = int(max(y.max(), yv.max())) + 1
    solvers = {"lars": run_lars, "lbfgs": run_lbfgs}
    seconds: dict[str, list[float]] = {k: [] for k in solvers}
    top1: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in (list(solvers) if r % 2 == 0 else list(reversed(solvers))):
                t = time.process_time()
                top1[name] = solvers[name](train, val, classes, Path(tmp) / f"{name}{r}")
                seconds[name].append(time.process_time() - t)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    result = {"cpu": cpu, "torch": torch.__version__, "threads": 1, "features": args.features or "synthetic",
              "shapes": {"train": list(x.shape), "val": list(xv.shape), "classes": classes},
              "cpu_seconds": {k: statistics.median(v) for k, v in seconds.items()}, "all_cpu_seconds": seconds,
              "top1": top1}
    print(f"{cpu}, torch {torch.__version__}, 1 thread; features {result['features']} "
          f"train {list(x.shape)} val {list(xv.shape)}, {classes} classes")
    for k in solvers:
        print(f"  {k:6s} median {result['cpu_seconds'][k]:7.2f} CPU s over {args.rounds} rounds   top-1 {top1[k]:.4f}")
    print(f"  lars / lbfgs: {result['cpu_seconds']['lars'] / result['cpu_seconds']['lbfgs']:.1f}x")
    if args.cells:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for probe in sorted(Path(args.cells).glob("*/probe")):
                if not (probe / "probe_results.json").is_file() or not list((probe / "features").glob("train-*")):
                    continue
                (cx, cy), (cxv, cyv) = cached(probe / "features")
                k = int(max(cy.max(), cyv.max())) + 1
                recorded = json.loads((probe / "probe_results.json").read_text())
                res = run_lbfgs(FeatureDataset(cx, cy), FeatureDataset(cxv, cyv), k, Path(tmp) / probe.parent.name)
                l2 = json.loads((Path(tmp) / probe.parent.name / "probe_results.json").read_text())["l2"]
                rows.append({"cell": probe.parent.name, "recorded": recorded["top1"],
                             "recorded_optimizer": recorded["optimizer"], "lbfgs": res, "l2": l2})
                print(f"  {probe.parent.name:34s} {recorded['optimizer']} {recorded['top1']:.4f}  "
                      f"lbfgs {res:.4f} (l2 {l2:g})")
        result["cells"] = rows
        if rows:
            gain = [r["lbfgs"] - r["recorded"] for r in rows]
            print(f"  lbfgs - recorded: mean {statistics.mean(gain):+.4f}, higher in "
                  f"{sum(g > 0 for g in gain)} of {len(gain)} cells")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
