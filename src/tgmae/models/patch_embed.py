"""Tubelet patch embedding: a Conv3d with kernel = stride = (t, p, p), run only where needed.

Stored as `proj` (nn.Conv3d, weight [D, C, t, p, p]) as in VideoMAE; since kernel = stride it
runs as one Linear over the selected tokens' pixels, so masked tokens cost nothing.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tgmae.models.tokens import token_pixels


class TubeletEmbed(nn.Module):
    """[B, C, T, H, W] (+ token indices [B, n]) -> [B, n or N, D] token embeddings.

    Args:
        in_chans: C.
        embed_dim: D.
        tubelet: frames per token t.
        patch: spatial patch side p.
    """

    def __init__(self, in_chans: int, embed_dim: int, tubelet: int, patch: int) -> None:
        super().__init__()
        self.tubelet, self.patch = tubelet, patch
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet, patch, patch),
                              stride=(tubelet, patch, patch))

    def forward(self, video: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        pixels = token_pixels(video, self.tubelet, self.patch, idx)  # [B, n, C*t*p*p]
        return F.linear(pixels, self.proj.weight.flatten(1), self.proj.bias)
