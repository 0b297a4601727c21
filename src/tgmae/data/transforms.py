"""Clip augmentation on tensors: crop boxes, crop + resize on uint8, flip, normalize, kornia extras.

Clip transforms are callables `(frames uint8 [T, H, W, 3], generator) -> (video float32
[C, T, S, S] normalized, CropParams)`: one box per clip (source pixels, flip, source size), so
maps on the source frames can follow. Crop and resize run in uint8 (bilinear, antialiased like
PIL's resize in VideoMAE). Mixup / cutmix: `tgmae.evaluate.mixup`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tgmae.config import CROP_SCALES
from tgmae.mask_contract import CropParams

Box = tuple[int, int, int, int]  # top, left, height, width in source pixels


# --------------------------------------------------------------------------------------------
# Crop boxes
# --------------------------------------------------------------------------------------------


def _choice(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def multiscale_crop_box(
    height: int, width: int, size: int, scales: Sequence[float], generator: torch.Generator,
    *, max_distort: int = 1, more_fix_crop: bool = True,
) -> Box:
    """VideoMAE's GroupMultiScaleCrop box (fix_crop=True): side lengths from `scales` x the short
    side (snapped to `size` within 3 px), height and width scale indices at most `max_distort`
    apart, placed at one of 5 (13 with `more_fix_crop`) fixed positions on a 4x4 step grid."""
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    sizes = [size if abs(x - size) < 3 else x for x in sizes]
    pairs = [(sizes[i], sizes[j]) for i in range(len(sizes)) for j in range(len(sizes))
             if abs(i - j) <= max_distort]  # (crop_h, crop_w)
    ch, cw = pairs[_choice(len(pairs), generator)]
    ch, cw = min(ch, height), min(cw, width)
    hs, ws = (height - ch) // 4, (width - cw) // 4
    offsets = [(0, 0), (0, 4 * ws), (4 * hs, 0), (4 * hs, 4 * ws), (2 * hs, 2 * ws)]
    if more_fix_crop:
        offsets += [(2 * hs, 0), (2 * hs, 4 * ws), (4 * hs, 2 * ws), (0, 2 * ws),
                    (hs, ws), (hs, 3 * ws), (3 * hs, ws), (3 * hs, 3 * ws)]
    top, left = offsets[_choice(len(offsets), generator)]
    return top, left, ch, cw


def random_resized_crop_box(
    height: int, width: int, generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Inception-style random area/aspect box (10 tries, then the centre crop clamped to ratio)."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def spatial_view_boxes(height: int, width: int, num_views: int) -> list[Box]:
    """Square boxes of the short side, spread along the long side (multi-view test: resize the
    short side to the model size, then `num_views` crops; one view = the centre)."""
    side = min(height, width)
    free = max(height, width) - side
    boxes = []
    for k in range(num_views):
        off = free // 2 if num_views == 1 else int(round(k * free / (num_views - 1)))
        boxes.append((off, 0, side, side) if height > width else (0, off, side, side))
    return boxes


# --------------------------------------------------------------------------------------------
# Pixel work
# --------------------------------------------------------------------------------------------


def _as_tensor(frames) -> torch.Tensor:
    return torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames


def crop_resize(frames, box: Box, size: int | tuple[int, int], flip: bool = False) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, S, S] (channels-last memory): crop `box`, bilinear
    antialiased resize to `size`, then mirror horizontally when `flip`."""
    x = _as_tensor(frames)
    top, left, h, w = box
    x = x[:, top: top + h, left: left + w].permute(0, 3, 1, 2)  # [T, 3, h, w] channels-last view
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if (h, w) != out_hw:
        x = F.interpolate(x, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
    if flip:
        x = x.flip(-1)
    return x


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> float32 [3, T, H, W], (x / 255 - mean) / std per channel."""
    t, c, h, w = x.shape
    out = torch.empty((c, t, h, w), dtype=torch.float32)
    out.copy_(x.permute(1, 0, 2, 3))
    m = torch.tensor(mean, dtype=torch.float32).mul_(255).view(c, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).mul_(255).view(c, 1, 1, 1)
    return out.sub_(m).div_(s)


def _params(box: Box, flip: bool, height: int, width: int) -> CropParams:
    top, left, h, w = box
    return CropParams(float(top), float(left), float(h), float(w), bool(flip), int(height), int(width))


def _flip_draw(enabled: bool, generator: torch.Generator) -> bool:
    return bool(enabled) and bool(torch.rand(1, generator=generator) < 0.5)


# --------------------------------------------------------------------------------------------
# Clip transforms
# --------------------------------------------------------------------------------------------


class PretrainTransform:
    """VideoMAE pretraining: multi-scale crop -> resize to `size` -> random flip -> normalize."""

    def __init__(self, size: int, scales: Sequence[float], mean, std, flip: bool = True):
        self.size, self.scales, self.mean, self.std, self.flip = size, tuple(scales), mean, std, flip

    def __call__(self, frames, generator: torch.Generator) -> tuple[torch.Tensor, CropParams]:
        _, h, w, _ = frames.shape
        box = multiscale_crop_box(h, w, self.size, self.scales, generator)
        flip = _flip_draw(self.flip, generator)
        return normalize(crop_resize(frames, box, self.size, flip), self.mean, self.std), _params(box, flip, h, w)


class EvalTransform:
    """Evaluation: square crop of the short side (centre, or view k of `num_views` along the
    long side) -> resize to `size` -> normalize. Equals resize-short-side then crop."""

    def __init__(self, size: int, mean, std, num_views: int = 1):
        self.size, self.mean, self.std, self.num_views = size, mean, std, num_views

    def __call__(self, frames, generator: Optional[torch.Generator] = None, view: Optional[int] = None):
        _, h, w, _ = frames.shape
        boxes = spatial_view_boxes(h, w, self.num_views)
        box = boxes[(self.num_views // 2) if view is None else view]
        return normalize(crop_resize(frames, box, self.size), self.mean, self.std), _params(box, False, h, w)

    def views(self, frames) -> tuple[torch.Tensor, list[CropParams]]:
        """All spatial views: float [S, C, T, size, size] and their CropParams."""
        _, h, w, _ = frames.shape
        boxes = spatial_view_boxes(h, w, self.num_views)
        vids = [normalize(crop_resize(frames, b, self.size), self.mean, self.std) for b in boxes]
        return torch.stack(vids), [_params(b, False, h, w) for b in boxes]


class FinetuneTransform:
    """VideoMAE finetuning: random resized crop (scale .08-1, ratio 3/4-4/3) -> resize -> flip ->
    RandAugment (kornia, n ops at magnitude m, identical for every frame) -> normalize -> random
    erasing (kornia, probability `erase_prob`, one box through every frame).

    crop: "random_resized" (the above, `scale` / `ratio`) or "multiscale" (the pretraining
    multi-scale crop over `scales`, which never cuts the frame below min(scales) of its short
    side: on small scenes an 8% crop often leaves the acting object out, issue 14)."""

    def __init__(self, size: int, mean, std, flip: bool = True, rand_augment: Optional[tuple[int, int]] = (4, 7),
                 erase_prob: float = 0.25, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), crop: str = "random_resized",
                 scales: Sequence[float] = CROP_SCALES):
        self.size, self.mean, self.std, self.flip = size, mean, std, flip
        self.scale, self.ratio, self.erase_prob = scale, ratio, erase_prob
        self.crop, self.scales = crop, tuple(scales)
        self._ra = None
        if rand_augment is not None:
            from kornia.augmentation.auto import RandAugment

            self._ra = RandAugment(n=rand_augment[0], m=rand_augment[1])
        self._erase = None
        if erase_prob > 0:
            from kornia.augmentation import RandomErasing

            self._erase = RandomErasing(p=1.0, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value=0.0)

    def __call__(self, frames, generator: torch.Generator) -> tuple[torch.Tensor, CropParams]:
        _, h, w, _ = frames.shape
        if self.crop == "multiscale":
            box = multiscale_crop_box(h, w, self.size, self.scales, generator)
        else:
            box = random_resized_crop_box(h, w, generator, self.scale, self.ratio)
        flip = _flip_draw(self.flip, generator)
        x = crop_resize(frames, box, self.size, flip)  # uint8 [T, 3, S, S]
        seed = int(torch.randint(2**62, (1,), generator=generator))
        erase = self._erase is not None and bool(torch.rand(1, generator=generator) < self.erase_prob)
        if self._ra is not None:
            x = rand_augment_clip(self._ra, x.float().div_(255), seed)
            x = x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        video = normalize(x, self.mean, self.std)
        if erase:
            video = erase_clip(self._erase, video, seed + 1)
        return video, _params(box, flip, h, w)


def _expand_params(p, t: int):
    from kornia.augmentation.container.params import ParamItem

    if isinstance(p, ParamItem):
        return ParamItem(p.name, _expand_params(p.data, t))
    if isinstance(p, list):
        return [_expand_params(x, t) for x in p]
    if isinstance(p, dict):
        return {k: _expand_params(v, t) for k, v in p.items()}
    if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] == 1:
        return p.expand(t, *p.shape[1:]).clone()
    return p


def rand_augment_clip(ra, clip: torch.Tensor, seed: int) -> torch.Tensor:
    """kornia RandAugment on float [T, 3, H, W] in [0, 1] with one draw for the whole clip:
    parameters drawn for one frame (RNG forked and seeded, global state untouched) and
    repeated for every frame."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = ra.forward_parameters(torch.Size([1, *clip.shape[1:]]))
    return ra(clip.contiguous(), params=_expand_params(params, clip.shape[0]))


def erase_clip(erase, video: torch.Tensor, seed: int) -> torch.Tensor:
    """kornia RandomErasing with one box through all frames: float [C, T, H, W] -> same."""
    c, t, h, w = video.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = erase(video.reshape(1, c * t, h, w))
    return out.reshape(c, t, h, w)
