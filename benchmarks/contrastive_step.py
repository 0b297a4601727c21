"""What the masked video-text contrastive branch adds to a pretraining step (issue 6 target: <= 10%).

Times one optimizer step (forward, backward, fused AdamW) of three variants on the same weights
and batch:
- `mae`: the plain VideoMAEPretrainer (the baseline);
- `mae_logged`: VideoTextPretrainer objective `mae` (InfoNCE computed under no_grad, logged);
- `mae+contrastive`: VideoTextPretrainer objective `mae+contrastive` (MSE + InfoNCE, both optimized).
Variants run alternately in rounds (order rotated each round) because the CPU is shared and
drifts; it reports per-variant medians, the ratio of medians, and the median of the per-round
ratios, for wall time and for the process's CPU time (with --threads 1 the CPU time is the
compute actually spent, far less sensitive to other jobs on a shared machine than wall time).
It also times the contrastive branch alone (pool + head + text projection + InfoNCE, forward
and backward on a fixed latent), a noise-robust estimate of the same overhead.

    .venv/bin/python benchmarks/contrastive_step.py --threads 1 --json docs/bench_contrastive_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tgmae.config import ContrastiveConfig, ModelConfig
from tgmae.masking import MaskContext, TubeMask
from tgmae.models import VideoTextPretrainer, build_pretraining_model


def make_batch(args, grid, g):
    video = torch.randn(args.batch, 3, args.frames, args.size, args.size, generator=g)
    gen = TubeMask(args.ratio)
    mask = torch.stack([gen(MaskContext(grid=grid), g) for _ in range(args.batch)])
    text = torch.nn.functional.normalize(torch.randn(args.batch, args.text_dim, generator=g), dim=-1)
    caption_id = torch.randint(0, max(2, args.batch // 2), (args.batch,), generator=g)  # some duplicates
    return video, mask, text, caption_id


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def step_fn(model, with_text: bool, batch, precision: str):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    video, mask, text, caption_id = batch

    def step() -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one optimizer step."""
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast(precision):
            out = model(video, mask, text, caption_id) if with_text else model(video, mask)
        out.loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    return step


def branch_time(model: VideoTextPretrainer, batch, n_vis: int, precision: str, repeats: int) -> float:
    """Seconds per forward + backward of the contrastive branch alone (median of repeats)."""
    video, _, text, caption_id = batch
    latent = torch.randn(video.shape[0], n_vis, model.arch.embed_dim, requires_grad=True)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        with autocast(precision):
            _, _, loss = model.forward_contrastive(latent, text, caption_id)
        loss.backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--ratio", type=float, default=0.9)
    p.add_argument("--text-dim", type=int, default=512, help="cached CLIP text embedding width")
    p.add_argument("--proj-dim", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (one step per variant each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    model_cfg = ModelConfig(preset=args.preset)
    base = build_pretraining_model(model_cfg, args.frames, args.size).train()
    grid = base.arch.grid

    def wrap(objective: str) -> VideoTextPretrainer:
        cfg = ContrastiveConfig(objective=objective, proj_dim=args.proj_dim, text_projection=True)
        return VideoTextPretrainer.from_config(copy.deepcopy(base), cfg, args.text_dim).train()

    batch = make_batch(args, grid, torch.Generator().manual_seed(args.seed))
    joint = wrap("mae+contrastive")
    variants = {
        "mae": step_fn(base, False, batch, args.precision),
        "mae_logged": step_fn(wrap("mae"), True, batch, args.precision),
        "mae+contrastive": step_fn(joint, True, batch, args.precision),
    }
    names = list(variants)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            dt, dc = variants[n]()
            if r >= args.warmup:
                wall[n].append(dt)
                cpu[n].append(dc)
        if r >= args.warmup:
            print(f"round {r - args.warmup + 1}/{args.rounds}: "
                  + ", ".join(f"{n} {wall[n][-1]:.2f}s wall {cpu[n][-1]:.2f}s cpu" for n in names),
                  flush=True)

    def summary(times: dict[str, list[float]]) -> dict:
        med = {n: statistics.median(v) for n, v in times.items()}
        return {
            "steps_s": times, "median_s": med,
            "ratio_of_medians": {n: med[n] / med["mae"] for n in names},
            "median_paired_ratio": {n: statistics.median(a / b for a, b in zip(times[n], times["mae"]))
                                    for n in names},
        }

    n_vis = int((~batch[1][0]).sum())
    branch = branch_time(joint, batch, n_vis, args.precision, repeats=20)
    result = {
        "preset": args.preset, "batch": args.batch, "frames": args.frames, "size": args.size,
        "mask_ratio": args.ratio, "visible_tokens": n_vis, "precision": args.precision,
        "text_dim": args.text_dim, "proj_dim": args.proj_dim, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "wall": summary(wall), "cpu": summary(cpu),
        "branch_fwd_bwd_wall_s": branch,
        "branch_over_mae_step_wall": branch / statistics.median(wall["mae"]),
    }
    print(json.dumps({k: ({m: v for m, v in result[k].items() if m != "steps_s"}
                          if isinstance(result[k], dict) else result[k])
                      for k in ("wall", "cpu", "branch_fwd_bwd_wall_s", "branch_over_mae_step_wall")},
                     indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
