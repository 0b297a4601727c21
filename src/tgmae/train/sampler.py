"""A distributed sampler that can start mid-epoch, so a resumed run sees exactly the same data."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled (seed, epoch) permutation, interleaved across ranks (rank r takes r, r + world,
    ...: the ranks' batches together are the single-process batch), with a start offset. Every
    rank gets the same count (the uneven tail is dropped)."""

    def __init__(self, dataset_size: int, *, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0):
        if dataset_size < world_size:
            raise ValueError(f"dataset has {dataset_size} items, fewer than {world_size} "
                             f"process{'' if world_size == 1 else 'es'}")
        self.dataset_size = dataset_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start = 0  # samples of this rank to skip (resume position)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return self.dataset_size // self.world_size - self.start

    def indices(self) -> torch.Tensor:
        """This rank's full-epoch index list (before the start offset)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.dataset_size, generator=g)
        else:
            perm = torch.arange(self.dataset_size)
        per_rank = self.dataset_size // self.world_size
        return perm[: per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :].tolist())
