"""VideoMAE decoder: blocks over [visible | mask tokens], then norm + head on the masked ones.

Parameter names follow VideoMAE's `decoder.*`: blocks.N.*, norm, head.
"""

from __future__ import annotations

import torch
from torch import nn

from tgmae.models.arch import VideoMAEArch
from tgmae.models.block import Block, drop_path_rates, init_vit_weights


class VideoMAEDecoder(nn.Module):
    """x [B, N, Dd] (visible tokens first, masked last) -> [B, n_masked, P] predictions."""

    def __init__(self, arch: VideoMAEArch) -> None:
        super().__init__()
        rates = drop_path_rates(arch.drop_path, arch.decoder_depth)
        self.blocks = nn.ModuleList(
            Block(arch.decoder_dim, arch.decoder_heads, arch.mlp_ratio, rates[i], arch.layer_norm_eps)
            for i in range(arch.decoder_depth)
        )
        self.norm = nn.LayerNorm(arch.decoder_dim, eps=arch.head_norm_eps)
        self.head = nn.Linear(arch.decoder_dim, arch.patch_dim)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor, num_masked: int) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, x.shape[1] - num_masked:]))


__all__ = ["VideoMAEDecoder"]
