"""VideoMAE's reconstruction target and pasting predictions back (pure functions).

Token layout (VideoMAE): `b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c`, P = t*p*p*C values
per token, raster order. The target is on pixels x_pix = x * pixel_std + pixel_mean; with
`norm_pix_loss` each patch is normalized per channel: (x_pix - mean) / (unbiased std + 1e-6),
computed as (x - mean(x)) / (std(x) + eps / std_c) so x_pix never materializes.
"""

from __future__ import annotations

import dataclasses
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
    return to_standard_layout(cf.unflatten(-1, (C, -1)))


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


def pretrain_target_channel_first(video: torch.Tensor, arch: VideoMAEArch,
                                  idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalized video [B, C, T, H, W] (+ token indices [B, n]) -> float32 target
    [B, n, C, t*p*p] (the standard target, channel-first), built in the gathered pixels' buffer."""
    C = arch.in_chans
    x = token_pixels(video.float(), arch.tubelet_size, arch.patch_size, idx).unflatten(-1, (C, -1))
    if idx is None and x.data_ptr() == video.data_ptr():  # never normalize the caller's video
        x = x.clone()
    m, s = _channel_stats(arch, x)  # x: [B, n, C, t*p*p], channel rows contiguous
    if not arch.norm_pix_loss:
        return x.mul_(s).add_(m)
    tpp = x.shape[-1]
    mean = x.mean(dim=-1, keepdim=True)
    x.sub_(mean)
    std = torch.linalg.vector_norm(x, dim=-1, keepdim=True).div_(math.sqrt(tpp - 1))
    return x.mul_(std.add_(NORM_EPS / s).reciprocal_())


def pretrain_target(video: torch.Tensor, arch: VideoMAEArch,
                    idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalized video [B, C, T, H, W] (+ token indices [B, n]) -> float32 target [B, n, P]
    (contiguous, standard layout)."""
    return to_standard_layout(pretrain_target_channel_first(video, arch, idx))


def to_standard_layout(x: torch.Tensor) -> torch.Tensor:
    """[B, n, C, t*p*p] -> [B, n, t*p*p*C] (copy)."""
    return x.transpose(-1, -2).flatten(-2)


def to_channel_first(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, n, t*p*p*C] -> [B, n, C, t*p*p] view (no copy)."""
    return x.unflatten(-1, (-1, channels)).transpose(-1, -2)


class _MaskedMSE(torch.autograd.Function):
    """mean((pred - target)^2) in the target's channel-first layout, in one float32 buffer that
    the backward scales in place (F.mse_loss needs three more clip-sized buffers)."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target_cf: torch.Tensor, channels: int) -> torch.Tensor:
        diff = torch.empty(target_cf.shape, dtype=torch.float32, device=pred.device)
        torch.sub(to_channel_first(pred, channels), target_cf, out=diff)
        flat = diff.view(-1)
        ctx.save_for_backward(diff)
        ctx.pred_dtype, ctx.channels = pred.dtype, channels
        return torch.dot(flat, flat) / flat.numel()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (diff,) = ctx.saved_tensors
        diff.mul_(grad * (2.0 / diff.numel()))
        grad_pred = to_standard_layout(diff).to(ctx.pred_dtype)
        return grad_pred, None, None


def masked_mse(pred: torch.Tensor, target_cf: torch.Tensor) -> torch.Tensor:
    """pred [B, n, P] (standard layout), target_cf [B, n, C, t*p*p] float32 -> scalar float32
    MSE, = F.mse_loss(pred.float(), pretrain_target(...)). Under torch.compile the plain
    expression is traced (inductor fuses it; the `out=` buffer may not view flat there)."""
    channels = target_cf.shape[-2]
    if pred.shape[:2] != target_cf.shape[:2] or pred.shape[-1] != target_cf.shape[-2] * target_cf.shape[-1]:
        raise ValueError(f"masked_mse: pred {tuple(pred.shape)} does not match target {tuple(target_cf.shape)}")
    if torch.compiler.is_compiling():
        return (to_channel_first(pred, channels).float() - target_cf).square().mean()
    return _MaskedMSE.apply(pred, target_cf, channels)


def pixel_target(video: torch.Tensor, arch: VideoMAEArch, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalized video [B, C, T, H, W] -> raw-pixel target float32 [B, n, C, t*p*p] ([0, 1]) of
    tokens idx [B, n] (all N without idx), whatever norm_pix_loss."""
    return pretrain_target_channel_first(video, dataclasses.replace(arch, norm_pix_loss=False), idx)


def predicted_pixels(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     arch: VideoMAEArch) -> torch.Tensor:
    """video [B, C, T, H, W] normalized, pred [B, N_masked, P], mask [B, N] bool (True = masked)
    -> the prediction in raw pixels ([0, 1]) float32 [B, N_masked, C, t*p*p]; with norm_pix_loss
    de-normalized with each patch's true mean and std (VideoMAE's visualization). ValueError when
    pred does not fit the mask."""
    _, mask_idx = mask_to_indices(mask, arch.num_tokens)
    if pred.shape[:2] != mask_idx.shape or pred.shape[-1] != arch.patch_dim:
        raise ValueError(
            f"pred must be [B, N_masked, P] = {list(mask_idx.shape) + [arch.patch_dim]}, "
            f"got {list(pred.shape)}"
        )
    p = to_channel_first(pred.float(), arch.in_chans)  # [B, n, C, t*p*p]
    if not arch.norm_pix_loss:
        return p
    x = pixel_target(video, arch, mask_idx)  # the true patches, in pixels
    std = x.std(dim=-1, unbiased=True, keepdim=True)
    return p * (std + NORM_EPS) + x.mean(dim=-1, keepdim=True)


def masked_pixel_mse(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, arch: VideoMAEArch) -> float:
    """Masked MSE in raw pixels ([0, 1]) of `predicted_pixels` (comparable with `patch_mean_mse`).
    Shapes as `predicted_pixels`."""
    want = pixel_target(video, arch, mask_to_indices(mask, arch.num_tokens).masked)
    return float((predicted_pixels(video, pred, mask, arch) - want).pow(2).mean())


def patch_mean_mse(video: torch.Tensor, mask: torch.Tensor, arch: VideoMAEArch) -> float:
    """The patch-mean oracle: MSE in raw pixels of predicting each masked token as its true mean
    colour. video [B, C, T, H, W] normalized, mask [B, N] bool (True = masked). docs/sanity.md (b)."""
    target = pixel_target(video, arch, mask_to_indices(mask, arch.num_tokens).masked)
    return float(target.var(dim=-1, unbiased=False).mean())


def reconstruct_video(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                      arch: VideoMAEArch) -> torch.Tensor:
    """Paste predictions into the masked positions of the input, for reconstruction figures.
    video [B, C, T, H, W] normalized, pred [B, N_masked, P] (increasing token order), mask [B, N]
    bool (True = masked) -> [B, C, T, H, W] float32 in the input's normalization."""
    x_pix = predicted_pixels(video, pred, mask, arch)  # [B, n, C, t*p*p]
    m, s = _channel_stats(arch, x_pix)
    _, mask_idx = mask_to_indices(mask, arch.num_tokens)
    patches = patchify(video.float(), arch.tubelet_size, arch.patch_size).clone()  # [B, N, P]
    pasted = to_standard_layout((x_pix - m) / s)
    patches.scatter_(1, mask_idx.unsqueeze(-1).expand(-1, -1, arch.patch_dim), pasted)
    return unpatchify(patches, arch.tubelet_size, arch.patch_size, arch.grid)
