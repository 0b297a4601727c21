"""Render a `Scene` to RGB frames and the acting object's ground-truth mask.

Mask definition: the *visible* pixels of the acting object in the rendered (pre-compression)
frames, i.e. pixels whose centre lies inside its silhouette and that no shape painted in front
of it covers. A faded ("blink") actor still owns its pixels: they are drawn, only translucent.
To keep every frame's mask substantial, an actor that would be less than `min_visible` visible
on some frame is moved to the front (the recorded z-order says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tgmae.data.synthetic.scene import Scene
from tgmae.data.synthetic.shapes import rasterize


@dataclass
class RenderedClip:
    """frames: uint8 [T, H, W, 3] RGB. mask: bool [T, H, W], True = visible acting-object pixel.
    boxes: int16 [T, 4] (x0, y0, x1, y1) bounding box of mask, exclusive ends.
    paint_order: track indices back to front, as drawn."""

    frames: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    paint_order: list[int]


def mask_boxes(mask: np.ndarray) -> np.ndarray:
    """bool [T, H, W] -> int16 [T, 4] (x0, y0, x1, y1), exclusive ends; all zero for empty frames."""
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # [T, H], [T, W]
    h, w = mask.shape[1:]
    y0, y1 = rows.argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)
    x0, x1 = cols.argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.int16)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def _silhouettes(scene: Scene) -> list[np.ndarray]:
    """bool [T, H, W] per track, in screen coordinates (world position minus camera shake)."""
    dy, dx = scene.shake[:, 0].astype(np.float32), scene.shake[:, 1].astype(np.float32)
    return [
        rasterize(tr.shape, tr.cx - dx, tr.cy - dy, tr.radius, tr.angle, scene.height, scene.width)
        for tr in scene.tracks
    ]


def _paint_order(scene: Scene, sil: list[np.ndarray], min_visible: float) -> list[int]:
    """Scene order, unless the actor is less than `min_visible` visible somewhere: then it goes on top."""
    order = list(range(len(scene.tracks)))
    above = order[order.index(scene.acting) + 1 :]
    if not above:
        return order
    actor = sil[scene.acting]
    covered = np.logical_or.reduce([sil[i] for i in above]) & actor
    area = actor.sum(axis=(1, 2))
    visible = (area - covered.sum(axis=(1, 2))) / np.maximum(area, 1)
    if visible.min() < min_visible:
        order.remove(scene.acting)
        order.append(scene.acting)
    return order


def paint_order(scene: Scene, min_visible: float = 0.6) -> list[int]:
    """`render_scene(scene, min_visible).paint_order` without drawing the frames (a set's record
    of a video already on disk)."""
    return _paint_order(scene, _silhouettes(scene), min_visible)


def render_scene(scene: Scene, min_visible: float = 0.6) -> RenderedClip:
    """Composite background, shapes (back to front, alpha-blended) and the actor's mask."""
    h, w = scene.height, scene.width
    frames = np.stack([scene.texture[y : y + h, x : x + w] for y, x in scene.view])  # uint8 [T, H, W, 3]
    sil = _silhouettes(scene)
    order = _paint_order(scene, sil, min_visible)
    owner = np.full((scene.frames, h, w), -1, dtype=np.int8)  # index of the front-most shape per pixel
    for i in order:
        tr, m = scene.tracks[i], sil[i]
        rgb = np.asarray(tr.rgb, dtype=np.float32)
        a = np.broadcast_to(tr.alpha[:, None, None], m.shape)[m][:, None]  # [n, 1] per covered pixel
        frames[m] = np.rint(frames[m] * (1.0 - a) + rgb * a).astype(np.uint8)
        owner[m] = i
    mask = owner == scene.acting
    return RenderedClip(
        frames=frames,
        mask=mask,
        boxes=mask_boxes(mask),
        paint_order=order,
    )
