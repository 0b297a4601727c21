"""Pure functions for VideoMAE's reconstruction target and for pasting predictions back.

Token layout of targets and predictions (VideoMAE): `b c (t p0) (h p1) (w p2) -> b (t h w)
(p0 p1 p2) c`, flattened to P = t*p*p*C values per token, tokens in (t, h, w) raster order.

The input video is normalized with the data mean/std. Like VideoMAE (which un-normalizes with
the ImageNet statistics), the target is defined on pixel values x_pix = x * arch.pixel_std +
arch.pixel_mean, so it equals the official one when those match the data pipeline. With
`norm_pix_loss` each patch is normalized per channel over its t*p*p pixels:
(x_pix - mean) / (sqrt(unbiased var) + 1e-6). Without it the target is x_pix.

Computation: per channel c, (x_pix - mean(x_pix)) / (std(x_pix) + eps) equals
(x - mean(x)) / (std(x) + eps / std_c), so the normalized target never materializes x_pix;
statistics are two-pass (mean, then the norm of the deviations) over contiguous channel rows,
about 10x faster on CPU than `var` over the (pixels, channel) layout.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from tgmae.models.arch import VideoMAEArch
from tgmae.models.tokens import mask_to_indices, token_pixels

NORM_EPS = 1e-6


def patchify(video: torch.Tensor, tubelet: int, patch: int,
             idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """video [B, C, T, H, W] -> [B, n, t*p*p*C]; all N tokens, or the tokens idx [B, n]."""
    C = video.shape[1]
    cf = token_pixels(video, tubelet, patch, idx)  # [B, n, C*t*p*p]
    return cf.unflatten(-1, (C, -1)).transpose(-1, -2).flatten(-2)


def unpatchify(patches: torch.Tensor, tubelet: int, patch: int,
               grid: tuple[int, int, int]) -> torch.Tensor:
    """[B, N, t*p*p*C] (all tokens, raster order) -> video [B, C, T'*t, H'*p, W'*p]."""
    B, N, p_dim = patches.shape
    gt, gh, gw = grid
    if N != gt * gh * gw:
        raise ValueError(f"unpatchify: {N} tokens do not fill the grid {grid}")
    C = p_dim // (tubelet * patch * patch)
    x = patches.reshape(B, gt, gh, gw, tubelet, patch, patch, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, T', t, H', p, W', p]
    return x.reshape(B, C, gt * tubelet, gh * patch, gw * patch)


def _channel_stats(arch: VideoMAEArch, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the input normalization as [C, 1] tensors."""
    m = torch.tensor(arch.pixel_mean, dtype=like.dtype, device=like.device).view(-1, 1)
    s = torch.tensor(arch.pixel_std, dtype=like.dtype, device=like.device).view(-1, 1)
    return m, s


def pretrain_target(video: torch.Tensor, arch: VideoMAEArch,
                    idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalized video [B, C, T, H, W] (+ token indices [B, n]) -> float32 target [B, n, P]
    (contiguous, standard layout)."""
    C = arch.in_chans
    x = token_pixels(video.float(), arch.tubelet_size, arch.patch_size, idx).unflatten(-1, (C, -1))
    m, s = _channel_stats(arch, x)  # x: [B, n, C, t*p*p], channel rows contiguous
    B, n, _, tpp = x.shape
    out = x.new_empty(B, n, tpp, C)  # standard layout, filled through a channel-first view
    if not arch.norm_pix_loss:
        torch.addcmul(m, x, s, out=out.transpose(-1, -2))
    else:
        d = x - x.mean(dim=-1, keepdim=True)
        std = torch.linalg.vector_norm(d, dim=-1, keepdim=True) / math.sqrt(tpp - 1)
        torch.mul(d, (std + NORM_EPS / s).reciprocal_(), out=out.transpose(-1, -2))
    return out.view(B, n, tpp * C)


def reconstruct_video(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                      arch: VideoMAEArch) -> torch.Tensor:
    """Paste predictions into the masked positions of the input, for reconstruction figures.

    video [B, C, T, H, W] (normalized input), pred [B, N_masked, P] (masked tokens in increasing
    token order, as `PretrainOutput.pred`), mask [B, N] bool (True = masked) -> [B, C, T, H, W]
    float32 in the input's normalization; visible pixels are the input's, unchanged. With
    `norm_pix_loss` each prediction is de-normalized with its patch's true mean and std.
    """
    _, mask_idx = mask_to_indices(mask, arch.num_tokens)
    if pred.shape[:2] != mask_idx.shape or pred.shape[-1] != arch.patch_dim:
        raise ValueError(
            f"pred must be [B, N_masked, P] = {list(mask_idx.shape) + [arch.patch_dim]}, "
            f"got {list(pred.shape)}"
        )
    C = arch.in_chans
    x = token_pixels(video.float(), arch.tubelet_size, arch.patch_size, mask_idx).unflatten(-1, (C, -1))
    m, s = _channel_stats(arch, x)
    p = pred.float().unflatten(-1, (-1, C)).transpose(-1, -2)  # [B, n, C, t*p*p]
    if arch.norm_pix_loss:  # prediction in pixel units: p * (std_pix + eps) + mean_pix
        std = x.std(dim=-1, unbiased=True, keepdim=True)
        x_pred = p * (std + NORM_EPS / s) + x.mean(dim=-1, keepdim=True)
    else:
        x_pred = (p - m) / s
    patches = patchify(video.float(), arch.tubelet_size, arch.patch_size).clone()  # [B, N, P]
    pasted = x_pred.transpose(-1, -2).flatten(-2)
    patches.scatter_(1, mask_idx.unsqueeze(-1).expand(-1, -1, arch.patch_dim), pasted)
    return unpatchify(patches, arch.tubelet_size, arch.patch_size, arch.grid)


__all__ = [
    "patchify", "unpatchify", "pretrain_target", "reconstruct_video", "NORM_EPS",
]
