"""Learning sanity checks (issue 14): does each objective learn, at a stated CPU budget?

    PYTHONPATH=src python benchmarks/sanity.py VARIANT [VARIANT ...] [--budget S] [--out docs/sanity]
    PYTHONPATH=src python benchmarks/sanity.py --table          # docs/sanity/*.json -> markdown

Each variant trains from scratch on synthetic clips rendered to memory (10 classes, 8 frames at
48 px, 4x4 tokens per frame pair with 12 px patches unless the variant says otherwise; a
64-wide, 2-block ViT) for `--budget` CPU seconds (1 torch thread, time.process_time), then
reports held-out top-1 (supervised; or a linear probe of the frozen encoder for pretraining) and
the masked MSE next to the true-patch-mean baseline (MAE). Writes OUT/VARIANT.json and, for
MAE variants, sanity_VARIANT.png (original / masked / reconstruction / patch means) in docs/figures
for the default --out (the docs' JSONs), else in OUT.
Several variants in one call run one after the other; run separate calls to use more cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tgmae.autotune import cpu_info
from tgmae.models.arch import PRESETS
from tgmae.study.sanity import (SanityRun, class_text_table, linear_probe, mae_errors, make_data, pretrain,
                                   recon_figure, to_input, train_supervised, tube_masks)

MICRO = dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=1)
DEC64 = MICRO | dict(decoder_dim=64, decoder_depth=2, decoder_heads=4)
BASE = dict(patch_size=12, arch=MICRO, batch_size=16, shift=2, warmup_steps=20)
SIZE, FRAMES = 48, 8

# name -> (kind, SanityRun overrides, data overrides, text cosine)
VARIANTS: dict[str, tuple[str, dict, dict, float]] = {
    "supervised": ("supervised", {}, {}, 0.0),
    "supervised_1dis_slow": ("supervised", {}, dict(distractors=1, distractor_speed=0.5), 0.0),
    "supervised_1dis": ("supervised", {}, dict(distractors=1), 0.0),
    "supervised_2dis": ("supervised", {}, dict(distractors=2), 0.0),
    "contrastive_distinct": ("pretrain", dict(objective="contrastive"), {}, 0.0),
    "contrastive_distinct_r50": ("pretrain", dict(objective="contrastive", mask_ratio=0.5), {}, 0.0),
    "contrastive_distinct_r0": ("pretrain", dict(objective="contrastive", mask_ratio=0.0), {}, 0.0),
    "contrastive_collinear": ("pretrain", dict(objective="contrastive", text_projection=True, text_norm=False), {}, 0.999),
    "contrastive_collinear_textnorm": ("pretrain", dict(objective="contrastive", text_projection=True, text_norm=True), {}, 0.999),
    "joint_collinear": ("pretrain", dict(objective="mae+contrastive", text_projection=True, text_norm=False), {}, 0.999),
    "joint_collinear_textnorm": ("pretrain", dict(objective="mae+contrastive", text_projection=True, text_norm=True), {}, 0.999),
    "joint_distinct": ("pretrain", dict(objective="mae+contrastive"), {}, 0.0),
    "joint_distinct_w0.002": ("pretrain", dict(objective="mae+contrastive", nce_weight=0.002), {}, 0.0),
    # InfoNCE on a second, unmasked encoder pass (contrastive.view_ratio=0); MAE mask .75
    "joint_distinct_view0": ("pretrain", dict(objective="mae+contrastive", view_ratio=0.0), {}, 0.0),
    "joint_distinct_view0_w0.05": ("pretrain", dict(objective="mae+contrastive", view_ratio=0.0, nce_weight=0.05), {}, 0.0),
    "joint_distinct_view0_w0.01": ("pretrain", dict(objective="mae+contrastive", view_ratio=0.0, nce_weight=0.01), {}, 0.0),
    "joint_distinct_view0_w0.05_seed1": ("pretrain", dict(objective="mae+contrastive", view_ratio=0.0, nce_weight=0.05, seed=1), {}, 0.0),
    "mae_4x4_r75_seed1": ("pretrain", dict(objective="mae", seed=1), {}, 0.0),
    "joint_distinct_view0_w0.2": ("pretrain", dict(objective="mae+contrastive", view_ratio=0.0, nce_weight=0.2), {}, 0.0),
    "joint_distinct_view50_w0.05": ("pretrain", dict(objective="mae+contrastive", view_ratio=0.5, nce_weight=0.05), {}, 0.0),
    "joint_distinct_w0.05": ("pretrain", dict(objective="mae+contrastive", nce_weight=0.05), {}, 0.0),
    "mae_4x4_r75": ("pretrain", dict(objective="mae"), {}, 0.0),
    "mae_4x4_r50": ("pretrain", dict(objective="mae", mask_ratio=0.5), {}, 0.0),
    "mae_8x8_r75": ("pretrain", dict(objective="mae", patch_size=6), {}, 0.0),
    "mae_4x4_r75_lr3e-3": ("pretrain", dict(objective="mae", lr=3e-3), {}, 0.0),
    # flat background: all a masked token holds beyond one colour is the objects
    "mae_flat_4x4_r75": ("pretrain", dict(objective="mae"), dict(background="flat"), 0.0),
    "mae_flat_8x8_r75": ("pretrain", dict(objective="mae", patch_size=6), dict(background="flat"), 0.0),
    "mae_flat_4x4_r75_lr3e-3": ("pretrain", dict(objective="mae", lr=3e-3), dict(background="flat"), 0.0),
    "mae_flat_4x4_tube50": ("pretrain", dict(objective="mae", mask_ratio=0.5), dict(background="flat"), 0.0),
    "mae_flat_4x4_rand75": ("pretrain", dict(objective="mae", mask_kind="random"), dict(background="flat"), 0.0),
    "mae_flat_4x4_rand50": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5), dict(background="flat"), 0.0),
    "mae_flat_8x8_rand75": ("pretrain", dict(objective="mae", mask_kind="random", patch_size=6), dict(background="flat"), 0.0),
    # the objects that stay in place (grow, shrink, rotate cw / ccw): a masked token's content
    # shows at the same place in a neighbouring time slice, which random (not tube) masks leave visible
    "mae_flat_inplace_rand50": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5),
                                dict(background="flat", classes=[4, 5, 6, 7]), 0.0),
    "mae_flat_inplace_rand50_dec64": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5,
                                      arch=MICRO | dict(decoder_dim=64, decoder_depth=2, decoder_heads=4)),
                                      dict(background="flat", classes=[4, 5, 6, 7]), 0.0),
    "mae_flat_inplace_rand25": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.25),
                                dict(background="flat", classes=[4, 5, 6, 7]), 0.0),
    "mae_flat_inplace_rand75": ("pretrain", dict(objective="mae", mask_kind="random"),
                                dict(background="flat", classes=[4, 5, 6, 7]), 0.0),
    # (b), the recipe that learns more than patch means: a static camera (the background is the
    # same in every frame) under random masks, so a masked token is visible at the same place in
    # another time slice; a 64-wide, 2-block decoder (4 heads) and lr 3e-3
    "mae_static_r50": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5), dict(static_camera=True), 0.0),
    "mae_static_r50_dec64_lr3e-3": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5, lr=3e-3, arch=DEC64),
                                    dict(static_camera=True), 0.0),
    # the same with VideoMAE's per-patch normalized target; its held-out MSE is in pixels, each
    # prediction de-normalized with the true patch mean and std (`pixel_mse`)
    "mae_static_r50_dec64_lr3e-3_normpix": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5, lr=3e-3,
                                            arch=DEC64, norm_pix_loss=True), dict(static_camera=True), 0.0),
    "mae_static_r75_dec64_lr3e-3": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.75, lr=3e-3, arch=DEC64),
                                    dict(static_camera=True), 0.0),
    "mae_static_tube75_dec64_lr3e-3": ("pretrain", dict(objective="mae", mask_ratio=0.75, lr=3e-3, arch=DEC64),
                                       dict(static_camera=True), 0.0),
    # the study's geometry and model: 64 px, 16 px patches (4x4 tokens per slice), tiny preset, tube .75
    "mae_study_tube75": ("pretrain", dict(objective="mae", patch_size=16, arch=PRESETS["tiny"]), dict(size=64), 0.0),
    "mae_study_static_r50_lr3e-3": ("pretrain", dict(objective="mae", patch_size=16, arch=PRESETS["tiny"], mask_kind="random",
                                    mask_ratio=0.5, lr=3e-3), dict(size=64, static_camera=True), 0.0),
    # repeated sampling (issue 24, data.num_sample): each step's 16 clips k = 4 times, each view with
    # its own shift and mask (64 rows), so the same views in a quarter of the passes and steps;
    # lr as k = 1's, and x 4 as the training loop's linear scaling rule gives it
    "contrastive_distinct_r0_seed1": ("pretrain", dict(objective="contrastive", mask_ratio=0.0, seed=1), {}, 0.0),
    "contrastive_distinct_r0_k4": ("pretrain", dict(objective="contrastive", mask_ratio=0.0, num_sample=4), {}, 0.0),
    "contrastive_distinct_r0_k4_seed1": ("pretrain", dict(objective="contrastive", mask_ratio=0.0, num_sample=4, seed=1),
                                         {}, 0.0),
    "contrastive_distinct_r0_k4_lr4e-3": ("pretrain", dict(objective="contrastive", mask_ratio=0.0, num_sample=4,
                                          lr=4e-3), {}, 0.0),
    "mae_static_r50_dec64_lr3e-3_k4": ("pretrain", dict(objective="mae", mask_kind="random", mask_ratio=0.5, lr=3e-3,
                                       arch=DEC64, num_sample=4), dict(static_camera=True), 0.0),
    "mae_flat_4x4_r75_dec64": ("pretrain", dict(objective="mae", arch=MICRO | dict(decoder_dim=64, decoder_depth=2, decoder_heads=2)),
                               dict(background="flat"), 0.0),
}


DOCS_OUT, DOCS_FIGURES = Path("docs/sanity"), Path("docs/figures")


def figures_dir(out: Path) -> Path:
    """Where the figures go: docs/figures for the docs' JSONs (the default --out), else --out itself."""
    return DOCS_FIGURES if out.resolve() == DOCS_OUT.resolve() else out


