"""Per-slice score -> mask selection shared by the content-guided generators (TGM, MGM).

Selecting per temporal slice (not over the whole clip) gives every slice, hence every sample,
exactly the same masked count: the encoder gathers visible tokens into a dense tensor.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tgmae.mask_contract import MaskContext, masked_per_slice, num_masked

def select_per_slice(
    scores: torch.Tensor, ratio: float, select: str = "top",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """scores [T', M] (M = H' * W' tokens per slice) -> [T' * M] bool, True = masked.

    Masks the k = num_masked(M, ratio) highest ("top") or lowest ("bottom") scoring tokens of
    each slice. Ties (e.g. a slice with no signal) are broken by a random order drawn from
    `generator`, so they do not pile up in the top-left corner; without a generator, by index.
    NaN scores are treated as the least preferred.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [T', M], got {tuple(scores.shape)}")
    s = scores.detach().float().cpu().numpy()
    s = -s if select == "bottom" else s  # rank descending: k largest of s
    s = np.where(np.isnan(s), -np.inf, s)
    t, m = s.shape
    k = num_masked(m, ratio)
    if generator is not None:
        perm = torch.randperm(m, generator=generator).numpy()
        s = s[:, perm]
    # k largest per row; which of several equal scores wins is a fixed rule on the (randomly
    # permuted) positions, so ties resolve uniformly at random given the generator
    idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    if generator is not None:
        idx = perm[idx]
    mask = np.zeros((t, m), dtype=bool)
    mask[np.arange(t)[:, None], idx] = True
    return torch.from_numpy(mask.reshape(-1))


class ScoredMask:
    """Base of the per-sample content-guided generators (TGM, MGM): a subclass gives
    `scores(ctx)` -> [T', H', W'] and `ratio` (and `select`, "top" unless it sets it)."""

    masked_count = staticmethod(masked_per_slice)  # tgmae.mask_contract.MASKED_COUNT["tgm"] / ["mgm"]
    select = "top"

    def __call__(self, ctx: MaskContext, generator: Optional[torch.Generator]) -> torch.Tensor:
        """[N] bool, True = masked: the `select_per_slice` choice of each slice's scores."""
        t, h, w = ctx.grid
        return select_per_slice(self.scores(ctx).reshape(t, h * w), self.ratio, self.select, generator)


def select_batch_per_slice(
    scores: torch.Tensor, ratio: float, select: str = "top",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Batched `select_per_slice`: scores [B, T', M] (any device) -> [B, T' * M] bool on the same
    device. Ties are broken by one random token order per call (from `generator`, on any device)."""
    b, t, m = scores.shape
    s = scores.float() if select == "top" else -scores.float()
    s = torch.nan_to_num(s, nan=float("-inf"))
    k = num_masked(m, ratio)
    if generator is not None:
        perm = torch.randperm(m, generator=generator, device=generator.device).to(s.device)
        idx = perm[s[..., perm].topk(k, dim=-1).indices]
    else:
        idx = s.topk(k, dim=-1).indices
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(b, t * m)


def topk_iou(scores_a: torch.Tensor, scores_b: torch.Tensor, ratio: float, select: str = "top") -> float:
    """Mean over slices of the IoU of the masked sets chosen from two [T', M] score maps."""
    a = select_per_slice(scores_a, ratio, select).reshape(scores_a.shape)
    b = select_per_slice(scores_b, ratio, select).reshape(scores_b.shape)
    inter = (a & b).sum(dim=1).float()
    union = (a | b).sum(dim=1).float().clamp(min=1)
    return float((inter / union).mean())
