"""Largest pretraining batch that fits, per preset, and its step rate (issue 26).

For each preset, one training step (forward + backward + fused AdamW, random masks at RATIO, bf16
autocast) at growing batch sizes until the device runs out of memory; the largest batch that ran
is then timed over STEPS steps (after 2 warm-up steps): clips/s and peak memory
(torch.cuda.max_memory_allocated). The model is ours, as `benchmarks/pretrain_step.py` builds it.

    python benchmarks/max_batch.py --device cuda --presets base,large,huge --json OUT.json
    python benchmarks/max_batch.py --device cpu --quick                      # CPU rehearsal
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_step import FRAMES, SIZE, build_pretraining_model, make_step, random_mask, sync  # noqa: E402
from tgmae.config import ModelConfig  # noqa: E402


def try_batch(model, batch: int, ratio: float, device: torch.device, steps: int) -> dict | None:
    """Timed steps at `batch`, or None when it does not fit."""
    n = (FRAMES // model.arch.tubelet) * (SIZE // model.arch.patch) ** 2
    try:
        video = torch.randn(batch, 3, FRAMES, SIZE, SIZE, device=device)
        mask = random_mask(batch, n, ratio, seed=0).to(device)
        step, _ = make_step(model, False, video, mask, "bf16", device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        s = statistics.median(times)
        return {"batch": batch, "step_s": round(s, 4), "clips_per_s": round(batch / s, 2),
                "peak_gib": None if peak is None else round(peak, 2)}
    except torch.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--presets", default="base,large,huge")
    ap.add_argument("--ratio", type=float, default=0.9)
    ap.add_argument("--batches", default="32,64,96,128,192,256,384,512")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny preset, batches 1,2,4, 1 step")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.quick:
        a.presets, a.batches, a.steps = "tiny", "1,2,4", 1
    device = torch.device(a.device)
    rows = []
    for preset in a.presets.split(","):
        try:
            model = build_pretraining_model(ModelConfig(preset=preset), FRAMES, SIZE).to(device).train()
        except Exception as e:  # a preset this tgmae does not have
            print(f"{preset}: skipped ({e})", flush=True)
            continue
        best = None
        for b in (int(x) for x in a.batches.split(",")):
            r = try_batch(model, b, a.ratio, device, a.steps)
            if r is None:
                break
            best = r
            print(f"{preset} batch {b}: {r['clips_per_s']} clips/s, peak {r['peak_gib']} GiB", flush=True)
        rows.append({"preset": preset, "ratio": a.ratio, "precision": "bf16", "largest": best})
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        sync(device)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(device), "rows": rows,
                                            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                                            "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