def run_variant(name: str, budget: float, n_train: int, n_val: int, figures: Path = DOCS_FIGURES) -> dict:
    kind, over, data_kw, cosine = VARIANTS[name]
    data = make_data(n_train, n_val, **({"size": SIZE, "frames": FRAMES} | data_kw))
    cfg = SanityRun(**(BASE | {"budget_s": budget, "eval_every_s": budget / 4} | over))
    row: dict = {"variant": name, "kind": kind, "config": {k: v for k, v in over.items()}, "data": data_kw}
    if kind == "supervised":
        res = train_supervised(data, cfg)
        row.update(val_top1=res["val_top1"], train_top1=res["train_top1"], curve=res["curve"])
    else:
        table = class_text_table(data.num_classes, 96 if cfg.text_projection else cfg.proj_dim, cosine=cosine)
        res = pretrain(data, cfg, table)
        probe = linear_probe(res["model"].mae.encoder, data)
        row.update(probe_val_top1=probe["val_top1"], probe_train_top1=probe["train_top1"], text_cosine=cosine,
                   loss_nce=res.get("loss_nce"), loss_mse=res.get("loss_mse"), patch_mean_mse=res.get("patch_mean_mse"),
                   visible_mean_mse=res.get("visible_mean_mse"), copy_mse=res.get("copy_mse"), curve=res["curve"])
        if cfg.objective != "contrastive":
            held = mae_errors(res["model"].mae, data.val, cfg)  # held-out clips, masks as in training
            row.update({f"val_{k}": v for k, v in held.items()})
            fig = figures / f"sanity_{name}.png"
            recon_figure(res["model"].mae, data, fig, f"{name}: held-out masked MSE {held['mse']:.4f} vs patch means "
                         f"{held['patch_mean_mse']:.4f} (visible mean {held['visible_mean_mse']:.4f}, copy "
                         f"{held['copy_mse']:.4f})", cfg)
            row["figure"] = str(fig)
    row.update(steps=res["steps"], cpu_s=res["cpu_s"])
    return row


