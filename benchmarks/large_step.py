"""One pretraining step of a large preset alone (no HF twin): CPU time and peak memory.

For models where `pretrain_step.py`'s three copies (ours, HF, the options twin, each with AdamW
state) do not fit in memory: ViT-L with and without activation checkpointing, ViT-g at batch 1.
One model per process, so run it once per configuration and compare. Measured:
- step time: median over --steps steps after a warm-up step (`--clock cpu`: this process's CPU
  time, with --threads 1 nearly independent of other jobs on a shared CPU);
- `peak_step_mib`: the step's peak RSS above the resident model + gradients + optimizer state
  (VmHWM reset through /proc/self/clear_refs; glibc's mmap threshold pinned at 64 KiB from the
  start so freed tensors leave RSS, as in pretrain_step.py's memory pass);
- `resident_mib` before that step and `max_rss_mib`, the process's peak RSS over the whole run.
`--optimizer sgd` (plain SGD, no state) leaves out AdamW's two fp32 moments (8 bytes per
parameter) where they would not fit.

usage: python benchmarks/large_step.py --preset large [--ratio 0.9] [--batch 1] [--precision fp32|bf16]
       [--grad-checkpoint] [--optimizer adamw|sgd] [--steps 2] [--threads 1] [--clock cpu|wall] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import CLOCKS, FRAMES, SIZE, _status_kib, machine_line, peak_step_memory, pin_malloc, random_mask  # noqa: E402

from tgmae.config import ModelConfig  # noqa: E402
from tgmae.models import build_pretraining_model  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--grad-checkpoint", action="store_true")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    pinned = pin_malloc()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(machine_line(device), flush=True)
    torch.manual_seed(0)
    model = build_pretraining_model(ModelConfig(preset=args.preset), FRAMES, SIZE,
                                    grad_checkpoint=args.grad_checkpoint).train()
    params = sum(p.numel() for p in model.parameters())
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True) if args.optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=1e-4))
    video = torch.randn(args.batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mask = random_mask(args.batch, model.arch.num_tokens, args.ratio, seed=2)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(video, mask).loss
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated: part of the resident state

    clock = CLOCKS[args.clock]
    step()  # warm-up: allocates gradients and optimizer state
    times = []
    for _ in range(args.steps):
        t0 = clock()
        step()
        times.append(clock() - t0)
    resident = _status_kib("VmRSS") / 1024
    peak = peak_step_memory(step, device)
    row = dict(preset=args.preset, ratio=args.ratio, batch=args.batch, precision=args.precision,
               grad_checkpoint=args.grad_checkpoint, optimizer=args.optimizer, params=params,
               step_s=statistics.median(times), times=times, clock=args.clock, threads=args.threads,
               peak_step_mib=peak, resident_mib=resident, max_rss_mib=_status_kib("VmHWM") / 1024,
               malloc_pinned=pinned)
    print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
