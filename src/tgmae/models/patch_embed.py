"""Tubelet patch embedding: a Conv3d with kernel = stride = (t, p, p), run only where needed.

The parameter is stored as `proj` (nn.Conv3d, weight [D, C, t, p, p]) so checkpoints match
VideoMAE. Because kernel = stride, the convolution is one matrix product per token:
token (t', h', w') = W.flatten(1) @ video[:, t't:(t'+1)t, h'p:(h'+1)p, w'p:(w'+1)p].flatten() + b.
Given a list of visible tokens we select just those tokens' pixels and run the Linear; masked
tokens cost no FLOPs (HF and VideoMAE run the Conv3d on every token, then drop the masked).
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


__all__ = ["TubeletEmbed"]
