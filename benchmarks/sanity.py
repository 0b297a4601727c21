"""Learning sanity checks (issue 14): does each objective learn, in a stated number of steps?

    PYTHONPATH=src python benchmarks/sanity.py VARIANT [VARIANT ...] [--steps N] [--out docs/sanity]
    PYTHONPATH=src python benchmarks/sanity.py --table          # docs/sanity/*.json -> markdown

Each variant trains from scratch on synthetic clips rendered to memory (10 classes, 8 frames at
48 px, 4x4 tokens per frame pair with 12 px patches unless the variant says otherwise; the micro
preset) for `--steps` optimizer steps with the library's loop (`tgmae.study.sanity`; 1 torch
thread, the CPU seconds are recorded), then reports held-out top-1 (supervised; or a linear probe of the frozen encoder for pretraining) and
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
from tgmae.study.sanity import (ORACLE_CAPTIONS, class_text_table, linear_probe, mae_errors, make_data, pretrain,
                                recon_figure, sanity_config, train_supervised)

DEC64 = ["model.decoder_dim=64", "model.decoder_depth=2", "model.decoder_heads=4"]
SIZE, FRAMES = 48, 8
RAND = ["masking.name=random"]
INPLACE = dict(background="flat", classes=[4, 5, 6, 7])  # the objects that stay in place (grow, shrink, rotate)
NCE, JOINT = ["contrastive.objective=contrastive"], ["contrastive.objective=mae+contrastive"]
COLLINEAR = ["contrastive.text_projection=true"]
VIEW0 = ["contrastive.view_ratio=0"]  # InfoNCE on a second, unmasked encoder pass; MAE mask .75

# name -> (kind, overrides of `tgmae.study.sanity.HARNESS`, data overrides, text cosine)
VARIANTS: dict[str, tuple[str, list[str], dict, float]] = {
    "supervised": ("supervised", [], {}, 0.0),
    "supervised_1dis_slow": ("supervised", [], dict(distractors=1, distractor_speed=0.5), 0.0),
    "supervised_1dis": ("supervised", [], dict(distractors=1), 0.0),
    "supervised_2dis": ("supervised", [], dict(distractors=2), 0.0),
    "contrastive_distinct": ("pretrain", NCE, {}, 0.0),
    "contrastive_distinct_r50": ("pretrain", NCE + ["masking.ratio=0.5"], {}, 0.0),
    "contrastive_distinct_r0": ("pretrain", NCE + VIEW0, {}, 0.0),  # InfoNCE pools the whole clip
    "contrastive_collinear": ("pretrain", NCE + COLLINEAR, {}, 0.999),
    "joint_collinear": ("pretrain", JOINT + COLLINEAR, {}, 0.999),
    "joint_distinct": ("pretrain", JOINT, {}, 0.0),
    "joint_distinct_w0.002": ("pretrain", JOINT + ["contrastive.weight=0.002"], {}, 0.0),
    "joint_distinct_view0": ("pretrain", JOINT + VIEW0, {}, 0.0),
    "joint_distinct_view0_w0.05": ("pretrain", JOINT + VIEW0 + ["contrastive.weight=0.05"], {}, 0.0),
    "joint_distinct_view0_w0.01": ("pretrain", JOINT + VIEW0 + ["contrastive.weight=0.01"], {}, 0.0),
    "joint_distinct_view0_w0.05_seed1": ("pretrain", JOINT + VIEW0 + ["contrastive.weight=0.05", "train.seed=1"], {}, 0.0),
    "joint_distinct_view0_w0.2": ("pretrain", JOINT + VIEW0 + ["contrastive.weight=0.2"], {}, 0.0),
    "joint_distinct_view50_w0.05": ("pretrain", JOINT + ["contrastive.view_ratio=0.5", "contrastive.weight=0.05"], {}, 0.0),
    "joint_distinct_w0.05": ("pretrain", JOINT + ["contrastive.weight=0.05"], {}, 0.0),
    "mae_4x4_r75": ("pretrain", [], {}, 0.0),
    "mae_4x4_r75_seed1": ("pretrain", ["train.seed=1"], {}, 0.0),
    "mae_4x4_r50": ("pretrain", ["masking.ratio=0.5"], {}, 0.0),
    "mae_8x8_r75": ("pretrain", ["model.patch_size=6"], {}, 0.0),
    "mae_4x4_r75_lr3e-3": ("pretrain", ["optim.lr=3e-3"], {}, 0.0),
    # flat background: all a masked token holds beyond one colour is the objects
    "mae_flat_4x4_r75": ("pretrain", [], dict(background="flat"), 0.0),
    "mae_flat_8x8_r75": ("pretrain", ["model.patch_size=6"], dict(background="flat"), 0.0),
    "mae_flat_4x4_r75_lr3e-3": ("pretrain", ["optim.lr=3e-3"], dict(background="flat"), 0.0),
    "mae_flat_4x4_tube50": ("pretrain", ["masking.ratio=0.5"], dict(background="flat"), 0.0),
    "mae_flat_4x4_rand75": ("pretrain", RAND, dict(background="flat"), 0.0),
    "mae_flat_4x4_rand50": ("pretrain", RAND + ["masking.ratio=0.5"], dict(background="flat"), 0.0),
    "mae_flat_8x8_rand75": ("pretrain", RAND + ["model.patch_size=6"], dict(background="flat"), 0.0),
    "mae_flat_4x4_r75_dec64": ("pretrain", ["model.decoder_dim=64", "model.decoder_depth=2", "model.decoder_heads=2"],
                               dict(background="flat"), 0.0),
    # in-place actions: a masked token's content shows at the same place in a neighbouring time
    # slice, which random (not tube) masks leave visible
    "mae_flat_inplace_rand50": ("pretrain", RAND + ["masking.ratio=0.5"], INPLACE, 0.0),
    "mae_flat_inplace_rand50_dec64": ("pretrain", RAND + ["masking.ratio=0.5"] + DEC64, INPLACE, 0.0),
    "mae_flat_inplace_rand25": ("pretrain", RAND + ["masking.ratio=0.25"], INPLACE, 0.0),
    "mae_flat_inplace_rand75": ("pretrain", RAND, INPLACE, 0.0),
    # (b), the recipe that learns more than patch means: a static camera (the background is the
    # same in every frame) under random masks, so a masked token is visible at the same place in
    # another time slice; a 64-wide, 2-block decoder (4 heads) and lr 3e-3
    "mae_static_r50": ("pretrain", RAND + ["masking.ratio=0.5"], dict(static_camera=True), 0.0),
    "mae_static_r50_dec64_lr3e-3": ("pretrain", RAND + ["masking.ratio=0.5", "optim.lr=3e-3"] + DEC64,
                                    dict(static_camera=True), 0.0),
    # the same with VideoMAE's per-patch normalized target; its held-out MSE is in pixels, each
    # prediction de-normalized with the true patch mean and std (`pixel_mse`)
    "mae_static_r50_dec64_lr3e-3_normpix": ("pretrain", RAND + ["masking.ratio=0.5", "optim.lr=3e-3",
                                            "model.norm_pix_loss=true"] + DEC64, dict(static_camera=True), 0.0),
    "mae_static_r75_dec64_lr3e-3": ("pretrain", RAND + ["optim.lr=3e-3"] + DEC64, dict(static_camera=True), 0.0),
    "mae_static_tube75_dec64_lr3e-3": ("pretrain", ["optim.lr=3e-3"] + DEC64, dict(static_camera=True), 0.0),
    # the study's geometry and model: 64 px, 16 px patches (4x4 tokens per slice), tiny preset, tube .75
    "mae_study_tube75": ("pretrain", ["model.preset=tiny", "model.patch_size=16"], dict(size=64), 0.0),
    "mae_study_static_r50_lr3e-3": ("pretrain", ["model.preset=tiny", "model.patch_size=16", "optim.lr=3e-3"] + RAND
                                    + ["masking.ratio=0.5"], dict(size=64, static_camera=True), 0.0),
}


DOCS_OUT, DOCS_FIGURES = Path("docs/sanity"), Path("docs/figures")


def figures_dir(out: Path) -> Path:
    """Where the figures go: docs/figures for the docs' JSONs (the default --out), else --out itself."""
    return DOCS_FIGURES if out.resolve() == DOCS_OUT.resolve() else out


