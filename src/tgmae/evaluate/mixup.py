"""Mixup / CutMix on a video batch with soft (label-smoothed) targets, as timm's `Mixup` in batch
mode, which VideoMAE finetuning uses: one lambda per batch, each clip mixed with the clip at the
mirrored batch position; with both enabled, each batch picks CutMix or Mixup with probability 1/2.
CutMix cuts the same box out of every frame of the clip; lambda is corrected to the box's
actual area after clipping to the frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """[B] int -> [B, K] float32: 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, K], targets [B, K] (rows sum to 1) -> mean over the batch of -sum t log p (fp32)."""
    return torch.sum(-targets * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def cutmix_box(height: int, width: int, lam: float, generator: Optional[torch.Generator] = None
               ) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a box of area ~(1 - lam) * H * W at a uniform centre, clipped to the frame."""
    ratio = (1.0 - lam) ** 0.5
    ch, cw = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


@dataclass
class MixResult:
    """video [B, C, T, H, W] mixed clips; targets [B, K] soft targets; lam and the mode used."""

    video: torch.Tensor
    targets: torch.Tensor
    lam: float
    mode: str  # "mixup" | "cutmix" | "none"


def mix_batch(video: torch.Tensor, labels: torch.Tensor, num_classes: int, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, smoothing: float = 0.0, switch_prob: float = 0.5,
              generator: Optional[torch.Generator] = None) -> MixResult:
    """Mix a batch: video [B, C, T, H, W], labels [B] -> MixResult (the input is not modified).

    Random draws use `generator` (or the default torch generator, like dropout, whose state the
    training checkpoints carry). With both alphas 0 the clips are returned unmixed.
    """
    targets = smooth_one_hot(labels, num_classes, smoothing)
    use_mix, use_cut = mixup_alpha > 0, cutmix_alpha > 0
    if not (use_mix or use_cut):
        return MixResult(video, targets, 1.0, "none")
    if use_mix and use_cut:
        mode = "cutmix" if float(torch.rand((), generator=generator)) < switch_prob else "mixup"
    else:
        mode = "cutmix" if use_cut else "mixup"
    alpha = cutmix_alpha if mode == "cutmix" else mixup_alpha
    lam = float(_beta(alpha, generator))
    flipped = video.flip(0)
    if mode == "mixup":
        mixed = video * lam + flipped * (1.0 - lam)
    else:
        h, w = video.shape[-2:]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, generator)
        mixed = video.clone()
        mixed[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    targets = targets * lam + targets.flip(0) * (1.0 - lam)
    return MixResult(mixed, targets, lam, mode)


def _beta(alpha: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One Beta(alpha, alpha) draw from a torch generator: X / (X + Y), X, Y ~ Gamma(alpha)."""
    a = torch.tensor([alpha, alpha], dtype=torch.float64)
    # torch._standard_gamma takes no generator; invert through uniform draws instead
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    x = _gamma_icdf(a, u)
    return x[0] / (x[0] + x[1]).clamp_min(1e-12)


def _gamma_icdf(shape: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gamma(shape, 1) quantiles at probabilities u (scipy-free: bisection on the regularized
    incomplete gamma, which torch provides as `torch.special.gammainc`)."""
    lo = torch.zeros_like(u)
    hi = torch.full_like(u, 1.0)
    while bool((torch.special.gammainc(shape, hi) < u).any()):
        hi = hi * 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        below = torch.special.gammainc(shape, mid) < u
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (lo + hi) / 2
