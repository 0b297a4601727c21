"""The mask contract: what a mask generator is given, what it returns, how many tokens it masks.

Its users are the data pipeline (which calls a generator per sample), `tgmae.masking` (the
generators), `tgmae.models` (which checks a batch mask) and `tgmae.config` (which checks
`contrastive.view_ratio` against the count), so it sits in the bottom layer and imports nothing of
tgmae. A generator is a small callable object, called once per sample with a `MaskContext` (what the
data pipeline knows about that sample) and a seeded `torch.Generator`, returning a bool mask
over the token grid: shape [N] with N = T' * H' * W' in (t, h, w) raster order, True = masked.
Every sample gets exactly `MASKED_COUNT[name](grid, ratio)` masked tokens, so batches have an equal
visible count. Generators are called in DataLoader workers; they must not touch global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


@dataclass
class CropParams:
    """Where the model's clip came from in the source frames (from the spatial augmentation).

    The crop box is in source-frame pixels; the crop was resized to the model input and then
    flipped horizontally when `flip` is True. Lets a map computed on the original frames
    (similarity, motion) be carried into the augmented token grid.
    """

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


# masking.name -> the masked-token count of its generator (each generator class's `masked_count`
# is the entry under its name: tests/test_masking_simple.py keeps them equal). The config checks
# contrastive.view_ratio against it at load time.
MASKED_COUNT = {"random": masked_per_clip, "tube": masked_per_slice, "tgm": masked_per_slice,
                "mgm": masked_per_slice}


def check_mask(mask: torch.Tensor, num_tokens: int | None = None) -> int:
    """Validate a [B, N] bool batch mask; returns the per-sample visible count.

    Every sample must keep the same number of visible tokens: the encoder gathers visible tokens
    into a dense [B, N_vis, D] tensor, and unequal counts would mix samples silently.
    """
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


__all__ = [
    "MASKED_COUNT", "CropParams", "MaskContext", "MaskGenerator", "check_mask", "masked_per_clip",
    "masked_per_slice", "num_masked",
]
