"""Atomic file writes: write a temp file next to the target, then rename it over the target.

A reader (another worker, a resumed run) sees the old file or the new one, never a torn one; a
write that fails leaves no temp file behind. Temp names are `.{name}.{pid}-{random}.tmp` in the
target's folder (same filesystem, so the rename is atomic; unique per thread and process).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path for the caller to write; on a clean exit rename it over `path`.

    fsync: flush the temp file to disk before the rename (files a crash must not lose).
    Creates `path`'s folder. On an exception the temp file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
