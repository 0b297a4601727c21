"""Encoder attention maps (paper Figure 3, row 4): where one query token looks, per layer and head.

SDPA never materializes the weights, so a forward pre-hook on each block's `attn` captures its
input (norm1(x)) and the query's row of softmax(q k^T / sqrt(d)) is rebuilt from the block's
`qkv.weight` and `q_bias` (VideoMAE's key bias is zero). Default query: the centre patch of the
centre frame. Figures: head-averaged attention overlaid on the frames, PNG grid and GIF.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tgmae.viz.plotting import frame_columns, frame_grid, pyplot, save_figure, to_uint8_frames


@dataclass
class AttentionMaps:
    """weights [L, B, H, N]: attention of the query token over all N tokens (rows sum to 1), per
    layer L and head H; query: the query token index (t, h, w raster order); grid (T', H', W')."""

    weights: torch.Tensor
    query: int
    grid: tuple[int, int, int]


def centre_query(grid: tuple[int, int, int]) -> int:
    """Token index of the centre patch of the centre frame in a (T', H', W') grid."""
    t, h, w = grid
    return (t // 2) * h * w + (h // 2) * w + (w // 2)


def attention_rows(attn: nn.Module, x: torch.Tensor, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention probabilities of an `Attention` module on its input x [B, N, D].

    queries: [Q] token indices (None = all N) -> [B, H, Q, N] float32, rows sum to 1.
    """
    b, n, d = x.shape
    heads = attn.num_heads
    hd = d // heads
    w_q, w_k, _ = attn.qkv.weight.float().chunk(3, dim=0)  # [D, D] each
    xq = x if queries is None else x[:, queries]
    q = F.linear(xq.float(), w_q, attn.q_bias.float())  # [B, Q, D]
    k = F.linear(x.float(), w_k)  # [B, N, D]: VideoMAE has no key bias
    q = q.view(b, -1, heads, hd).transpose(1, 2)  # [B, H, Q, d]
    k = k.view(b, n, heads, hd).transpose(1, 2)  # [B, H, N, d]
    return torch.matmul(q * hd ** -0.5, k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def encoder_attention(encoder: nn.Module, video: torch.Tensor, query: Optional[int] = None) -> AttentionMaps:
    """video [B, C, T, H, W] -> AttentionMaps of `query` (default: centre patch, centre frame)
    in every block of a `VideoViTEncoder`, from one forward pass on all tokens (no mask)."""
    grid = encoder.arch.grid
    query = centre_query(grid) if query is None else int(query)
    if not 0 <= query < encoder.num_tokens:
        raise ValueError(f"query token {query} outside [0, {encoder.num_tokens})")
    inputs: dict[int, torch.Tensor] = {}
    handles = [blk.attn.register_forward_pre_hook(lambda _m, args, i=i: inputs.__setitem__(i, args[0].detach()))
               for i, blk in enumerate(encoder.blocks)]
    was_training = encoder.training
    try:
        encoder.eval()
        encoder(video)
    finally:
        encoder.train(was_training)
        for h in handles:
            h.remove()
    q = torch.tensor([query], device=video.device)
    rows = [attention_rows(blk.attn, inputs[i], q)[:, :, 0] for i, blk in enumerate(encoder.blocks)]
    return AttentionMaps(torch.stack(rows).cpu(), query, grid)


def attention_video(maps: AttentionMaps, tubelet: int, image_size: int, layer: int = -1,
                    sample: int = 0) -> torch.Tensor:
    """Head-averaged attention of one layer as a [T, H, W] heat map in [0, 1] (min-max over the
    clip): each token's weight spread over its tubelet frames, bilinear over its patch."""
    t, h, w = maps.grid
    a = maps.weights[layer, sample].mean(dim=0).view(t, 1, h, w)  # [T', 1, H', W']
    a = F.interpolate(a, size=(image_size, image_size), mode="bilinear", align_corners=False)[:, 0]
    a = a.repeat_interleave(tubelet, dim=0)  # [T, H, W]
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo).clamp_min(1e-12)


def overlay(frames: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> torch.Tensor:
    """frames uint8 [T, H, W, 3], heat [T, H, W] in [0, 1] -> uint8 [T, H, W, 3] blend."""
    plt = pyplot()
    colours = torch.from_numpy(plt.get_cmap(cmap)(heat.numpy())[..., :3]).float()  # [T, H, W, 3]
    mixed = (1 - alpha) * frames.float() / 255.0 + alpha * colours
    return (mixed.clamp(0, 1) * 255).round().to(torch.uint8)


def query_box(query: int, grid: tuple[int, int, int], tubelet: int, patch: int) -> tuple[range, int, int]:
    """(frames, y0, x0) of the query token: the frames its tubelet covers and its top-left pixel."""
    _, h, w = grid
    ti, rest = divmod(query, h * w)
    hi, wi = divmod(rest, w)
    return range(ti * tubelet, (ti + 1) * tubelet), hi * patch, wi * patch


def save_attention_figure(frames: torch.Tensor, blended: torch.Tensor, out_path: str | Path,
                          box: Optional[tuple[range, int, int]] = None, patch: int = 16,
                          max_frames: int = 8, title: str = "",
                          frame_numbers: Optional[Sequence[int]] = None) -> Path:
    """Two rows (frames, attention overlay) of up to `max_frames` evenly spaced frames, titled with
    their source frame numbers (`frame_numbers` [T]) where given; the query patch is outlined in the
    frames its tubelet covers."""
    from matplotlib.patches import Rectangle

    cols = frame_columns(frames.shape[0], max_frames)
    if box is not None and not any(c in box[0] for c in cols):  # always show the query frame
        cols = sorted(set(cols[:-1]) | {box[0][0]})
    fig, axes = frame_grid({"frames": frames, "attention": blended}, cols, 3.5, frame_numbers)
    for c, ti in enumerate(cols):
        if box is not None and ti in box[0]:
            for ax in axes[:, c]:  # the query patch, outlined in both rows
                ax.add_patch(Rectangle((box[2] - 0.5, box[1] - 0.5), patch, patch, fill=False, edgecolor="white",
                                       linewidth=1.2))
    return save_figure(fig, out_path, title)


def attention_figures(encoder: nn.Module, video: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                      out_dir: str | Path, *, layer: int = -1, query: Optional[int] = None,
                      name: str = "attention", title: str = "",
                      frame_numbers: Optional[Sequence[int]] = None) -> dict[str, Path]:
    """One clip [C, T, H, W] (normalized) -> `{name}.png` and `{name}.gif` in out_dir.

    layer: which block's attention (-1 = last); query: token index (default: centre patch of
    the centre frame). mean/std: the dataset's normalization, undone for display. frame_numbers
    [T]: the clip's frame indices in its video (a sample's frame_indices), the columns' titles."""
    arch = encoder.arch
    device = next(encoder.parameters()).device
    maps = encoder_attention(encoder, video[None].to(device), query)
    heat = attention_video(maps, arch.tubelet_size, arch.image_size, layer)
    frames = to_uint8_frames(video, mean, std)
    blended = overlay(frames, heat)
    box = query_box(maps.query, maps.grid, arch.tubelet_size, arch.patch_size)
    depth = maps.weights.shape[0]
    label = title or f"attention of the centre patch, block {layer % depth + 1}/{depth} (head mean)"
    from tgmae.viz.reconstruction import save_gif

    out = Path(out_dir)
    return {
        "attention": save_attention_figure(frames, blended, out / f"{name}.png", box, arch.patch_size,
                                            title=label, frame_numbers=frame_numbers),
        "attention_gif": save_gif(torch.cat([frames, blended], dim=2), out / f"{name}.gif"),
    }
