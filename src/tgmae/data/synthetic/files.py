"""Writers for the set's files: H.264 mp4 (PyAV), mask npz, and text written atomically.

Every writer writes a temporary file next to the target and renames it into place, so a killed
run never leaves a half-written file under a final name. Mask archives carry fixed zip
timestamps, so the same masks give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import zipfile
from os import PathLike
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from tgmae.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from tgmae.data.video import x264_reproducible

CSV_HEADER = ("path", "label", "caption", "video_id")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def csv_text(rows: Iterable[tuple[str, int, str, str]]) -> str:
    """`path,label,caption,video_id` CSV text (RFC 4180 quoting, \\n line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: Path, rows: Iterable[tuple[str, int, str, str]]) -> None:
    """`csv_text(rows)` written atomically to `path`."""
    atomic_write_text(path, csv_text(rows))


def write_masks(path: Path, masks: np.ndarray, boxes: np.ndarray) -> None:
    """npz with `masks` bool [T, H, W] and `boxes` int16 [T, 4]; deflated, deterministic bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in (("masks", masks), ("boxes", boxes)):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_mp4(path: Path, frames: np.ndarray, fps: int, gop: int, crf: int = 18) -> None:
    """Encode uint8 [T, H, W, 3] RGB frames as H.264 (libx264, yuv420p) in an mp4.

    Closed GOPs of exactly `gop` frames (no scene-cut keyframes, no B-frames): every frame that
    is not a GOP start is a P-frame carrying motion vectors. One encoder thread, and no x264
    AVX-512 code (`x264_reproducible`, re-trial 29A S1), keep the bitstream the same on every run.
    """
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"frame size {w}x{h}: yuv420p needs even sides")
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = x264_reproducible({
            "preset": "veryfast",
            "crf": str(crf),
            "threads": "1",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        })
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def mp4_ok(path: str | PathLike, frames: int, size: int) -> bool:
    """Whether `path` holds what `write_mp4` writes for a set of `frames` frames at `size` x `size`:
    readable, one video stream of that size with `frames` packets (demuxed, not decoded). False
    for a missing, truncated or unreadable file, or one of another size or length."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if (stream.codec_context.width, stream.codec_context.height) != (size, size):
                return False
            return sum(1 for packet in container.demux(stream) if packet.size) == frames
    except (OSError, ValueError, IndexError, av.error.FFmpegError):
        return False


def masks_ok(path: str | PathLike, frames: int, size: int) -> bool:
    """Whether `path` holds what `write_masks` writes for `frames` frames at `size` x `size`:
    `masks` bool [frames, size, size] and `boxes` int16 [frames, 4]. False for a missing or
    damaged file, or one of other shapes."""
    try:
        with np.load(path) as z:
            masks, boxes = z["masks"], z["boxes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
    return (masks.dtype == bool and masks.shape == (frames, size, size) and boxes.dtype == np.int16
            and boxes.shape == (frames, 4))
