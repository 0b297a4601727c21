"""Dual masking (VideoMAEv2): the decoder reconstructs only part of the encoder's masked tokens.

VideoMAE's decoder runs on every token (visible + one mask token per masked token); at mask
ratio 0.9 most of its cost is the masked tokens. VideoMAEv2 (Wang et al. 2023, section 3.2) lets
the decoder see the visible tokens and only a subset of the mask tokens, and computes the loss on
that subset. Here the subset is `ratio` of each clip's masked tokens (`masking.decoder_ratio`),
chosen by one of two patterns (`masking.decoder_mask`):

- `running_cell` (VideoMAEv2's default, OpenGVLab/VideoMAEv2 dataset/masking_generator.py
  `RunningCellMaskingGenerator`): the (h, w) token plane is tiled with 2x2 cells; in each cell
  k = round(4 * ratio) of the 4 positions are decoded, and the decoded positions shift by one
  cell position per temporal token, from a random start per clip. Their generator's map, for
  start s, time t and cell position c = 2 * (h % 2) + (w % 2): decoder-masked (not decoded) iff
  (c + s + t + 1) % 4 < 4 - k (their `Cell` queue of 4 - k ones then k zeros, pointer advanced
  once before each frame). Their map covers all N tokens and is not tied to the encoder mask;
  here it ranks the encoder's masked tokens - the decoded ones are the masked tokens the pattern
  decodes, a random subset of them when there are more than the count, topped up with random
  other masked tokens when fewer - so every clip of a batch decodes the same number of tokens
  (static shapes). The pattern is defined for any grid (odd sides crop the tiling).
- `random`: a uniformly random subset of the masked tokens.

Count: round(ratio * n_masked), at least 1. Draws come from the given generator (default: torch's
default generator on the mask's device, like dropout).
"""

from __future__ import annotations

from typing import Optional

import torch

from tgmae.config import DECODER_MASKS


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
    [B, n_dec] int64, increasing token order, each a masked token; n_dec = max(1, round(ratio *
    n_masked)). pattern: "running_cell" | "random" (module docstring). Always eager: the count is
    read from the data, as in `tgmae.models.tokens.mask_to_indices`."""
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


__all__ = ["DECODER_MASKS", "running_cell_decoded", "decoder_tokens", "indices_to_mask"]
