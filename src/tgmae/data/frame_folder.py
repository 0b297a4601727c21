"""A frame folder: a directory of frame images read as a video (Pillow).

Its frames are one numbered sequence of one extension: `<prefix><number><ext>` (EPIC-Kitchens'
`frame_0000000001.jpg`, `img_00001.jpg`, `00001.png`, unpadded `1.jpg`), numbered from 0 or 1
without a gap; frame i is the i-th by number. A folder that is not one such sequence is refused
when opened (VideoError kind "bad_frame_folder", naming the files): images under two extensions or
prefixes (`00001.jpg` + `00001.png`), a number held twice (`1.jpg`, `01.jpg`), an image that is not
a numbered frame (`cover.jpg`), a missing frame; otherwise a reader would silently read other
frames than the ones asked for. Files that are not images (`notes.txt`), hidden files
(`.DS_Store`, `._00001.jpg`) and optical-flow images beside the RGB ones (mmaction's rawframes:
`flow_x_00001.jpg` beside `img_00001.jpg`) are not frames. Opening lists the folder once; the listing is kept per
folder (by the folder's stat, which any file added, removed or renamed changes), so a clip read
costs no listing of a 100k-frame EPIC folder. `tgmae.data.video.VideoReader` uses it for folders.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from tgmae.data.frame_index import VideoError
from tgmae.data.keyed_cache import KeyedCache

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FLOW_PREFIX = "flow"  # optical-flow images (flow_x_00001.jpg) kept beside the RGB frames: not frames
BAD = "bad_frame_folder"  # VideoError.kind of a folder that is not one numbered sequence
_FRAME = re.compile(r"(.*?)(\d+)(\.[^.]+)", re.S)  # prefix, frame number, extension
_SHOWN = 3  # file names a refusal shows of each list
_LISTINGS = 4096  # folders whose listing is kept (a listing is a few numbers, or its names when irregular)
_RACY_NS = 2_000_000_000  # a folder changed this recently may change again within its stat's resolution
_listings: "KeyedCache[tuple, Union[Frames, VideoError]]" = KeyedCache(_LISTINGS)


@dataclass(frozen=True)
class Frames:
    """A folder's frames in number order: `prefix` + number (zero-padded to `width` digits) + `ext`
    for numbers start..start+count-1; `names` when the padding is irregular (names by position)."""

    prefix: str
    ext: str
    width: int
    start: int
    count: int
    names: Optional[tuple[str, ...]] = None

    def name(self, i: int) -> str:
        """File name of frame i (0-based position)."""
        if self.names is not None:
            return self.names[i]
        return f"{self.prefix}{self.start + i:0{self.width}d}{self.ext}"


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def parse_frames(path: str, names: list[str]) -> Frames:
    """The frame sequence of a folder holding image files `names` (hidden and non-image files
    already left out). Raises VideoError: kind "no_frames" for none, "bad_frame_folder" naming the
    files for anything but one numbered sequence of one extension from 0 or 1 without a gap."""
    if not names:
        raise VideoError(f"{path}: frame folder holds no images", "no_frames")
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    stray = []
    for n in names:
        m = _FRAME.fullmatch(n)
        if m is None:
            stray.append(n)
        else:
            groups.setdefault((m[1], m[3]), []).append((int(m[2]), n))
    if stray:
        one = len(stray) == 1
        like = f" like {min(min(g) for g in groups.values())[1]}" if groups else ""
        what = "is not a numbered frame" if one else "are not numbered frames"
        raise VideoError(f"{path}: {_shown(sorted(stray))} {what}{like}; a frame folder holds one numbered "
                         f"sequence of images (move {'it' if one else 'them'} out)", BAD)
    rgb = {k: g for k, g in groups.items() if not k[0].lower().startswith(FLOW_PREFIX)}
    if rgb and len(rgb) < len(groups):  # mmaction's rawframes: img_ frames beside flow_x_ / flow_y_ ones
        groups = rgb
    if len(groups) > 1:
        firsts = sorted(min(g)[1] for g in groups.values())
        raise VideoError(f"{path}: frames of {len(groups)} numbered sequences or extensions ({_shown(firsts)}); "
                         "a frame folder holds one numbered sequence of one extension", BAD)
    (prefix, ext), frames = next(iter(groups.items()))
    frames.sort()
    width = len(frames[0][1]) - len(prefix) - len(ext)

    def named(k: int) -> str:
        return f"{prefix}{k:0{width}d}{ext}"

    nums = [k for k, _ in frames]
    twice = [f"{a} and {b} (frame {k})" for (k, a), (j, b) in zip(frames, frames[1:]) if k == j]
    if twice:
        raise VideoError(f"{path}: frame numbers held twice: {_shown(twice)}", BAD)
    if nums[0] > 1:
        raise VideoError(f"{path}: {named(1)} missing (the folder's frames start at {frames[0][1]})", BAD)
    gone = [named(k) for a, b in zip(nums, nums[1:]) for k in range(a + 1, min(b, a + 1 + _SHOWN + 1))]
    if gone:
        n_gone = nums[-1] - nums[0] + 1 - len(nums)
        more = f" and {n_gone - _SHOWN} more" if n_gone > _SHOWN else ""
        raise VideoError(f"{path}: {', '.join(gone[:_SHOWN])}{more} missing (the folder's frames run from "
                         f"{frames[0][1]} to {frames[-1][1]})", BAD)
    regular = all(n == named(k) for k, n in frames)
    return Frames(prefix, ext, width, nums[0], len(nums), None if regular else tuple(n for _, n in frames))


def _list(path: str) -> Frames:
    names = [e.name for e in os.scandir(path)
             if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTS) and e.is_file()]
    return parse_frames(path, names)


def folder_frames(path: str) -> Frames:
    """The frames of folder `path` (`parse_frames` of its listing), listed once per folder state:
    kept by (real path, the folder's size, mtime, inode, ctime), which adding, removing or renaming
    a file changes. A folder changed in the last 2 s is listed again each time (its mtime may not
    move for a change within the file system's timestamp resolution). Raises VideoError."""
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    except OSError:
        raise VideoError(f"{path}: file not found", "missing") from None
    hit = _listings.get(key)
    if hit is None:
        try:
            hit = _list(path)
        except VideoError as e:
            hit = e
        except OSError as e:
            raise VideoError(f"{path}: cannot list the frame folder ({e.strerror or e})", "unreadable") from None
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            _listings.put(key, hit)
    if isinstance(hit, VideoError):
        raise VideoError(str(hit), hit.kind)
    return hit


class FrameFolder:
    """A directory of frame images, read with Pillow. Raises VideoError at construction when the
    folder is not one numbered sequence (`parse_frames`)."""

    def __init__(self, path: str):
        self.path = path
        self.frames = folder_frames(path)

    def info(self) -> tuple[int, int, int]:
        """(frames, width, height); the size from the first frame's header."""
        from PIL import Image

        first = os.path.join(self.path, self.frames.name(0))
        try:
            with Image.open(first) as im:  # reads the header only
                w, h = im.size
        except (OSError, ValueError) as e:
            raise VideoError(f"{first}: cannot read frame image ({e})") from None
        return self.frames.count, w, h

    def _load(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3] of frame i. Raises VideoError naming the image: kind "zero_bytes" for an
        empty image file, "undecodable" for one Pillow cannot open or decode (truncated, not an image)."""
        from PIL import Image

        p = os.path.join(self.path, self.frames.name(i))
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            if _empty(p):
                raise VideoError(f"{p}: zero-byte frame image", "zero_bytes") from None
            raise VideoError(f"{p}: cannot read frame image ({e})") from None

    def read(self, idx: np.ndarray) -> np.ndarray:
        uniq = {int(i): self._load(int(i)) for i in np.unique(idx)}
        shapes = {a.shape for a in uniq.values()}
        if len(shapes) > 1:
            raise VideoError(f"{self.path}: frames differ in size {sorted(shapes)}")
        return np.stack([uniq[int(i)] for i in idx])

    def check_frames(self, start: int, end: int) -> None:
        """Decode every image of frames [start, end), one at a time, as `read` does (`tgmae data
        check`: a file's frames were all decoded when it was indexed, a folder's are not when opened).
        Raises the VideoError a read of the first failing frame raises, or "undecodable" naming the
        first frame whose size differs from frame `start`'s."""
        first = None
        for i in range(start, end):
            shape = self._load(i).shape
            first = first or shape
            if shape != first:
                raise VideoError(f"{os.path.join(self.path, self.frames.name(i))}: frame size {shape[1]}x{shape[0]} "
                                 f"differs from {self.frames.name(start)}'s {first[1]}x{first[0]}")


def _empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


def frame_names(path: str, frames: Sequence[int]) -> Optional[list[str]]:
    """The file names of frame folder `path`'s frames at positions `frames` (as `folder_frames`
    numbers them): the keyframes a caption was read from (`tgmae.data.fileid.video_stamp`, re-trial
    34A S3); None for a video file, or frames that cannot be named."""
    if not os.path.isdir(path):
        return None
    try:
        seq = folder_frames(path)
        return [seq.name(int(i)) for i in frames]
    except (VideoError, OSError, IndexError):
        return None
