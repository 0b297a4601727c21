"""Mask -> token indices, and gathering tokens by index (static shapes, no boolean indexing).

Mask convention everywhere: [B, N] bool, True = masked, tokens in (t, h, w) raster order.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from tgmae.mask_contract import check_mask


class TokenSplit(NamedTuple):
    """Token indices of a batch mask: visible [B, N_vis] and masked [B, N - N_vis], int64."""

    visible: torch.Tensor
    masked: torch.Tensor


@torch.compiler.disable
def mask_to_indices(mask: torch.Tensor, num_tokens: int) -> TokenSplit:
    """[B, N] bool mask (True = masked) -> TokenSplit(visible [B, N_vis], masked [B, N_masked]),
    both in increasing token order. ValueError (`check_mask`) for unequal visible counts. Eager
    under torch.compile: N_vis is a data-dependent shape."""
    n_vis = check_mask(mask, num_tokens)
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # visible first, then masked
    return TokenSplit(order[:, :n_vis], order[:, n_vis:])


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Shared table [N, D], idx [B, n] -> [B, n, D] (e.g. position embeddings per sample)."""
    return table[idx]


def token_pixels(video: torch.Tensor, tubelet: int, patch: int,
                 idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """video [B, C, T, H, W] -> [B, n, C*t*p*p], each token's pixels in Conv3d weight order
    (c, t, p, p); all N tokens when idx is None, else the tokens idx [B, n] (whole rows of one
    token-major copy: faster than indexing the strided view)."""
    B, C, T, H, W = video.shape
    gt, gh, gw = T // tubelet, H // patch, W // patch
    x = video.reshape(B, C, gt, tubelet, gh, patch, gw, patch).permute(0, 2, 4, 6, 1, 3, 5, 7)
    n_all, k = gt * gh * gw, C * tubelet * patch * patch
    rows = x.reshape(B * n_all, k)  # [B*N, K] copy
    if idx is None:
        return rows.view(B, n_all, k)
    flat = (idx + torch.arange(B, device=idx.device).unsqueeze(1) * n_all).reshape(-1)
    return rows.index_select(0, flat).view(B, idx.shape[1], k)
