"""VideoMAE pretraining model: encoder on visible tokens, decoder predicts the masked ones.

Stages: `split`, `forward_encoder`, `forward_decoder`, `forward_loss`; `forward` returns a
`PretrainOutput`. Dual masking (VideoMAEv2, `tgmae.models.dual_mask`): in training the decoder may
reconstruct only a subset of the masked tokens; in eval mode it reconstructs all. Parameter
names match the official VideoMAE checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from tgmae.models.arch import VideoMAEArch
from tgmae.models.decoder import VideoMAEDecoder
from tgmae.models.dual_mask import decoder_tokens, indices_to_mask
from tgmae.models.encoder import VideoViTEncoder
from tgmae.models.pos_embed import sincos_position_table
from tgmae.models.target import masked_mse, pretrain_target_channel_first
from tgmae.models.tokens import TokenSplit, gather_rows, mask_to_indices


@dataclass
class PretrainOutput:
    """loss: scalar MSE on the decoded tokens; pred [B, N_dec, P] (decoded tokens in increasing
    token order); mask [B, N] bool (True = masked); latent [B, N_vis, D] encoder output;
    decoded [B, N] bool (True = reconstructed, `pred`'s tokens): `mask` itself unless dual
    masking chose a subset."""

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor
    latent: torch.Tensor
    decoded: torch.Tensor


class VideoMAEPretrainer(nn.Module):
    """video [B, C, T, H, W] (normalized), mask [B, N] bool (True = masked) -> PretrainOutput.

    Args:
        arch: the architecture.
        grad_checkpoint: activation checkpointing of the encoder and decoder blocks in training
            (`train.grad_checkpoint`): same loss and gradients, less memory, more compute.
        decoder_ratio: dual masking (`masking.decoder_ratio`): the fraction of the masked tokens
            the decoder reconstructs in training; None or 1.0 = all (VideoMAE).
        decoder_mask: which subset, "running_cell" | "random" (`masking.decoder_mask`).
    """

    def __init__(self, arch: VideoMAEArch, *, grad_checkpoint: bool = False,
                 decoder_ratio: Optional[float] = None, decoder_mask: str = "running_cell") -> None:
        super().__init__()
        self.arch = arch
        self.decoder_ratio = None if decoder_ratio == 1.0 else decoder_ratio
        self.decoder_mask = decoder_mask
        self.encoder = VideoViTEncoder(arch, grad_checkpoint)
        self.encoder_to_decoder = nn.Linear(arch.embed_dim, arch.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_position_table(arch.num_tokens, arch.decoder_dim),
                             persistent=False)  # [N, Dd]
        self.decoder = VideoMAEDecoder(arch, grad_checkpoint)
        nn.init.xavier_uniform_(self.encoder_to_decoder.weight)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def split(self, mask: torch.Tensor) -> TokenSplit:
        """[B, N] bool -> visible / masked token indices; rejects unequal visible counts."""
        return mask_to_indices(mask, self.arch.num_tokens)

    def decoder_split(self, mask: torch.Tensor, split: TokenSplit) -> TokenSplit:
        """The tokens the decoder reconstructs: `split` itself, or in training with dual masking
        a split whose `masked` holds the chosen subset [B, N_dec] (default torch generator)."""
        if self.decoder_ratio is None or not self.training:
            return split
        idx = decoder_tokens(mask, self.decoder_ratio, self.decoder_mask, self.arch.grid)
        return split._replace(masked=idx)

    def forward_encoder(self, video: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """video [B, C, T, H, W] -> latent [B, N_vis, D] (visible tokens only, final norm)."""
        return self.encoder.forward_features(self.encoder.embed(video, split.visible))

    def forward_decoder(self, latent: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """latent [B, N_vis, D] -> pred [B, n, P] of the tokens split.masked [B, n]."""
        x_vis = self.encoder_to_decoder(latent)  # [B, N_vis, Dd]
        dtype = x_vis.dtype
        pos = self.decoder_pos_embed.to(dtype)
        x_vis = x_vis + gather_rows(pos, split.visible)
        x_mask = self.mask_token.to(dtype) + gather_rows(pos, split.masked)  # [B, N_masked, Dd]
        return self.decoder(torch.cat([x_vis, x_mask], dim=1), split.masked.shape[1])

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, split: TokenSplit) -> torch.Tensor:
        """MSE between pred [B, n, P] and the VideoMAE target of the tokens split.masked (fp32)."""
        with torch.no_grad():
            target = pretrain_target_channel_first(video, self.arch, split.masked)  # [B, N_masked, C, t*p*p]
        return masked_mse(pred, target)

    def forward(self, video: torch.Tensor, mask: torch.Tensor) -> PretrainOutput:
        split = self.split(mask)
        latent = self.forward_encoder(video, split)
        dec = self.decoder_split(mask, split)
        pred = self.forward_decoder(latent, dec)
        loss = self.forward_loss(video, pred, dec)
        decoded = mask if dec is split else indices_to_mask(dec.masked, mask.shape[1])
        return PretrainOutput(loss=loss, pred=pred, mask=mask, latent=latent, decoded=decoded)

    def no_weight_decay(self) -> set[str]:
        """Names that must not decay: mask_token and every attention q/v bias."""
        return {"mask_token"} | {n for n, _ in self.named_parameters() if n.endswith((".q_bias", ".v_bias"))}
