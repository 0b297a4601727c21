"""Naming where captions came from, to key similarity caches by their caption source.

A captions file (`tgmae.captions.store`) has one record per video: `video_id`, `captions`,
`source` (captioner, oracle, vision-free, synthetic, ...) and `model`. A similarity cache is keyed
by the distinct (source, model) pairs of the file it was built from; each cached video also keeps
its caption texts, so a video whose captions changed since is recomputed on resume, and a sample
whose caption is not among its video's cached captions is refused at training time.
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


__all__ = ["caption_source_of", "file_sha256"]
