"""A frame folder: a directory of frame images read as a video (Pillow).

EPIC-style `frame_0000000001.jpg` (1-based, opened by name, counted by binary search without
listing) or any naturally sorted image files. `tgmae.data.video.VideoReader` uses it for folders.
"""

from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from tgmae.data.frame_index import VideoError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EPIC_NAME = "frame_{:010d}.jpg"  # EPIC-Kitchens RGB frames, 1-based


class FrameFolder:
    """A directory of frame images, read with Pillow."""

    def __init__(self, path: str):
        self.path = path
        self.epic = os.path.exists(os.path.join(path, _EPIC_NAME.format(1)))
        self._files: Optional[list[str]] = None

    def files(self) -> list[str]:
        if self._files is None:
            names = [n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_EXTS)]
            self._files = sorted(names, key=_natural_key)
        return self._files

    def info(self) -> tuple[int, int, int]:
        """(frames, width, height). EPIC-style folders are counted without listing (they can hold
        100k frames): exponential then binary search for the last `frame_%010d.jpg` present."""
        from PIL import Image

        if self.epic:
            n = self._epic_count()
        else:
            n = len(self.files())
            if not n:
                raise VideoError(f"{self.path}: frame folder holds no images", "no_frames")
        first = os.path.join(self.path, self._name(0))
        try:
            with Image.open(first) as im:  # reads the header only
                w, h = im.size
        except (OSError, ValueError) as e:
            raise VideoError(f"{first}: cannot read frame image ({e})") from None
        return n, w, h

    def _epic_count(self) -> int:
        def has(k: int) -> bool:  # 1-based frame number k exists
            return os.path.exists(os.path.join(self.path, _EPIC_NAME.format(k)))

        hi = 1
        while has(hi * 2):
            hi *= 2
        lo, hi = hi, hi * 2  # has(lo), not has(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if has(mid) else (lo, mid)
        return lo

    def _name(self, i: int) -> str:
        return _EPIC_NAME.format(i + 1) if self.epic else self.files()[i]

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image

        p = os.path.join(self.path, self._name(i))
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise VideoError(f"{p}: cannot read frame image ({e})") from None

    def read(self, idx: np.ndarray) -> np.ndarray:
        uniq = {int(i): self._load(int(i)) for i in np.unique(idx)}
        shapes = {a.shape for a in uniq.values()}
        if len(shapes) > 1:
            raise VideoError(f"{self.path}: frames differ in size {sorted(shapes)}")
        return np.stack([uniq[int(i)] for i in idx])


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