def run_variant(name: str, steps: int, n_train: int, n_val: int, figures: Path = DOCS_FIGURES) -> dict:
    kind, over, data_kw, cosine = VARIANTS[name]
    data_kw = {"size": SIZE, "frames": FRAMES} | data_kw
    data = make_data(n_train, n_val, **data_kw)
    if any(o.startswith("contrastive.objective=") and not o.endswith("=mae") for o in over):
        over = over + [f"captions.file={ORACLE_CAPTIONS}"]
    cfg = sanity_config(over, num_train=n_train, frames=data_kw["frames"], size=data_kw["size"], steps=steps,
                        evals=4)
    row: dict = {"variant": name, "kind": kind, "config": over, "data": data_kw}
    if kind == "supervised":
        res = train_supervised(data, cfg)
        row.update(val_top1=res["val_top1"], train_top1=res["train_top1"], curve=res["curve"])
    else:
        c = cfg.contrastive
        table = class_text_table(data.num_classes, 96 if c.text_projection else c.proj_dim, cosine=cosine)
        res = pretrain(data, cfg, table, baselines=c.objective != "contrastive")
        probe = linear_probe(res["mae"].encoder, data)
        row.update(probe_val_top1=probe["val_top1"], probe_train_top1=probe["train_top1"], text_cosine=cosine,
                   curve=res["curve"], **{k: res.get(k) for k in ("loss_nce", "loss_mse", "patch_mean_mse",
                                                                  "visible_mean_mse", "copy_mse")})
        if c.objective != "contrastive":
            held = mae_errors(res["mae"], data.val, cfg)  # held-out clips, masks as in training
            row.update({f"val_{k}": v for k, v in held.items()})
            fig = figures / f"sanity_{name}.png"
            recon_figure(res["mae"], data, fig, f"{name}: held-out masked MSE {held['mse']:.4f} vs patch means "
                         f"{held['patch_mean_mse']:.4f} (visible mean {held['visible_mean_mse']:.4f}, copy "
                         f"{held['copy_mse']:.4f})", cfg)
            row["figure"] = str(fig)
    row.update(steps=res["steps"], cpu_s=res["cpu_s"])
    return row


