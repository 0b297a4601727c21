"""Background textures (stripes, checker, value noise, grid) in muted colours.

A texture is drawn once on a canvas larger than the frame; each frame is a window into it whose
offset moves slowly (scrolling background) and shakes (camera jitter), see `scene.py`.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

BACKGROUNDS: tuple[str, ...] = ("stripes", "checker", "noise", "grid")
# Kinds a scene may ask for by name but never draws at random (so the default set is unchanged):
# "flat" is one muted colour without grain - everything a masked token holds beyond the
# background is then the objects (the MAE sanity check's learnable structure, issue 14).
EXTRA_BACKGROUNDS: tuple[str, ...] = ("flat",)

# Adjective used in captions, e.g. "across a striped background".
BACKGROUND_WORDS: dict[str, str] = {"stripes": "striped", "checker": "checkered", "noise": "mottled", "grid": "grid",
                                    "flat": "plain"}


def _muted_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two low-saturation colours of distinct brightness (float32 [3] each, 0..255), so saturated
    object colours stay recognisable while the texture still has edges for the codec to track."""
    hue = rng.random()
    hue2 = (hue + rng.uniform(-0.15, 0.15)) % 1.0
    dark_v = rng.uniform(0.22, 0.45)
    light_v = min(0.85, dark_v + rng.uniform(0.18, 0.35))
    dark = colorsys.hsv_to_rgb(hue, rng.uniform(0.05, 0.35), dark_v)
    light = colorsys.hsv_to_rgb(hue2, rng.uniform(0.05, 0.3), light_v)
    to = lambda c: np.asarray(c, dtype=np.float32) * 255.0  # noqa: E731
    if rng.random() < 0.5:
        return to(dark), to(light)
    return to(light), to(dark)


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1], float32 [H, W]: a random grid with `cell`-pixel spacing, bilinearly
    interpolated (smoothstep-weighted)."""
    gh, gw = int(math.ceil(height / cell)) + 2, int(math.ceil(width / cell)) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    y = (np.arange(height, dtype=np.float32) + 0.5) / cell
    x = (np.arange(width, dtype=np.float32) + 0.5) / cell
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    out = top * (1 - fy[:, None]) + bottom * fy[:, None]
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def make_texture(kind: str, height: int, width: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """A background canvas, uint8 [height, width, 3].

    scale: frame side / 128, so pattern sizes in pixels follow the video resolution.
    """
    a, b = _muted_pair(rng)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    if kind == "stripes":
        theta = rng.choice([0.0, 0.25, 0.5, 0.75]) * math.pi + rng.uniform(-0.15, 0.15)
        period = rng.uniform(6.0, 24.0) * scale
        duty = rng.uniform(0.35, 0.65)
        t = (np.mod((x * math.cos(theta) + y * math.sin(theta)) / period, 1.0) < duty).astype(np.float32)
    elif kind == "checker":
        cell = max(2.0, rng.uniform(5.0, 20.0) * scale)
        t = np.mod(np.floor(x / cell) + np.floor(y / cell), 2.0).astype(np.float32)
    elif kind == "noise":
        t = _value_noise(rng, height, width, max(2.0, rng.uniform(3.0, 16.0) * scale))
    elif kind == "flat":
        t = np.zeros((1, 1), np.float32)
    elif kind == "grid":
        period = max(4.0, rng.uniform(8.0, 20.0) * scale)
        line = max(1.0, round(rng.uniform(1.0, 2.5) * scale))
        t = ((np.mod(x, period) < line) | (np.mod(y, period) < line)).astype(np.float32)
    else:
        raise ValueError(f"unknown background {kind!r}: expected one of {BACKGROUNDS + EXTRA_BACKGROUNDS}")
    t = np.broadcast_to(t, (height, width))[..., None]  # [H, W, 1] weight of colour b
    img = a * (1.0 - t) + b * t
    grain = rng.normal(0.0, 4.0, size=(height, width, 1)).astype(np.float32)  # faint sensor grain
    if kind == "flat":
        grain[:] = 0.0  # drawn all the same, so the rest of the scene's random numbers are unchanged
    return np.clip(img + grain, 0, 255).astype(np.uint8)
