"""Training pairs for the small CLIP of `tgmae train-clip`, cut from the synthetic set.

Each sampled frame yields the whole frame, the object's box (random margin) and a patch-sized
window on the object (positives of the video's captions: TGM's faithful mode embeds 16x16 patches
as images), and a patch-sized window off the object (a negative in the caption -> image softmax).
Positives are grouped by object name (colour + shape), so repeated objects are no false negatives.
`sample_clips` cuts short clips (frames stacked on channels) for the motion tower, grouped by
object and action: a single frame cannot show the verb.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from tgmae.clip.data import read_split_ids

# Patch-sized windows, in source pixels: a 16 px model patch of a 224 px view of a 128 px frame
# is ~9 px; multi-scale crops (down to 0.66) make it ~6 px, larger frames / zooms up to ~14 px.
PATCH_MIN, PATCH_MAX = 6.0, 14.0


@dataclass
class SyntheticClipSet:
    """Frames [V, F, H, W, 3] uint8 (evenly spaced, in time order), object masks [V, F, H, W]
    bool, per video: captions, the acting object's name (the positive-group key), its action
    and the video id."""

    frames: torch.Tensor
    masks: torch.Tensor
    captions: list[list[str]]
    names: list[str]
    video_ids: list[str]
    actions: list[str]

    def __len__(self) -> int:
        return len(self.video_ids)


def load_synthetic_clip_set(
    root: str | Path, split: str = "train", frames_per_video: int = 12, max_videos: Optional[int] = None,
) -> SyntheticClipSet:
    """Decode `frames_per_video` evenly spaced frames (and masks) of each video of a split."""
    from tgmae.captions.store import read_store
    from tgmae.data.video import probe_video, read_frames

    root = Path(root)
    meta = json.loads((root / "meta.json").read_text())
    captions = read_store(root / "captions.jsonl").by_video()
    ids = read_split_ids(root, split)[: max_videos or None]
    if not ids:
        raise ValueError(f"{root / (split + '.csv')} lists no videos")
    frames, masks, caps, names, actions = [], [], [], [], []
    for vid in ids:
        path = root / "videos" / f"{vid}.mp4"
        n = probe_video(path).num_frames
        idx = np.linspace(0, n - 1, frames_per_video).round().astype(np.int64)
        frames.append(torch.from_numpy(read_frames(path, idx)))
        with np.load(root / "masks" / f"{vid}.npz") as z:
            masks.append(torch.from_numpy(z["masks"][idx]))
        caps.append(list(captions[vid].captions))
        actor = next(o for o in meta["videos"][vid]["objects"] if o["role"] == "acting")
        names.append(f"{actor['colour']} {actor['shape']}")
        actions.append(meta["videos"][vid]["action"])
    return SyntheticClipSet(torch.stack(frames), torch.stack(masks), caps, names, ids, actions)


@dataclass
class PairBatch:
    """images [N, 3, S, S] in [0, 1]; key [N] int64 index into `texts`, -1 = negative-only.
    The first `whole_cover.shape[0]` images are whole frames; whole_cover [B, g, g] is the object
    pixel fraction of each of their CLIP patches (g = S / CLIP patch), for the dense loss."""

    images: torch.Tensor
    key: torch.Tensor
    texts: list[str]
    whole_cover: torch.Tensor


def _windows(frames: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: torch.Tensor, out: int) -> torch.Tensor:
    """Square windows (centre, side in pixels) of frames [N, C, H, W] -> [N, C, out, out], bilinear."""
    n, _, h, w = frames.shape
    u = (torch.arange(out, dtype=torch.float32) + 0.5) / out - 0.5  # [-0.5, 0.5)
    ys = cy[:, None] + u[None] * size[:, None]
    xs = cx[:, None] + u[None] * size[:, None]
    gy = (2 * ys / h - 1)[:, :, None].expand(n, out, out)
    gx = (2 * xs / w - 1)[:, None, :].expand(n, out, out)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _coverage(integral: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Mask fraction inside windows: integral [B, H+1, W+1] (summed-area table), cy/cx/size
    [B, K] -> [B, K], over the pixel rows/columns the window touches."""
    b, hp, wp = integral.shape
    y0 = (cy - size / 2).floor().clamp(0, hp - 2).long()
    y1 = (cy + size / 2).ceil().clamp(1, hp - 1).long().maximum(y0 + 1)
    x0 = (cx - size / 2).floor().clamp(0, wp - 2).long()
    x1 = (cx + size / 2).ceil().clamp(1, wp - 1).long().maximum(x0 + 1)
    bi = torch.arange(b)[:, None]
    total = integral[bi, y1, x1] - integral[bi, y0, x1] - integral[bi, y1, x0] + integral[bi, y0, x0]
    return total / ((y1 - y0) * (x1 - x0)).float()


