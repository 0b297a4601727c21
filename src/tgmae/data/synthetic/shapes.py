"""Shape silhouettes as vectorized point-in-shape tests, and their rasterization over a clip.

A shape lives in unit coordinates (u, v): centred on the origin, v pointing down the image,
"radius" 1 = the circle's radius (the other shapes are scaled to a similar area, see `EXTENT`),
angle 0 = the canonical upright pose (triangle and star point up). Screen angles grow clockwise.
"""

from __future__ import annotations

import math

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")

# Shapes that look the same at every angle: they never carry a "rotate" action.
ROTATION_INVARIANT: frozenset[str] = frozenset({"circle"})

# Farthest silhouette point from the centre, in radii: keeps shapes inside the frame.
EXTENT: dict[str, float] = {
    "circle": 1.0,
    "square": 0.886 * math.sqrt(2.0),
    "triangle": 1.4,
    "star": 1.4,
    "diamond": 1.25,
    "hexagon": 1.1,
    "cross": math.hypot(1.05, 0.38),
}

_UP = -math.pi / 2  # the angle of "up" in (u, v) with v pointing down


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, circumradius: float, phase: float) -> np.ndarray:
    """Convex regular polygon with a vertex at angle `phase`: the intersection of its half-planes."""
    apothem = circumradius * math.cos(math.pi / sides)
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for k in range(sides):
        a = phase + (k + 0.5) * 2.0 * math.pi / sides  # outward normal of edge k
        inside &= u * math.cos(a) + v * math.sin(a) <= apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, outer: float = 1.4, inner_ratio: float = 0.45) -> np.ndarray:
    """Five-pointed star, one point up. Folds the angle into the wedge between an outer vertex A
    (angle 0) and the next inner vertex B (angle pi/5); inside = on the origin's side of line AB."""
    wedge = 2.0 * math.pi / 5
    phi = np.mod(np.arctan2(v, u) - _UP, wedge)
    phi = np.minimum(phi, wedge - phi)
    rho = np.hypot(u, v)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    inner = outer * inner_ratio
    ex, ey = inner * math.cos(math.pi / 5) - outer, inner * math.sin(math.pi / 5)
    return ex * py - ey * (px - outer) >= 0.0


def unit_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool array (broadcast of u, v): True where (u, v) lies inside `shape` at radius 1, angle 0."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.886
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.25
    if shape == "triangle":
        return _regular_polygon(u, v, 3, EXTENT["triangle"], _UP)
    if shape == "hexagon":
        return _regular_polygon(u, v, 6, EXTENT["hexagon"], 0.0)
    if shape == "star":
        return _star(u, v, outer=EXTENT["star"])
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.38) & (av <= 1.05)) | ((av <= 0.38) & (au <= 1.05))
    raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")


def rasterize(
    shape: str,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    angle: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Silhouette of one shape over a clip: bool [T, H, W].

    cx, cy, radius, angle: [T] per-frame centre (pixels, x right / y down, pixel centres at
    integer + 0.5), radius (pixels) and clockwise angle (radians). A pixel is inside when its
    centre is inside the shape (no anti-aliasing), so the silhouette is exact and binary.
    The shape is evaluated only in a per-frame window around it, then placed in the frame.
    """
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    cx, cy, radius, angle = f32(cx), f32(cy), f32(radius), f32(angle)
    frames = cx.shape[0]
    reach = float(radius.max()) * EXTENT[shape] + 1.0
    side = int(math.ceil(2.0 * reach)) + 1  # window side; also the padding around the frame
    x0 = np.clip(np.floor(cx - reach), -side, width).astype(np.int64)  # [T] window corners
    y0 = np.clip(np.floor(cy - reach), -side, height).astype(np.int64)
    offs = np.arange(side)
    inv_r = (1.0 / radius)[:, None]
    dx = ((x0[:, None] + offs + 0.5).astype(np.float32) - cx[:, None]) * inv_r  # [T, S]
    dy = ((y0[:, None] + offs + 0.5).astype(np.float32) - cy[:, None]) * inv_r
    dx, dy = dx[:, None, :], dy[:, :, None]  # [T, 1, S], [T, S, 1]
    if shape in ROTATION_INVARIANT:
        window = unit_shape(shape, dx, dy)
    else:
        c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        # screen = R(angle) @ local, so local = R(-angle) @ screen
        window = unit_shape(shape, c * dx + s * dy, c * dy - s * dx)  # [T, S, S]
    canvas = np.zeros((frames, height + 2 * side, width + 2 * side), dtype=bool)
    rows = (y0 + side)[:, None, None] + offs[None, :, None]
    cols = (x0 + side)[:, None, None] + offs[None, None, :]
    canvas[np.arange(frames)[:, None, None], rows, cols] = window
    return np.ascontiguousarray(canvas[:, side : side + height, side : side + width])
