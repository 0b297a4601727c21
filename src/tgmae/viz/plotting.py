"""Shared plotting set-up: a headless matplotlib and un-normalization of model inputs."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed on clusters or CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def to_uint8_frames(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[C, T, H, W] normalized float -> [T, H, W, C] uint8, undoing the dataset's mean/std."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    pixels = (video.detach().float().cpu() * s + m).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(1, 2, 3, 0)


def token_mask_to_pixels(mask: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """[N] bool token mask -> [T, H, W] bool pixel mask (each token covers tubelet x patch x patch)."""
    t, h, w = grid
    m = mask.detach().cpu().view(t, h, w)
    return m.repeat_interleave(tubelet, 0).repeat_interleave(patch, 1).repeat_interleave(patch, 2)


def frame_columns(t: int, max_frames: int) -> list[int]:
    """Up to `max_frames` evenly spaced frame indices of a T-frame clip."""
    return torch.linspace(0, t - 1, min(max_frames, t)).round().long().tolist()


def frame_grid(rows: dict[str, torch.Tensor], cols: Sequence[int], height: float,
               frame_numbers: Optional[Sequence[int]] = None):
    """A grid figure: one row per entry of `rows` (uint8 frames [T, H, W, 3], the name as its
    label), the frames `cols` as columns titled `frame i`: i the source frame `frame_numbers[col]`
    ([T], the clip's frame indices in its video) where given, else the clip's own index;
    -> (fig, axes[row][col])."""
    fig, axes = pyplot().subplots(len(rows), len(cols), figsize=(1.6 * len(cols), height), squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c, ti in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(frames[ti].numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"frame {ti if frame_numbers is None else int(frame_numbers[ti])}", fontsize=7)
    return fig, axes


def save_figure(fig, out_path, title: str = "", dpi: int = 110):
    """Title, tight layout, write the PNG atomically (parents created; a full disk is an
    `OutputError` naming it, no partial file), free the figure; returns the Path."""
    from pathlib import Path

    from tgmae.atomic import atomic_path

    if title:  # wrapped to the figure's width (~0.6 em per character): a narrow figure clipped long titles
        import textwrap

        fig.suptitle(textwrap.fill(title, max(20, int(fig.get_figwidth() * 72 / (9 * 0.6)))), fontsize=9)
    fig.tight_layout()
    out = Path(out_path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=out.suffix.lstrip(".") or "png", bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return out
