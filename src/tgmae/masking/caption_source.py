"""Naming where captions came from, to key similarity caches by their caption source: the
distinct (source, model) pairs of the captions file (`tgmae.captions.store`) they were built from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable


def caption_source_of(records: Iterable) -> str:
    """Caption records (`.source`, `.model`) -> "source=S,model=M[;...]" sorted, distinct."""
    pairs = {f"source={r.source},model={r.model}" for r in records}
    return ";".join(sorted(pairs))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
