"""Dual masking (VideoMAEv2): the decoder reconstructs only part of the encoder's masked tokens.

VideoMAEv2 (Wang et al. 2023, section 3.2): the decoder sees the visible tokens and a subset of
the mask tokens, round(ratio * n_masked) (at least 1) per clip, and the loss covers that subset.
Patterns (`masking.decoder_mask`): `random`, or `running_cell` (OpenGVLab/VideoMAEv2
dataset/masking_generator.py `RunningCellMaskingGenerator`): 2x2 cells over the (h, w) plane, k =
round(4 * ratio) positions per cell decoded, shifting by one per temporal token from a random
start; here it ranks the encoder's masked tokens (random ones fill or trim to the count, so
shapes stay static).
"""

from __future__ import annotations

from typing import Optional

import torch


def running_cell_decoded(grid: tuple[int, int, int], ratio: float, start: torch.Tensor) -> torch.Tensor:
    """The running-cell pattern: [B, N] bool, True = the pattern decodes the token (VideoMAEv2's
    decoder-visible tokens), tokens in (t, h, w) raster order. grid (T', H', W'); start [B] int64
    in [0, 4) (VideoMAEv2 draws one of its 4 precomputed maps)."""
    gt, gh, gw = grid
    k = min(3, max(1, round(4 * ratio)))  # decoded positions per 2x2 cell (VideoMAEv2: 0 < k < 4)
    t = torch.arange(gt, device=start.device).view(gt, 1, 1)
    h = torch.arange(gh, device=start.device).view(1, gh, 1)
    w = torch.arange(gw, device=start.device).view(1, 1, gw)
    cell = (2 * (h % 2) + (w % 2) + t + 1).flatten()  # [N]
    return (cell.unsqueeze(0) + start.view(-1, 1)) % 4 >= 4 - k


@torch.compiler.disable
def decoder_tokens(mask: torch.Tensor, ratio: float, pattern: str, grid: tuple[int, int, int],
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Encoder mask [B, N] bool (True = masked, equal counts per clip) -> decoded token indices
    [B, n_dec] int64, increasing, each a masked token. Draws from `generator` (default torch's)."""
    n_masked = int(mask[0].sum())
    n_dec = max(1, int(round(ratio * n_masked)))
    score = torch.rand(mask.shape, device=mask.device, generator=generator)  # [B, N] in [0, 1)
    if pattern == "running_cell":
        start = torch.randint(0, 4, (mask.shape[0],), device=mask.device, generator=generator)
        score += (~running_cell_decoded(grid, ratio, start)).to(score.dtype)  # pattern's tokens first
    score.masked_fill_(~mask, 3.0)  # visible tokens last: never decoded
    return score.topk(n_dec, dim=1, largest=False).indices.sort(dim=1).values


def indices_to_mask(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Token indices [B, n] -> [B, num_tokens] bool, True at the indices."""
    out = torch.zeros(idx.shape[0], num_tokens, dtype=torch.bool, device=idx.device)
    return out.scatter_(1, idx, True)