def sample_pairs(
    data: SyntheticClipSet, videos: int, image_size: int, g: torch.Generator, clip_patch: int = 8
) -> PairBatch:
    """One batch: `videos` random (video, frame) draws, 4 images each (module docstring)."""
    v = torch.randint(len(data), (videos,), generator=g)
    f = torch.randint(data.frames.shape[1], (videos,), generator=g)
    frames = data.frames[v, f].permute(0, 3, 1, 2).float().div_(255)  # [B, 3, H, W]
    masks = data.masks[v, f].float()  # [B, H, W]
    b, _, h, w = frames.shape
    whole = F.interpolate(frames, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)

    # object box with a random margin (10-60% of its size)
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)
    rows, cols = masks.amax(dim=2) > 0, masks.amax(dim=1) > 0
    has = rows.any(dim=1)
    big = torch.tensor(1e9)
    y0 = torch.where(rows, ys, big).amin(1)
    y1 = torch.where(rows, ys, -big).amax(1) + 1
    x0 = torch.where(cols, xs, big).amin(1)
    x1 = torch.where(cols, xs, -big).amax(1) + 1
    side = torch.maximum(y1 - y0, x1 - x0) * (1.1 + 0.5 * torch.rand(b, generator=g))
    side = torch.where(has, side, torch.full_like(side, float(min(h, w))))
    cy = torch.where(has, (y0 + y1) / 2, torch.full_like(side, h / 2))
    cx = torch.where(has, (x0 + x1) / 2, torch.full_like(side, w / 2))
    box = _windows(frames, cy, cx, side, image_size)

    # patch-sized windows: on the object (centred on a random object pixel) and off it
    psize = PATCH_MIN + (PATCH_MAX - PATCH_MIN) * torch.rand(b, generator=g)
    weights = masks.flatten(1) + 1e-9 * (~has)[:, None]
    pix = torch.multinomial(weights, 1, generator=g)[:, 0]
    on_cy, on_cx = (pix // w).float() + 0.5, (pix % w).float() + 0.5
    on = _windows(frames, on_cy, on_cx, psize, image_size)
    integral = F.pad(masks.cumsum(1).cumsum(2), (1, 0, 1, 0))  # [B, H+1, W+1]
    on_cover = _coverage(integral, on_cy[:, None], on_cx[:, None], psize[:, None])[:, 0]
    k = 16  # candidates per frame for an off-object window with no object pixel
    cand_cy = psize[:, None] / 2 + torch.rand(b, k, generator=g) * (h - psize[:, None])
    cand_cx = psize[:, None] / 2 + torch.rand(b, k, generator=g) * (w - psize[:, None])
    cover = _coverage(integral, cand_cy, cand_cx, psize[:, None].expand(b, k))
    pick = (cover <= 0).float().argmax(dim=1)
    off_ok = (cover <= 0).any(dim=1)
    off = _windows(frames, cand_cy[torch.arange(b), pick], cand_cx[torch.arange(b), pick], psize, image_size)

    # one text per object name in the batch (any of that video's captions)
    texts: list[str] = []
    key_of: dict[str, int] = {}
    vkey = torch.empty(b, dtype=torch.int64)
    for i, vi in enumerate(v.tolist()):
        name = data.names[vi]
        if name not in key_of:
            key_of[name] = len(texts)
            caps = data.captions[vi]
            texts.append(caps[int(torch.randint(len(caps), (1,), generator=g))])
        vkey[i] = key_of[name]
    neg = torch.full((b,), -1, dtype=torch.int64)
    images = torch.cat([whole, box, on, off])
    key = torch.cat([vkey, torch.where(has, vkey, neg), torch.where(has & (on_cover >= 0.4), vkey, neg - 1), neg])
    keep = (key >= -1) & torch.cat([torch.ones(3 * b, dtype=torch.bool), off_ok])
    images, key = images[keep], key[keep]
    flip = torch.rand(images.shape[0], generator=g) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    grid = image_size // clip_patch
    cover = F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0]  # whole frames: the first b images
    cover = torch.where(flip[:b, None, None], cover.flip(-1), cover)
    return PairBatch(images.clamp_(0, 1), key, texts, cover)


@dataclass
class ClipBatch:
    """clips [B, 3 * T, S, S] in [0, 1] (T frames in time order, stacked on channels);
    key [B] int64 index into `texts` (one text per (object name, action) in the batch)."""

    clips: torch.Tensor
    key: torch.Tensor
    texts: list[str]


def sample_clips(data: SyntheticClipSet, videos: int, image_size: int, g: torch.Generator,
                 frames: int = 4, stride: int = 2) -> ClipBatch:
    """`videos` random short clips: `frames` of a video's loaded frames `stride` apart from a random
    start, resized to `image_size`. No flips or time reversal: they would change the action.
    ValueError when the loaded frames are too few for one clip."""
    span = (frames - 1) * stride + 1
    if span > data.frames.shape[1]:
        raise ValueError(f"a clip of {frames} frames {stride} apart needs {span} loaded frames per video, "
                         f"have {data.frames.shape[1]}")
    v = torch.randint(len(data), (videos,), generator=g)
    start = torch.randint(data.frames.shape[1] - span + 1, (videos,), generator=g)
    idx = start[:, None] + stride * torch.arange(frames)[None]  # [B, T]
    x = data.frames[v[:, None], idx].permute(0, 1, 4, 2, 3).float().div_(255)  # [B, T, 3, H, W]
    b, t, c, h, w = x.shape
    x = F.interpolate(x.reshape(b * t, c, h, w), size=(image_size, image_size), mode="bilinear",
                      antialias=True, align_corners=False).reshape(b, t * c, image_size, image_size)
    texts: list[str] = []
    key_of: dict[tuple[str, str], int] = {}
    key = torch.empty(b, dtype=torch.int64)
    for i, vi in enumerate(v.tolist()):
        group = (data.names[vi], data.actions[vi])
        if group not in key_of:
            key_of[group] = len(texts)
            caps = data.captions[vi]
            texts.append(caps[int(torch.randint(len(caps), (1,), generator=g))])
        key[i] = key_of[group]
    return ClipBatch(x.clamp_(0, 1), key, texts)
