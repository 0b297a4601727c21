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
    [B, n, C, t*p*p]: the standard target with each token's (pixels, channel) axes swapped.

    Built in place in the one buffer that gathers the tokens' pixels: the loss compares it with
    the prediction seen through the same swap, so no layout change and no extra copy is made.
    """
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
    """mean((pred - target)^2) with the prediction compared in the target's channel-first layout.

    One float32 buffer holds pred - target; the loss is its dot product with itself and the
    backward pass scales that buffer in place. F.mse_loss on the standard layout needs the
    target transposed, an elementwise loss buffer and a separate gradient buffer: three more
    clip-sized tensors, whose fresh pages dominate the loss's cost on CPU.
    """

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
    """pred [B, n, P] (any float dtype, standard layout), target_cf [B, n, C, t*p*p] float32 from
    `pretrain_target_channel_first` -> scalar float32 MSE, equal to
    F.mse_loss(pred.float(), pretrain_target(...)).

    Under torch.compile the plain expression is traced instead of the hand-written autograd
    function (its `out=` buffer and flat view are eager-memory tricks that inductor's fusion
    makes unnecessary, and the traced `out=` buffer can take strides that cannot be viewed flat).
    """
    channels = target_cf.shape[-2]
    if pred.shape[:2] != target_cf.shape[:2] or pred.shape[-1] != target_cf.shape[-2] * target_cf.shape[-1]:
        raise ValueError(f"masked_mse: pred {tuple(pred.shape)} does not match target {tuple(target_cf.shape)}")
    if torch.compiler.is_compiling():
        return (to_channel_first(pred, channels).float() - target_cf).square().mean()
    return _MaskedMSE.apply(pred, target_cf, channels)


def pixel_target(video: torch.Tensor, arch: VideoMAEArch, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The raw-pixel target (units of the data before normalization: [0, 1] for the usual mean /
    std) float32 [B, n, C, t*p*p] of tokens idx [B, n] (all N without idx), also for a
    norm_pix_loss model. video [B, C, T, H, W] normalized."""
    return pretrain_target_channel_first(video, dataclasses.replace(arch, norm_pix_loss=False), idx)


def predicted_pixels(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     arch: VideoMAEArch) -> torch.Tensor:
    """A model's prediction of its masked tokens in raw-pixel units ([0, 1]), float32
    [B, N_masked, C, t*p*p]. video [B, C, T, H, W] (normalized input), pred [B, N_masked, P]
    (`PretrainOutput.pred`), mask [B, N] bool (True = masked). With `norm_pix_loss` each
    prediction is de-normalized with its patch's true mean and std (VideoMAE's visualization),
    so only its within-patch pattern is the model's. ValueError when pred does not fit the mask."""
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
    """Masked MSE of a prediction in raw-pixel units ([0, 1]): the model's loss without
    norm_pix_loss; with it, the error of `predicted_pixels` (comparable with `patch_mean_mse`,
    which also knows each patch's true mean). Shapes as `predicted_pixels`."""
    want = pixel_target(video, arch, mask_to_indices(mask, arch.num_tokens).masked)
    return float((predicted_pixels(video, pred, mask, arch) - want).pow(2).mean())


def patch_mean_mse(video: torch.Tensor, mask: torch.Tensor, arch: VideoMAEArch) -> float:
    """The patch-mean oracle: MSE of predicting every masked token's pixels as its own true
    per-channel mean colour, in raw-pixel units ([0, 1]) - the mean within-token pixel variance.
    A reconstruction at about this error holds no more than each patch's colour. video
    [B, C, T, H, W] normalized, mask [B, N] bool (True = masked). Source: docs/sanity.md (b)."""
    target = pixel_target(video, arch, mask_to_indices(mask, arch.num_tokens).masked)
    return float(target.var(dim=-1, unbiased=False).mean())


def reconstruct_video(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                      arch: VideoMAEArch) -> torch.Tensor:
    """Paste predictions into the masked positions of the input, for reconstruction figures.

    video [B, C, T, H, W] (normalized input), pred [B, N_masked, P] (masked tokens in increasing
    token order, as `PretrainOutput.pred`), mask [B, N] bool (True = masked) -> [B, C, T, H, W]
    float32 in the input's normalization; visible pixels are the input's, unchanged. With
    `norm_pix_loss` each prediction is de-normalized with its patch's true mean and std.
    """
    x_pix = predicted_pixels(video, pred, mask, arch)  # [B, n, C, t*p*p]
    m, s = _channel_stats(arch, x_pix)
    _, mask_idx = mask_to_indices(mask, arch.num_tokens)
    patches = patchify(video.float(), arch.tubelet_size, arch.patch_size).clone()  # [B, N, P]
    pasted = to_standard_layout((x_pix - m) / s)
    patches.scatter_(1, mask_idx.unsqueeze(-1).expand(-1, -1, arch.patch_dim), pasted)
    return unpatchify(patches, arch.tubelet_size, arch.patch_size, arch.grid)


__all__ = [
    "patchify", "unpatchify", "pretrain_target", "pretrain_target_channel_first", "masked_mse",
    "reconstruct_video", "NORM_EPS", "pixel_target", "predicted_pixels", "masked_pixel_mse", "patch_mean_mse",
]
