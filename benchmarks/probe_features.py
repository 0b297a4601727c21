"""Linear-probe feature extraction throughput vs a plain forward pass of the same encoder.

extraction: `tgmae.evaluate.features.extract_features` over an in-memory dataset of clips
(DataLoader with collation, per-batch device transfer, autocast, mean pooling, fp32 copy to the
CPU, the in-memory gather and reordering): everything our probe does per clip except decoding.
plain: `encoder(x)` in a loop over the same clips, pre-stacked into batches, same precision,
under `torch.no_grad()`.
Both run in one process on the same weights, alternating round by round (order swapped every
round); we report median clips/s by wall clock and by process CPU time (steadier on a shared
machine) and the ratios extraction / plain (target >= 0.9).

usage: python benchmarks/probe_features.py [--preset small] [--frames 16] [--size 224]
       [--clips 8] [--batch 4] [--rounds 3] [--precisions bf16,fp32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from tgmae.config import ModelConfig
from tgmae.evaluate.features import extract_features
from tgmae.models import build_pretraining_model
from tgmae.train.precision import autocast


class Clips(Dataset):
    """Pre-made normalized clips [M, C, T, H, W] as dataset samples."""

    def __init__(self, video: torch.Tensor) -> None:
        self.video = video

    def __len__(self) -> int:
        return self.video.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"video": self.video[i], "label": 0, "index": i, "load_failures": 0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_pass(encoder, batches, precision: str, device: torch.device) -> tuple[float, float]:
    """(wall s, process CPU s) of encoder(x) over the batches."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for x in batches:
            with autocast(precision, device):
                encoder(x.to(device))
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def extraction_pass(encoder, dataset, batch: int, precision: str, device: torch.device) -> tuple[float, float]:
    """(wall s, process CPU s) of extract_features over the dataset."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = extract_features(encoder, dataset, batch_size=batch, precision=precision, num_workers=0, device=device)
    sync(device)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    assert out["features"].shape[0] == len(dataset)
    return elapsed


def bench(args, precision: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    encoder = build_pretraining_model(ModelConfig(preset=args.preset), args.frames, args.size).encoder
    encoder = encoder.to(device).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(args.clips, 3, args.frames, args.size, args.size, generator=g)
    dataset = Clips(video)
    batches = list(video.split(args.batch))
    plain_pass(encoder, batches[:1], precision, device)  # warm-up: first-call kernels
    extraction_pass(encoder, Clips(video[: args.batch]), args.batch, precision, device)
    times: dict[str, list[tuple[float, float]]] = {"plain": [], "extraction": []}
    for r in range(args.rounds):
        order = ("plain", "extraction") if r % 2 == 0 else ("extraction", "plain")
        for name in order:
            if name == "plain":
                times[name].append(plain_pass(encoder, batches, precision, device))
            else:
                times[name].append(extraction_pass(encoder, dataset, args.batch, precision, device))
    row = {"preset": args.preset, "frames": args.frames, "size": args.size, "precision": precision,
           "batch": args.batch, "clips": args.clips, "rounds": args.rounds}
    for name, ts in times.items():
        row[f"{name}_wall_s"] = [round(t[0], 4) for t in ts]
        row[f"{name}_cpu_s"] = [round(t[1], 4) for t in ts]
        row[f"{name}_clips_per_s"] = args.clips / statistics.median(t[0] for t in ts)
        row[f"{name}_clips_per_cpu_s"] = args.clips / statistics.median(t[1] for t in ts)
    row["ratio"] = row["extraction_clips_per_s"] / row["plain_clips_per_s"]
    row["ratio_cpu"] = row["extraction_clips_per_cpu_s"] / row["plain_clips_per_cpu_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--clips", type=int, default=8, help="clips per timed pass")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precisions", default="bf16,fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for precision in args.precisions.split(","):
        row = bench(args, precision, device)
        rows.append(row)
        print(f"{args.preset} {args.frames}x{args.size} {precision:>4} batch {args.batch}: plain "
              f"{row['plain_clips_per_s']:.3f} clips/s, extraction {row['extraction_clips_per_s']:.3f} clips/s, "
              f"ratio {row['ratio']:.3f} (wall), {row['ratio_cpu']:.3f} (CPU time)", flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                "threads": torch.get_num_threads(), "machine": platform.machine()}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