def gradient_scales(batches: int = 4) -> list[dict]:
    """Encoder gradient norm of each term of mae+contrastive at initialization, the study's model
    (tiny preset, 64 px, 16 px patches, 8 frames, tube .75, batch 16), per text kind."""
    from tgmae.models.pretrainer import VideoMAEPretrainer
    from tgmae.models.video_text import VideoTextPretrainer
    from tgmae.study.sanity import make_arch

    data = make_data(16 * batches, 1, size=64, frames=8)
    rows = []
    for cosine, proj, norm, view in ((0.0, False, False, None), (0.999, True, False, None), (0.999, True, True, None),
                                     (0.0, False, False, 0.0)):
        cfg = SanityRun(patch_size=16, proj_dim=64, text_projection=proj, text_norm=norm)
        torch.manual_seed(0)
        mae = VideoMAEPretrainer(make_arch(cfg, 8, 64))
        table = class_text_table(data.num_classes, 512 if proj else 64, cosine=cosine)
        model = VideoTextPretrainer(mae, table.shape[1], objective="mae+contrastive", proj_dim=64,
                                    text_projection=proj, text_norm=norm, view_ratio=view).train()
        enc = [q for q in mae.encoder.parameters()]
        g = torch.Generator().manual_seed(0)
        norms = {"mse": [], "nce": []}
        for b in range(batches):
            idx = torch.arange(16 * b, 16 * (b + 1))
            out = model(to_input(data.train[idx]), tube_masks(16, mae.arch.grid, 0.75, g), table[data.train_labels[idx]],
                        data.train_labels[idx])
            for key, loss in (("mse", out.loss_mse), ("nce", out.loss_nce)):
                grads = torch.autograd.grad(loss, enc, retain_graph=True, allow_unused=True)
                norms[key].append(float(torch.sqrt(sum((x ** 2).sum() for x in grads if x is not None))))
        rows.append({"text_cosine": cosine, "text_projection": proj, "text_norm": norm, "view_ratio": view,
                     "grad_mse": sum(norms["mse"]) / batches, "grad_nce": sum(norms["nce"]) / batches})
    return rows


