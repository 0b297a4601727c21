"""Batch mask generators: masks made on the batch in the main process (e.g. CLIP on the GPU),
after the batch is moved there and before the model's forward, instead of per sample in the
DataLoader workers (the dataset then builds no mask). Same contract as per-sample masks:
[B, N] bool, True = masked, (t, h, w) raster order, the same masked count in every sample.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class BatchMaskGenerator(Protocol):
    """(video [B, C, T, H, W] data-normalized, text_embedding [B, D] or None, grid (T', H', W'),
    generator (CPU, so masks do not depend on the device)) -> [B, N] bool mask on video's device,
    True = masked."""

    ratio: float
    batched: bool

    def __call__(
        self, video: torch.Tensor, text_embedding: Optional[torch.Tensor],
        grid: tuple[int, int, int], generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor: ...


def is_batch_generator(obj: object) -> bool:
    """True for generators meant to run on the batch in the main process."""
    return bool(getattr(obj, "batched", False))
