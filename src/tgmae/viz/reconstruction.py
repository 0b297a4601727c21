"""Reconstruction figures: original / masked / reconstructed frames (paper Figure 3, rows 1-3)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from tgmae.viz.plotting import frame_columns, frame_grid, save_figure, to_uint8_frames, token_mask_to_pixels


def reconstruction_rows(
    video: torch.Tensor,
    recon: torch.Tensor,
    mask: torch.Tensor,
    grid: tuple[int, int, int],
    tubelet: int,
    patch: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, torch.Tensor]:
    """uint8 [T, H, W, 3] rows for one clip: original, masked (grey where hidden), reconstruction.

    video, recon: [C, T, H, W] in the model's normalized space; mask: [N] bool, True = masked.
    """
    original = to_uint8_frames(video, mean, std)
    pixel_mask = token_mask_to_pixels(mask, grid, tubelet, patch)[..., None]
    masked = torch.where(pixel_mask, torch.full_like(original, 128), original)
    reconstructed = to_uint8_frames(recon, mean, std)
    return {"original": original, "masked": masked, "reconstruction": reconstructed}


def save_reconstruction_figure(
    rows: dict[str, torch.Tensor], out_path: str | Path, max_frames: int = 8, title: str = ""
) -> Path:
    """A grid: one row per entry of `rows`, up to `max_frames` evenly spaced frames as columns."""
    cols = frame_columns(next(iter(rows.values())).shape[0], max_frames)
    fig, _ = frame_grid(rows, cols, 1.7 * len(rows))
    return save_figure(fig, out_path, title)


def save_gif(frames: torch.Tensor, out_path: str | Path, fps: int = 6) -> Path:
    """[T, H, W, 3] uint8 -> animated GIF."""
    from PIL import Image

    from tgmae.atomic import atomic_path

    images = [Image.fromarray(f.numpy()) for f in frames]
    out = Path(out_path)
    with atomic_path(out) as tmp:  # a full disk: OutputError naming `out`, no partial file
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return out
