"""Carry a per-frame map of the source video (similarity, motion) into the augmented token grid:
each token of the augmented clip (a crop of the source frame, resized and maybe flipped) reads
the map at its centre's source position (bilinear) in the map frame nearest in time.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from tgmae.mask_contract import CropParams

def full_frame_crop(height: int, width: int, flip: bool = False) -> CropParams:
    """The identity augmentation: the whole source frame, optionally flipped."""
    return CropParams(0.0, 0.0, float(height), float(width), flip, int(height), int(width))


def _token_centres(crop: CropParams, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source-pixel (y [H'], x [W']) of the augmented clip's token centres (flip applied)."""
    h, w = out_hw
    ys = crop.top + (np.arange(h, dtype=np.float64) + 0.5) * (crop.height / h)
    xs = crop.left + (np.arange(w, dtype=np.float64) + 0.5) * (crop.width / w)
    if crop.flip:  # output column j shows crop column w - 1 - j
        xs = xs[::-1]
    return ys, xs


def _extent(crop: CropParams, extent_hw: Optional[tuple[float, float]]) -> tuple[float, float]:
    if crop.source_height <= 0 or crop.source_width <= 0:
        raise ValueError(f"crop has no source size ({crop}); the data pipeline must fill it in")
    return extent_hw if extent_hw is not None else (float(crop.source_height), float(crop.source_width))


def _interp_matrix(pos: np.ndarray, size: int) -> np.ndarray:
    """Bilinear weights [len(pos), size] for cell coordinates `pos` (cell i's centre at i),
    clamped to the border (grid_sample's padding_mode="border", align_corners=False)."""
    pos = np.clip(pos, 0.0, size - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = pos - lo
    m = np.zeros((len(pos), size), np.float32)
    rows = np.arange(len(pos))
    m[rows, lo] = 1.0 - frac
    m[rows, hi] += frac  # hi == lo only at the clamped border, where frac == 0
    return m


def _nearest(map_frames: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    right = np.minimum(np.searchsorted(map_frames, wanted), len(map_frames) - 1)
    left = np.maximum(right - 1, 0)
    use_left = np.abs(wanted - map_frames[left]) <= np.abs(map_frames[right] - wanted)
    return np.where(use_left, left, right)


def sample_maps(
    maps: torch.Tensor | np.ndarray, crop: CropParams, out_hw: tuple[int, int],
    extent_hw: Optional[tuple[float, float]] = None,
) -> torch.Tensor:
    """maps [n, h, w] over the full source frame (tensor or array) -> [n, H', W'] float32 tensor
    at the token centres of `crop` (bilinear; border values outside the map).
    Separable: Wy [H', h] @ map @ Wx^T [w, W']."""
    ext_h, ext_w = _extent(crop, extent_hw)
    ys, xs = _token_centres(crop, out_hw)
    h, w = maps.shape[-2:]
    wy = _interp_matrix(ys * (h / ext_h) - 0.5, h)
    wx = _interp_matrix(xs * (w / ext_w) - 0.5, w)
    if isinstance(maps, np.ndarray):  # tiny matmuls in numpy: no intra-op threads to wake up
        return torch.from_numpy(np.ascontiguousarray(wy @ maps.astype(np.float32, copy=False) @ wx.T))
    if maps.device.type == "cpu":
        return sample_maps(maps.detach().float().numpy(), crop, out_hw, extent_hw)
    return torch.from_numpy(wy).to(maps.device) @ maps.float() @ torch.from_numpy(wx.T).to(maps.device)


def resample_to_tokens(
    maps: torch.Tensor | np.ndarray,
    map_frames: torch.Tensor,
    frame_indices: torch.Tensor,
    crop: CropParams,
    grid: tuple[int, int, int],
    tubelet_frame: str = "first",
) -> torch.Tensor:
    """Cached maps -> per-token scores of one augmented clip.

    maps [F, h, w] (one map per cached frame, over the full source frame), map_frames [F] their
    source frame numbers (sorted), frame_indices [T] the clip's source frames, grid (T', H', W')
    with T divisible by T'. A tubelet of T / T' frames is represented by its first frame's map
    or by the mean of its frames' maps. Returns [T', H', W'] float32.
    """
    t_tok, h_tok, w_tok = grid
    t = int(frame_indices.numel())
    if t % t_tok:
        raise ValueError(f"{t} clip frames do not split into {t_tok} temporal token slices")
    tubelet = t // t_tok
    wanted = frame_indices.reshape(-1)
    if tubelet_frame == "first":
        wanted = wanted[::tubelet]
    pos = _nearest(np.asarray(map_frames, np.int64), np.asarray(wanted, np.int64))
    if isinstance(maps, torch.Tensor) and maps.device.type == "cpu":
        maps = maps.detach().numpy()
    chosen = maps[pos] if isinstance(maps, np.ndarray) else maps[torch.from_numpy(pos).to(maps.device)]
    sampled = sample_maps(chosen, crop, (h_tok, w_tok))
    if tubelet_frame == "mean":
        sampled = sampled.reshape(t_tok, tubelet, h_tok, w_tok).mean(dim=1)
    return sampled
