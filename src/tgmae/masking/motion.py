"""Motion maps for motion-guided masking: codec motion vectors, or frame differences as fallback.

Codec motion (`MaskContext.motion`, float [T, Hb, Wb, 2]: displacement (dx, dy) in pixels of each
16x16 macroblock of the *source* frame, zeros on I-frames) is carried into the augmented token
grid through the clip's crop and flip; frame differences are taken on the augmented frames.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tgmae.mask_contract import CropParams
from tgmae.masking.resample import sample_maps

MACROBLOCK = 16  # codec motion vectors are per 16x16 block


def stack_codec_motion(mvs: Sequence[Optional[np.ndarray]]) -> Optional[torch.Tensor]:
    """Per-frame block motion from `tgmae.data.video` ([Hb, Wb, 2] or None on I-frames) ->
    float [T, Hb, Wb, 2] with zeros on I-frames, or None when no frame has vectors."""
    shape = next((m.shape for m in mvs if m is not None), None)
    if shape is None:
        return None
    zeros = np.zeros(shape, np.float32)
    return torch.from_numpy(np.stack([zeros if m is None else np.asarray(m, np.float32) for m in mvs]))


def has_codec_motion(motion: Optional[torch.Tensor]) -> bool:
    """False when the codec gave no vectors: no field at all, or every vector zero / NaN (frame
    folders, I-frame-only streams, codecs that export none)."""
    if motion is None or motion.numel() == 0:
        return False
    m = torch.nan_to_num(motion.float(), nan=0.0)
    return bool((m != 0).any())


def motion_magnitude(motion: torch.Tensor) -> torch.Tensor:
    """[T, Hb, Wb, 2] block motion -> [T, Hb, Wb] magnitude (pixels per frame), after subtracting
    each frame's median vector (camera or background motion: a pan must not outweigh the moving
    object). Frames without vectors (all zero or NaN: I-frames) take the nearest frame's."""
    m = motion.float()
    valid = torch.isfinite(m).all(dim=-1)  # [T, Hb, Wb]
    m = torch.nan_to_num(m, nan=0.0)
    has = ((m != 0).any(dim=-1) & valid).flatten(1).any(dim=1)  # [T] frames with vectors
    med = m.reshape(m.shape[0], -1, 2).median(dim=1).values  # [T, 2]
    m = m - med[:, None, None, :]
    mag = m.norm(dim=-1) * valid
    return fill_from_nearest(mag, has)


def fill_from_nearest(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """x [T, ...], present [T] bool -> x with absent rows replaced by the nearest present row
    (earlier wins ties); unchanged when no row is present."""
    if bool(present.all()) or not bool(present.any()):
        return x
    idx = torch.arange(x.shape[0])
    have = idx[present]
    nearest = have[(idx[:, None] - have[None, :]).abs().argmin(dim=1)]
    return x[nearest]


def block_extent(blocks_hw: tuple[int, int], source_hw: tuple[int, int]) -> tuple[float, float]:
    """Source pixels covered by a [Hb, Wb] block grid: whole macroblocks (ceil(H/16) blocks cover
    a little more than the frame); any other grid is taken to span the frame exactly."""
    h, w = (float(b * MACROBLOCK) if b == math.ceil(s / MACROBLOCK) else float(s) for b, s in zip(blocks_hw, source_hw))
    return h, w


def codec_token_motion(motion: torch.Tensor, crop: Optional[CropParams], out_hw: tuple[int, int]) -> torch.Tensor:
    """Source-frame block motion [T, Hb, Wb, 2] -> [T, H', W'] magnitude at the augmented clip's
    token centres (through crop and flip). Without a crop, the clip is the whole frame."""
    mag = motion_magnitude(motion)
    hb, wb = mag.shape[1:]
    if crop is None:
        crop = CropParams(0.0, 0.0, float(hb * MACROBLOCK), float(wb * MACROBLOCK), False,
                          hb * MACROBLOCK, wb * MACROBLOCK)
    extent = block_extent((hb, wb), (crop.source_height, crop.source_width))
    return sample_maps(mag, crop, out_hw, extent)


def frame_difference(frames: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Augmented clip [C, T, H, W] -> [T, H', W'] mean absolute temporal difference per token.
    Frame t uses |x_t - x_(t-1)|; frame 0 repeats frame 1's."""
    x = frames.float()
    if x.shape[1] < 2:
        return torch.zeros(x.shape[1], *out_hw)
    d = (x[:, 1:] - x[:, :-1]).abs().mean(dim=0)  # [T-1, H, W]
    d = torch.cat([d[:1], d], dim=0)
    return F.adaptive_avg_pool2d(d[:, None], out_hw)[:, 0]


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[N, H, W] -> [N, H, W] separable Gaussian blur (sigma in cells, zero padding)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    y = F.conv2d(x[:, None].float(), k.view(1, 1, 1, -1), padding=(0, r))
    y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(r, 0))
    return y[:, 0]
