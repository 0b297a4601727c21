"""Video ViT encoder: tubelet embedding + sin-cos positions + blocks + final norm.

Runs on the visible tokens only when given a mask (the masked tokens are never embedded).
Reusable on its own (feature extraction, finetuning) with mask=None.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tgmae.models.arch import VideoMAEArch
from tgmae.models.block import Block, drop_path_rates, init_vit_weights, run_block
from tgmae.models.patch_embed import TubeletEmbed
from tgmae.models.pos_embed import sincos_position_table
from tgmae.models.tokens import gather_rows, mask_to_indices


class VideoViTEncoder(nn.Module):
    """video [B, C, T, H, W], mask [B, N] bool (True = masked) or None -> [B, N_vis or N, D].

    Parameter names follow VideoMAE's `encoder.*`: patch_embed.proj, blocks.N.*, norm.
    grad_checkpoint: activation checkpointing of every block in training (`run_block`).
    """

    def __init__(self, arch: VideoMAEArch, grad_checkpoint: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.grad_checkpoint = grad_checkpoint
        self.num_tokens = arch.num_tokens
        self.patch_embed = TubeletEmbed(arch.in_chans, arch.embed_dim, arch.tubelet_size, arch.patch_size)
        self.register_buffer("pos_embed", sincos_position_table(arch.num_tokens, arch.embed_dim),
                             persistent=False)  # [N, D]
        rates = drop_path_rates(arch.drop_path, arch.depth)
        self.blocks = nn.ModuleList(
            Block(arch.embed_dim, arch.num_heads, arch.mlp_ratio, rates[i], arch.layer_norm_eps)
            for i in range(arch.depth)
        )
        self.norm = nn.LayerNorm(arch.embed_dim, eps=arch.layer_norm_eps) if arch.encoder_norm else nn.Identity()
        self.blocks.apply(init_vit_weights)
        self.norm.apply(init_vit_weights)

    def embed(self, video: torch.Tensor, vis_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """video [B, C, T, H, W], vis_idx [B, n] or None -> [B, n or N, D] tokens + positions."""
        self._check_video(video)
        x = self.patch_embed(video, vis_idx)
        pos = self.pos_embed if vis_idx is None else gather_rows(self.pos_embed, vis_idx)
        return x + pos.to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, n, D] embedded tokens -> [B, n, D] after the blocks and the final norm."""
        for blk in self.blocks:
            x = run_block(blk, x, self.grad_checkpoint)
        return self.norm(x)

    def forward(self, video: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        vis_idx = None if mask is None else mask_to_indices(mask, self.num_tokens)[0]
        return self.forward_features(self.embed(video, vis_idx))

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay id of parameter `name`: 0 embedding, i + 1 block i, depth + 1 rest."""
        if name.startswith(("patch_embed.", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def no_weight_decay(self) -> set[str]:
        """Parameters that must not decay: attention q/v biases (1-D, listed explicitly)."""
        return {n for n, _ in self.named_parameters() if n.endswith((".q_bias", ".v_bias"))}

    def _check_video(self, video: torch.Tensor) -> None:
        a = self.arch
        want = (a.in_chans, a.num_frames, a.image_size, a.image_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"video must be [B, C, T, H, W] = [B, {', '.join(map(str, want))}], "
                f"got {tuple(video.shape)}"
            )
