"""Shared memory for DataLoader workers, with a failed allocation explained.

torch puts a shared tensor in a file under /dev/shm (`torch_<pid>_...`); a small or full /dev/shm
(Docker's default is 64 MB) or a file-size limit (`ulimit -f`) makes that fail with "unable to
resize file </torch_...>", leaving the empty file behind. `share_memory` turns that into one
`SharedMemoryError` naming /dev/shm and the ways out, and removes the empty files it left.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tgmae.errors import UserError

SHM = Path("/dev/shm")


class SharedMemoryError(RuntimeError, UserError):
    """Shared memory (/dev/shm) could not hold a tensor the DataLoader workers must share."""


def _torch_files() -> set[Path]:
    """This process's torch shared-memory files (named torch_<pid>_...)."""
    return set(SHM.glob(f"torch_{os.getpid()}_*")) if SHM.is_dir() else set()


def share_memory(tensor: torch.Tensor, what: str, way_out: str = "") -> torch.Tensor:
    """`tensor.share_memory_()` (in place; returned). what: the tensor in the error (e.g. "the
    dataset's epoch counter"); way_out: a setting that avoids the allocation, named besides
    data.num_workers=0 and a larger /dev/shm. Raises SharedMemoryError."""
    before = _torch_files()
    try:
        return tensor.share_memory_()
    except RuntimeError as err:
        for f in _torch_files() - before:  # the empty files torch created and did not remove
            try:
                if f.stat().st_size == 0:
                    f.unlink()
            except OSError:
                pass
        cause = (str(err).strip().splitlines() or ["failed"])[0][:200]
        size = tensor.numel() * tensor.element_size()
        raise SharedMemoryError(
            f"cannot put {what} ({size / 2**20:.2f} MiB) in shared memory ({SHM}): {cause}; free space in "
            f"{SHM} or give it more (docker run --shm-size=2g), raise the file-size limit (ulimit -f), "
            f"{way_out + ', ' if way_out else ''}or set data.num_workers=0 (no worker processes, "
            "no shared memory)") from None
