"""Codec motion vectors of a decoded frame -> a per-16x16-block displacement grid.

FFmpeg exports them with `flags2=+export_mvs` (H.264, MPEG-4, MS-MPEG4 do; I-frames have none).
Each vector says where a block of the current frame came from in a reference frame
(`src = dst + motion / motion_scale`); we store the forward displacement `dst - src` of the
block, negated for vectors that point to a future reference, averaged over the 16x16 cell that
holds the block centre, weighted by block area. `VideoReader.read(..., with_motion=True)` and
`read_motion_vectors` return these grids.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def block_motion(frame, rotation: int) -> Optional[np.ndarray]:
    """av.VideoFrame decoded with export_mvs -> [Hb, Wb, 2] float32 mean forward displacement
    (dx, dy) in pixels per 16x16 block, Hb, Wb = ceil(H / 16), ceil(W / 16); None on I-frames.
    `rotation` (degrees counter-clockwise) turns the grid and its vectors upright."""
    sd = frame.side_data.get("MOTION_VECTORS") if frame.side_data else None
    hb, wb = -(-frame.height // 16), -(-frame.width // 16)
    if sd is None:
        if frame.key_frame or int(frame.pict_type) == 1:  # AV_PICTURE_TYPE_I
            return None
        return rotate_motion(np.zeros((hb, wb, 2), np.float32), rotation)
    mv = sd.to_ndarray()
    out = np.zeros((hb * wb, 2), np.float64)
    cnt = np.zeros(hb * wb, np.float64)
    if len(mv):
        scale = np.maximum(mv["motion_scale"].astype(np.float64), 1.0)
        sign = np.where(mv["source"] < 0, 1.0, -1.0)  # vectors to a future reference point back
        dx = -mv["motion_x"] / scale * sign  # src = dst + motion/scale  ->  motion dst - src
        dy = -mv["motion_y"] / scale * sign
        by = np.clip(mv["dst_y"].astype(np.int64) // 16, 0, hb - 1)
        bx = np.clip(mv["dst_x"].astype(np.int64) // 16, 0, wb - 1)
        cell = by * wb + bx
        area = mv["w"].astype(np.float64) * mv["h"].astype(np.float64)
        np.add.at(out, cell, np.stack([dx * area, dy * area], 1))
        np.add.at(cnt, cell, area)
    res = (out / np.maximum(cnt, 1.0)[:, None]).reshape(hb, wb, 2).astype(np.float32)
    return rotate_motion(res, rotation)


def rotate_motion(m: np.ndarray, rotation: int) -> np.ndarray:
    """[Hb, Wb, 2] grid and vectors turned `rotation` degrees counter-clockwise (multiple of 90)."""
    for _ in range(rotation // 90):  # 90 degrees counter-clockwise: (x, y) -> (y, W-1-x)
        m = np.rot90(m, k=1)
        m = np.stack([m[..., 1], -m[..., 0]], -1)
    return np.ascontiguousarray(m)
