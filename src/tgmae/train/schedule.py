"""Learning-rate schedule: linear warmup then cosine decay, as a pure function of the step."""

from __future__ import annotations

import math


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule used by MAE / VideoMAE: lr = base_lr x batch / 256."""
    return base_lr * global_batch / reference_batch


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float, warmup_lr: float
) -> float:
    """lr at optimizer step `step` (0-based).

    Warmup rises linearly from `warmup_lr` to `peak_lr` over `warmup_steps`; then a half cosine
    falls from `peak_lr` to `min_lr` at `total_steps`. Past the end it stays at `min_lr`.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps={total_steps}: must be > 0")
    if step < warmup_steps:
        return warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
