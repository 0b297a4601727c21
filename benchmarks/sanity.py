"""Learning sanity checks (issue 14): does each objective learn, at a stated CPU budget?

    PYTHONPATH=src python benchmarks/sanity.py EXPERIMENT [--budget S] [--out docs/sanity]

Experiments (each writes OUT/EXPERIMENT.json; `figures` draws docs/figures/sanity_*.png):
  contrastive  supervised reference, then InfoNCE with oracle class texts (alone and with MAE;
               distinct vs near-collinear texts; text_norm off/on) -> linear probe top-1
  mae          masked MSE vs the per-patch-mean baseline for grid size / ratio / lr
  difficulty   supervised from scratch vs the synthetic set's distractor knobs (the curve)
All runs: 1 torch thread, budgets in CPU seconds of training (time.process_time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from tgmae.evaluate.sanity import (RunConfig, class_text_table, linear_probe, make_data, pretrain,
                                   train_supervised)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _log(*a):
    print(*a, flush=True)


def exp_contrastive(budget: float, n_train: int, n_val: int, only: list[int] | None) -> list[dict]:
    data = make_data(n_train, n_val, distractors=0)
    rows = []
    if only is None or 0 in only:
        sup = train_supervised(data, RunConfig(budget_s=budget))
        rows.append({"run": "supervised (cross-entropy)", "val_top1": sup["val_top1"], "train_top1": sup["train_top1"],
                     "steps": sup["steps"], "cpu_s": sup["cpu_s"]})
        _log(rows[-1])
    variants = [
        ("mae only", dict(objective="mae"), 0.0),
        ("contrastive, distinct texts", dict(objective="contrastive", text_norm=False), 0.0),
        ("contrastive, collinear texts (cos .999), projected", dict(objective="contrastive", text_norm=False,
                                                                     text_projection=True), 0.999),
        ("contrastive, collinear texts, projected + text_norm", dict(objective="contrastive", text_norm=True,
                                                                      text_projection=True), 0.999),
        ("mae+contrastive, collinear texts, projected", dict(objective="mae+contrastive", text_norm=False,
                                                              text_projection=True), 0.999),
        ("mae+contrastive, collinear texts, projected + text_norm", dict(objective="mae+contrastive",
                                                                          text_norm=True, text_projection=True), 0.999),
        ("mae+contrastive, distinct texts", dict(objective="mae+contrastive", text_norm=False), 0.0),
    ]
    for i, (name, kw, cos) in enumerate(variants, start=1):
        if only is not None and i not in only:
            continue
        cfg = RunConfig(budget_s=budget, **kw)
        table = class_text_table(10, 512 if cfg.text_projection else cfg.proj_dim, cosine=cos)
        res = pretrain(data, cfg, table)
        probe = linear_probe(res["model"].mae.encoder, data)
        rows.append({"run": name, "text_cosine": cos, "val_top1": probe["val_top1"], "train_top1": probe["train_top1"],
                     "loss_nce": res.get("loss_nce"), "loss_mse": res.get("loss_mse"), "steps": res["steps"],
                     "cpu_s": res["cpu_s"]})
        _log(rows[-1])
    return rows


def exp_mae(budget: float, n_train: int, n_val: int, only: list[int] | None) -> list[dict]:
    data = make_data(n_train, n_val, distractors=0)
    rows = []
    for name, kw in [("16 px patches (4x4), ratio .75, lr 1e-3", dict()),
                     ("8 px patches (8x8), ratio .75, lr 1e-3", dict(patch_size=8)),
                     ("16 px patches, ratio .5, lr 1e-3", dict(mask_ratio=0.5)),
                     ("16 px patches, ratio .75, lr 3e-3", dict(lr=3e-3))]:
        if only is not None and len(rows) not in only:
            rows.append(None)
            continue
        res = pretrain(data, RunConfig(budget_s=budget, objective="mae", **kw))
        fig = FIGURES / f"sanity_mae_{len(rows)}.png"
        recon_figure(res["model"].mae, data, fig, name)
        rows.append({"run": name, "figure": str(fig), "loss_mse": res["loss_mse"], "patch_mean_mse": res["patch_mean_mse"],
                     "ratio": res["loss_mse"] / res["patch_mean_mse"], "steps": res["steps"], "cpu_s": res["cpu_s"]})
        _log(rows[-1])
    return [r for r in rows if r is not None]


def exp_difficulty(budget: float, n_train: int, n_val: int, only: list[int] | None) -> list[dict]:
    rows = []
    for i, (distractors, speed) in enumerate([(0, 1.0), (1, 0.5), (1, 1.0), (2, 1.0)]):
        if only is not None and i not in only:
            continue
        data = make_data(n_train, n_val, distractors=distractors, distractor_speed=speed)
        res = train_supervised(data, RunConfig(budget_s=budget, eval_every_s=budget / 4))
        rows.append({"distractors": distractors, "distractor_speed": speed, "val_top1": res["val_top1"],
                     "train_top1": res["train_top1"], "curve": res["curve"], "steps": res["steps"], "cpu_s": res["cpu_s"]})
        _log(rows[-1])
    return rows


FIGURES = Path("docs/figures")


def recon_figure(mae, data, path: Path, title: str) -> None:
    """Original / masked / MAE reconstruction / true patch means of one validation clip."""
    from tgmae.models import reconstruct_video
    from tgmae.models.target import patchify, unpatchify
    from tgmae.viz.reconstruction import reconstruction_rows, save_reconstruction_figure
    from tgmae.viz.plotting import to_uint8_frames
    from tgmae.evaluate.sanity import MEAN, STD, to_input, tube_masks

    arch = mae.arch
    video = to_input(data.val[3:4])
    mask = tube_masks(1, arch.grid, 0.75, torch.Generator().manual_seed(0))
    mae.eval()
    with torch.no_grad():
        out = mae(video, mask)
        recon = reconstruct_video(video, out.pred, mask, arch)
        p = patchify(video, arch.tubelet_size, arch.patch_size)  # [1, N, t*p*p*C], channel last
        c = arch.in_chans
        means = p.view(*p.shape[:2], -1, c).mean(dim=2, keepdim=True).expand(-1, -1, p.shape[2] // c, -1)
        means = torch.where(mask[..., None], means.reshape(p.shape), p)
        mean_video = unpatchify(means, arch.tubelet_size, arch.patch_size, arch.grid)
    rows = reconstruction_rows(video[0], recon[0], mask[0], arch.grid, arch.tubelet_size, arch.patch_size, MEAN, STD)
    rows["true patch means"] = to_uint8_frames(mean_video[0], MEAN, STD)
    FIGURES.mkdir(parents=True, exist_ok=True)
    save_reconstruction_figure(rows, path, title=f"{title} ({cpu_model()})")


EXPERIMENTS = {"contrastive": exp_contrastive, "mae": exp_mae, "difficulty": exp_difficulty}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--budget", type=float, default=60.0, help="CPU seconds of training per run (default 60)")
    p.add_argument("--train", type=int, default=800, help="training clips (default 800)")
    p.add_argument("--val", type=int, default=200, help="validation clips (default 200)")
    p.add_argument("--out", default="docs/sanity", help="folder for EXPERIMENT.json")
    p.add_argument("--only", default=None, help="comma-separated variant numbers to run (file EXPERIMENT-N,M.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    only = None if args.only is None else [int(x) for x in args.only.split(",")]
    rows = EXPERIMENTS[args.experiment](args.budget, args.train, args.val, only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"experiment": args.experiment, "budget_cpu_s": args.budget, "train": args.train, "val": args.val,
              "cpu": cpu_model(), "torch": torch.__version__, "command": " ".join(["python", "benchmarks/sanity.py"] + sys.argv[1:]),
              "wall_s": time.time() - t0, "rows": rows}
    name = args.experiment if only is None else f"{args.experiment}-{args.only}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