def gradient_scales(batches: int = 4) -> list[dict]:
    """Encoder gradient norm of each term of mae+contrastive at initialization, the study's model
    (tiny preset, 64 px, 16 px patches, 8 frames, tube .75, batch 16), per text kind."""
    from tgmae.study.sanity import ClipSet, SanityPretrainTask

    data = make_data(16 * batches, 1, size=64, frames=8)
    rows = []
    for cosine, proj, view in ((0.0, False, None), (0.999, True, None), (0.0, False, 0.0)):
        over = ["model.preset=tiny", "model.patch_size=16", "contrastive.objective=mae+contrastive",
                f"captions.file={ORACLE_CAPTIONS}", f"contrastive.text_projection={str(proj).lower()}"]
        cfg = sanity_config(over + ([] if view is None else [f"contrastive.view_ratio={view}"]),
                            num_train=16 * batches, frames=8, size=64, steps=1)
        table = class_text_table(data.num_classes, 512 if proj else 64, cosine=cosine)
        clips = ClipSet(data.train, data.train_labels, masking=cfg)
        task = SanityPretrainTask(cfg, clips, table)
        torch.manual_seed(0)
        model = task.build_model().train()
        enc = list(model.mae.encoder.parameters())
        norms = {"mse": [], "nce": []}
        for b in range(batches):
            batch = torch.utils.data.default_collate([clips[i] for i in range(16 * b, 16 * (b + 1))])
            out = model(batch["video"], batch["mask"], table[batch["label"]], batch["label"])
            for key, loss in (("mse", out.loss_mse), ("nce", out.loss_nce)):
                grads = torch.autograd.grad(loss, enc, retain_graph=True, allow_unused=True)
                norms[key].append(float(torch.sqrt(sum((x ** 2).sum() for x in grads if x is not None))))
        rows.append({"text_cosine": cosine, "text_projection": proj, "view_ratio": view,
                     "grad_mse": sum(norms["mse"]) / batches, "grad_nce": sum(norms["nce"]) / batches})
    return rows


def table(out: Path) -> str:
    """OUT/*.json (the variants' rows; other JSON files are skipped) -> a markdown table. Rows written
    before a column was recorded (held-out MSE, copy MSE, the `curve` key) leave it empty; rows of the
    harness before issue 23 (its own loop, a CPU-second budget `budget_cpu_s`) are marked "old"."""
    lines = ["| variant | loop | steps | CPU-s | held-out top-1 | InfoNCE | masked MSE | patch-mean MSE | visible-mean MSE "
             "| copy MSE | held-out MSE / patch-mean |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(out.glob("*.json")):
        r = json.loads(p.read_text())
        if not isinstance(r, dict) or "variant" not in r:
            continue
        top1 = r.get("val_top1", r.get("probe_val_top1"))
        ratio = r["val_mse"] / r["val_patch_mean_mse"] if r.get("val_mse") is not None else None
        f = lambda v, d=4: "" if v is None else f"{v:.{d}f}"  # noqa: E731
        loop, cpu = ("old", r["budget_cpu_s"]) if "budget_cpu_s" in r else ("library", r["cpu_s"])
        lines.append(f"| {r['variant']} | {loop} | {r['steps']} | {cpu:.0f} | {top1:.2f} | {f(r.get('loss_nce'), 3)} | "
                     f"{f(r.get('loss_mse'))} | {f(r.get('patch_mean_mse'))} | {f(r.get('visible_mean_mse'))} | "
                     f"{f(r.get('copy_mse'))} | {f(ratio, 2)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per run (default 1000)")
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
        row = run_variant(name, args.steps, args.train, args.val, figures_dir(out))
        row.update(train=args.train, val=args.val, cpu=cpu_info()[0], torch=torch.__version__,
                   command=" ".join(["python", "benchmarks/sanity.py"] + sys.argv[1:]), wall_s=time.time() - t0)
        (out / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
