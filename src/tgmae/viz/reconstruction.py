"""Reconstruction figures: original / masked / reconstructed frames (paper Figure 3, rows 1-3).

`write_reconstruction` draws one clip under the names it is given (a pretraining run's
`reconstruction.png` / `.gif`, `tgmae visualize recon`'s `recon_<id>.png` / `.gif`), each file
written atomically (temp file + rename, `tgmae.atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

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
    rows: dict[str, torch.Tensor], out_path: str | Path, max_frames: int = 8, title: str = "",
    frame_numbers: Optional[Sequence[int]] = None,
) -> Path:
    """A grid: one row per entry of `rows`, up to `max_frames` evenly spaced frames as columns,
    titled with their source frame numbers (`frame_numbers` [T]) where given."""
    cols = frame_columns(next(iter(rows.values())).shape[0], max_frames)
    fig, _ = frame_grid(rows, cols, 1.7 * len(rows), frame_numbers)
    return save_figure(fig, out_path, title)


def write_reconstruction(model: nn.Module, sample: dict[str, Any], cfg: Any, out_dir: Path, name: str,
                         title: str, make_mask: Optional[Callable] = None) -> dict[str, Path]:
    """`out_dir/<name>.png` (original / masked / reconstructed rows) and `<name>.gif` (side by side) of
    one sample (`video` [C, T, H, W], `mask` [N] bool, True = masked) drawn by `model` (a
    `VideoMAEPretrainer`, eval mode); cfg: the run's config. Returns {"reconstruction": png,
    "reconstruction_gif": gif}. The title gives the clip's masked MSE in pixels next to the patch-mean
    oracle's (`tgmae.models.target.patch_mean_mse`); with norm_pix_loss (the figure borrows each
    patch's true mean and std) the loss on the normalized target instead, where the mean scores 1.0.
    make_mask: sample -> [1, N] mask, for masks made on the batch (online TGM)."""
    from tgmae.models import reconstruct_video
    from tgmae.models.target import masked_pixel_mse, patch_mean_mse

    model = model.eval()
    device = next(model.parameters()).device  # the trained model stays where it trained (a GPU)
    video = sample["video"][None]
    mask = sample["mask"][None] if make_mask is None else make_mask(sample)
    with torch.no_grad():
        res = model(video.to(device), mask.to(device))
        pred, mask = res.pred.float().cpu(), mask.cpu()
        recon = reconstruct_video(video, pred, mask, model.arch)
        if model.arch.norm_pix_loss:
            how = (f"masked MSE {float(res.loss):.3f} on the normalized target (each patch's mean: ~1.0); "
                   "drawn with the true patch means and stds")
        else:
            mse, oracle = masked_pixel_mse(video, pred, mask, model.arch), patch_mean_mse(video, mask, model.arch)
            how = f"masked MSE {mse:.4f} vs patch-mean oracle {oracle:.4f} (pixels)"
    rows = reconstruction_rows(video[0], recon[0], mask[0], cfg.token_grid, cfg.model.tubelet_size,
                               cfg.model.patch_size, cfg.data.mean, cfg.data.std)
    frames = sample.get("frame_indices")
    out = {"reconstruction": save_reconstruction_figure(
        rows, out_dir / f"{name}.png", title=f"{title}{masked_note(mask[0], cfg.masking.ratio)}: {how}",
        frame_numbers=None if frames is None else torch.as_tensor(frames).tolist())}
    strip = torch.cat([rows["original"], rows["masked"], rows["reconstruction"]], dim=2)
    out["reconstruction_gif"] = save_gif(strip, out_dir / f"{name}.gif")
    return out


def masked_note(mask: torch.Tensor, ratio: float) -> str:
    """`; masked K/N tokens (f, configured ratio r)` when the mask [N] (True = masked) hides
    another fraction than `ratio` (tube masking rounds per frame: 0.9 of 4 patches masks 3), else ""."""
    k, n = int(mask.sum()), mask.numel()
    if round(k / n, 2) == round(float(ratio), 2):
        return ""
    return f"; masked {k}/{n} tokens ({k / n:.2f}, configured ratio {float(ratio):.2f})"


def save_gif(frames: torch.Tensor, out_path: str | Path, fps: int = 6) -> Path:
    """[T, H, W, 3] uint8 -> animated GIF."""
    from PIL import Image

    from tgmae.atomic import atomic_path

    images = [Image.fromarray(f.numpy()) for f in frames]
    out = Path(out_path)
    with atomic_path(out) as tmp:  # a full disk: OutputError naming `out`, no partial file
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return out
