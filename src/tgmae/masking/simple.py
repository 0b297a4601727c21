"""Content-free baselines: per-token random masking (MAE / ST-MAE) and tube masking (VideoMAE)."""

from __future__ import annotations

import torch

from tgmae.mask_contract import MaskContext, masked_per_clip, masked_per_slice, num_masked


def _random_subset(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """[n] bool with exactly num_masked(n, ratio) True at random positions."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[: num_masked(n, ratio)]] = True
    return mask


class RandomMask:
    """Each token masked independently of time: exactly round(ratio * N) tokens per clip."""

    masked_count = staticmethod(masked_per_clip)  # tgmae.mask_contract.MASKED_COUNT["random"]

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, ctx: MaskContext, generator: torch.Generator) -> torch.Tensor:
        return _random_subset(ctx.num_tokens, self.ratio, generator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio})"


class TubeMask:
    """One random spatial mask shared by every temporal slice (VideoMAE's tube masking)."""

    masked_count = staticmethod(masked_per_slice)  # tgmae.mask_contract.MASKED_COUNT["tube"]

    def __init__(self, ratio: float):
        self.ratio = ratio

    __repr__ = RandomMask.__repr__

    def __call__(self, ctx: MaskContext, generator: torch.Generator) -> torch.Tensor:
        t, h, w = ctx.grid
        return _random_subset(h * w, self.ratio, generator).repeat(t)
