"""The mask contract: what a mask generator is given, what it returns, how many tokens it masks.

A generator is called once per sample (in DataLoader workers) with a `MaskContext` and a seeded
`torch.Generator`, never the global RNG, and returns an [N] bool mask over the token grid in
(t, h, w) raster order, True = masked, with exactly `MASKED_COUNT[name](grid, ratio)` masked.
Bottom layer: imports nothing of tgmae (data, masking, models and config all use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass
class CropParams:
    """The spatial augmentation's crop box in source-frame pixels (resized to the model input,
    then flipped when `flip`): carries maps of the source frames into the augmented token grid."""

    top: float
    left: float
    height: float
    width: float
    flip: bool = False
    source_height: int = 0
    source_width: int = 0

    def as_tensor(self) -> torch.Tensor:
        """[7] float: top, left, height, width, flip, source_height, source_width (collates)."""
        return torch.tensor(
            [self.top, self.left, self.height, self.width, float(self.flip),
             float(self.source_height), float(self.source_width)],
            dtype=torch.float32,
        )

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "CropParams":
        v = [float(x) for x in t.tolist()]
        return cls(v[0], v[1], v[2], v[3], bool(v[4] > 0.5), int(v[5]), int(v[6]))


@dataclass
class MaskContext:
    """Per-sample inputs a mask generator may use; content-free generators ignore them all.

    grid: (T', H', W') token grid of the model input.
    frames: [C, T, H, W] the augmented clip (float), when the generator needs pixels.
    frame_indices: [T] source frame index of each clip frame (for cached per-frame maps).
    crop: the spatial augmentation applied to produce `frames`.
    video_id: key into caches (similarity maps, captions).
    text_embedding: [D] embedding of the caption drawn for this sample.
    caption: the drawn caption's text (cached TGM finds its maps by it), or None.
    motion: [T, Hs, Ws, 2] per-pixel-block motion (dx, dy) of the source frames, or None.
    """

    grid: tuple[int, int, int]
    frames: Optional[torch.Tensor] = None
    frame_indices: Optional[torch.Tensor] = None
    crop: Optional[CropParams] = None
    video_id: Optional[str] = None
    text_embedding: Optional[torch.Tensor] = None
    motion: Optional[torch.Tensor] = None
    caption: Optional[str] = None

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


class MaskGenerator(Protocol):
    """Callable: (context, generator) -> [N] bool mask, True = masked."""

    ratio: float

    def __call__(self, ctx: MaskContext, generator: torch.Generator) -> torch.Tensor: ...


def num_masked(count: int, ratio: float) -> int:
    """Masked tokens out of `count` at `ratio`: rounded to nearest, at least 1 visible and 1 masked."""
    return max(1, min(count - 1, int(round(count * ratio))))


def masked_per_clip(grid: tuple[int, int, int], ratio: float) -> int:
    """Masked tokens of a clip whose generator picks over all T' x H' x W' tokens at once (random)."""
    t, h, w = grid
    return num_masked(t * h * w, ratio)


def masked_per_slice(grid: tuple[int, int, int], ratio: float) -> int:
    """Masked tokens of a clip whose generator picks `num_masked(H' x W', ratio)` in every temporal
    slice (tube, TGM, MGM: equal counts per slice)."""
    t, h, w = grid
    return t * num_masked(h * w, ratio)


# masking.name -> its generator's masked-token count (tests/test_masking_simple.py keeps them equal)
MASKED_COUNT = {"random": masked_per_clip, "tube": masked_per_slice, "tgm": masked_per_slice,
                "mgm": masked_per_slice}


def check_mask(mask: torch.Tensor, num_tokens: int | None = None) -> int:
    """Validate a [B, N] bool batch mask; returns the per-sample visible count. ValueError unless
    every sample keeps the same, non-zero number of visible tokens (the encoder packs them dense)."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a [B, N] bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    if num_tokens is not None and mask.shape[1] != num_tokens:
        raise ValueError(f"mask has {mask.shape[1]} tokens per sample, the model expects {num_tokens}")
    visible = (~mask).sum(dim=1)
    if visible.numel() and not bool((visible == visible[0]).all()):
        raise ValueError(
            "every sample must keep the same number of visible tokens; got per-sample visible "
            f"counts {visible.tolist()}"
        )
    n_vis = int(visible[0]) if visible.numel() else 0
    if n_vis == 0:
        raise ValueError("mask hides every token: the encoder needs at least one visible token")
    return n_vis
