"""VideoMAE decoder: blocks over [visible | mask tokens], then norm + head on the masked ones.

Parameter names follow VideoMAE's `decoder.*`: blocks.N.*, norm, head.
"""

from __future__ import annotations

import torch
from torch import nn

from tgmae.models.arch import VideoMAEArch
from tgmae.models.block import Block, drop_path_rates, init_vit_weights, run_block


class VideoMAEDecoder(nn.Module):
    """x [B, n, Dd] (visible tokens first, the decoded mask tokens last) -> [B, n_decoded, P]
    predictions. grad_checkpoint: activation checkpointing of every block in training."""

    def __init__(self, arch: VideoMAEArch, grad_checkpoint: bool = False) -> None:
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        rates = drop_path_rates(arch.drop_path, arch.decoder_depth)
        self.blocks = nn.ModuleList(
            Block(arch.decoder_dim, arch.decoder_heads, arch.mlp_ratio, rates[i], arch.layer_norm_eps)
            for i in range(arch.decoder_depth)
        )
        self.norm = nn.LayerNorm(arch.decoder_dim, eps=arch.head_norm_eps)
        self.head = nn.Linear(arch.decoder_dim, arch.patch_dim)
        self.apply(init_vit_weights)

    def forward(self, x: torch.Tensor, num_masked: int) -> torch.Tensor:
        # Only the masked tokens' outputs are read, so the last block computes just those
        # (same numbers as running it on all tokens and slicing, less work at low mask ratios).
        first_masked = x.shape[1] - num_masked
        for blk in self.blocks[:-1]:
            x = run_block(blk, x, self.grad_checkpoint)
        x = run_block(self.blocks[-1], x, self.grad_checkpoint, q_start=first_masked)  # [B, num_masked, Dd]
        return self.head(self.norm(x))
