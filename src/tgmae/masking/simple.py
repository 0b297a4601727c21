"""Content-free baselines: per-token random masking (MAE / ST-MAE) and tube masking (VideoMAE)."""

from __future__ import annotations

import torch

from tgmae.mask_contract import MaskContext, masked_per_clip, masked_per_slice, num_masked


class RandomMask:
    """Each token masked independently of time: exactly round(ratio * N) tokens per clip."""

    masked_count = staticmethod(masked_per_clip)  # tgmae.mask_contract.MASKED_COUNT["random"]

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, ctx: MaskContext, generator: torch.Generator) -> torch.Tensor:
        n = ctx.num_tokens
        order = torch.randperm(n, generator=generator)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[: num_masked(n, self.ratio)]] = True
        return mask

    def __repr__(self) -> str:
        return f"RandomMask(ratio={self.ratio})"


class TubeMask:
    """One random spatial mask shared by every temporal slice (VideoMAE's tube masking)."""

    masked_count = staticmethod(masked_per_slice)  # tgmae.mask_contract.MASKED_COUNT["tube"]

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, ctx: MaskContext, generator: torch.Generator) -> torch.Tensor:
        t, h, w = ctx.grid
        per_slice = h * w
        order = torch.randperm(per_slice, generator=generator)
        plane = torch.zeros(per_slice, dtype=torch.bool)
        plane[order[: num_masked(per_slice, self.ratio)]] = True
        return plane.repeat(t)

    def __repr__(self) -> str:
        return f"TubeMask(ratio={self.ratio})"