def table(out: Path) -> str:
    """OUT/*.json (the variants' rows; other JSON files are skipped) -> a markdown table. Rows written
    before a column was recorded (held-out MSE, copy MSE, the `curve` key) leave it empty."""
    lines = ["| variant | CPU-s | steps | held-out top-1 | InfoNCE | masked MSE | patch-mean MSE | visible-mean MSE "
             "| copy MSE | held-out MSE / patch-mean |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(out.glob("*.json")):
        r = json.loads(p.read_text())
        if not isinstance(r, dict) or "variant" not in r:
            continue
        top1 = r.get("val_top1", r.get("probe_val_top1"))
        ratio = r["val_mse"] / r["val_patch_mean_mse"] if r.get("val_mse") is not None else None
        f = lambda v, d=4: "" if v is None else f"{v:.{d}f}"  # noqa: E731
        lines.append(f"| {r['variant']} | {r['budget_cpu_s']:g} | {r['steps']} | {top1:.2f} | {f(r.get('loss_nce'), 3)} | "
                     f"{f(r.get('loss_mse'))} | {f(r.get('patch_mean_mse'))} | {f(r.get('visible_mean_mse'))} | "
                     f"{f(r.get('copy_mse'))} | {f(ratio, 2)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--budget", type=float, default=50.0, help="CPU seconds of training per run (default 50)")
    p.add_argument("--train", type=int, default=400, help="training clips (default 400)")
    p.add_argument("--val", type=int, default=200, help="validation clips (default 200)")
    p.add_argument("--out", default=str(DOCS_OUT),
                   help="folder for VARIANT.json; figures go to docs/figures for the default, else to OUT too")
    p.add_argument("--table", action="store_true", help="print the markdown table of OUT/*.json")
    p.add_argument("--grads", action="store_true", help="encoder gradient norms of the MSE and InfoNCE terms")
    args = p.parse_args(argv)
    out = Path(args.out)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if args.table:
        print(table(out))
        return 0
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    if args.grads:
        rows = gradient_scales()
        grads = Path("docs/sanity_grads.json") if figures_dir(out) == DOCS_FIGURES else out / "sanity_grads.json"
        grads.write_text(json.dumps({"cpu": cpu_info()[0], "rows": rows}, indent=1) + "\n")
        for r in rows:
            print(r)
    for name in args.variants:
        t0 = time.time()
        row = run_variant(name, args.budget, args.train, args.val, figures_dir(out))
        row.update(budget_cpu_s=args.budget, train=args.train, val=args.val, cpu=cpu_info()[0], torch=torch.__version__,
                   command=" ".join(["python", "benchmarks/sanity.py"] + sys.argv[1:]), wall_s=time.time() - t0)
        (out / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
