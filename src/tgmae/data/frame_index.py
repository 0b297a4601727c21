"""The frame index of a video file: which frames it presents, built by decoding it once.

Frame i is the i-th frame of PyAV's decode sorted (stably) by `frame.pts`; container tables are
not trusted (AVI B-frame order and "not coded" placeholders, headers counting time slots, MP4
packets that present nothing). `build_index` decodes every packet (no RGB, no deblocking) and
records each frame's pts, keyframe flag and decode position, plus the verdict (`VideoError.kind`).
Cached per file by (real path, `tgmae.data.fileid` identity): in memory (LRU) and under
`$TGMAE_CACHE_DIR/frame_index` (default `$XDG_CACHE_HOME/tgmae` or `~/.cache/tgmae`; `off`: memory
only); an entry is used only when its key matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from tgmae.atomic import atomic_path
from tgmae.data.fileid import file_identity
from tgmae.data.keyed_cache import KeyedCache
from tgmae.user_cache import cache_root

log = logging.getLogger(__name__)

INDEX_VERSION = 3  # bump when frame numbering or the stored index changes (clip caches key on it)
_MEMORY_ENTRIES = 4096
_memory: "KeyedCache[tuple, FrameIndex]" = KeyedCache(_MEMORY_ENTRIES)
_disk_warned = False

# What is wrong with a file (VideoError.kind); "" = usable.
# bad_frame_folder: a frame folder that is not one numbered sequence (tgmae.data.frame_folder)
KINDS = ("missing", "zero_bytes", "unreadable", "no_video_stream", "no_frames", "truncated", "undecodable",
         "bad_frame_folder")


class VideoError(RuntimeError):
    """A video or frame folder cannot be read. `kind` names what happened (one of `KINDS`, or
    "out_of_range" / "too_short" for requests the video cannot satisfy)."""

    def __init__(self, message: str, kind: str = "undecodable"):
        super().__init__(message)
        self.kind = kind


def record_frame_range(path: str, start_frame: Optional[int], end_frame: Optional[int],
                       num_frames: int) -> tuple[int, int]:
    """[start, end) of an annotated range (0-based, end exclusive; None = the file's start / end)
    in a video of `num_frames` frames. A range reaching past the last frame is never clipped to the
    frames there: VideoError kind "out_of_range" naming the range and the video's frames (the
    dataset, `data check` and feature extraction report it as they report an unreadable video)."""
    start = max(start_frame or 0, 0)
    end = num_frames if end_frame is None else end_frame
    if end > num_frames or (start_frame is not None and start >= num_frames):
        asked = f"frames [{start}, {end})" if end_frame is not None else f"from frame {start}"
        raise VideoError(f"{path}: {asked} beyond the video's {num_frames} frames", "out_of_range")
    return start, end


def plain(err: BaseException) -> str:
    """An error's message without the file name FFmpeg / OSError append (the caller names it)."""
    if getattr(err, "filename", None) and getattr(err, "strerror", None):
        return str(err.strerror)
    return str(err) or type(err).__name__


def error_text(path, err: BaseException) -> str:
    """One line for a video that failed: the path once, then what happened (the kind once).
    A VideoError's message already starts with its path; other errors get it prefixed."""
    msg = plain(err)
    return msg if msg.startswith(f"{path}:") else f"{path}: {msg}"


def error_detail(path, err: BaseException) -> str:
    """`error_text` without the leading path (for reports that show the path in its own field)."""
    return error_text(path, err)[len(str(path)) + 2:]


@dataclass
class FrameIndex:
    """Frames a file presents. pts: int64 [N] sorted presentation time stamps (stream time base);
    key: bool [N] keyframe flag per frame; rank: int64 [N] sorted position of the m-th decoded
    frame. exact_pts: pts are present and unique, so decoded frames can be placed (and checked)
    by pts after a seek; otherwise reads decode from the start and place frames by `rank`.
    aligned: frames came out in pts order and every non-empty packet's pts is a frame's pts and
    vice versa (one frame per packet), so a packet can be skipped by its pts (an XviD AVI is not). kind / reason: the verdict ("" = usable)."""

    pts: np.ndarray
    key: np.ndarray
    rank: np.ndarray
    exact_pts: bool
    aligned: bool
    width: int
    height: int
    rotation: int  # degrees counter-clockwise
    fps: float
    duration: float  # seconds
    codec: str
    kind: str = ""
    reason: str = ""

    @property
    def num_frames(self) -> int:
        return int(len(self.pts))

    @property
    def keyframes(self) -> np.ndarray:
        """Positions decoding can start from: keyframes, and always 0 (the start of the file)."""
        k = np.flatnonzero(self.key).astype(np.int64)
        return k if k.size and k[0] == 0 else np.concatenate([[0], k]).astype(np.int64)

    def position(self, pts: Optional[int]) -> int:
        """Frame position of a decoded frame's pts, -1 when no frame has it."""
        if pts is None:
            return -1
        j = int(np.searchsorted(self.pts, pts))
        return j if j < len(self.pts) and int(self.pts[j]) == pts else -1


def build_index(path: str) -> FrameIndex:
    """Decode `path` once -> its FrameIndex (verdict included; raises VideoError only when the
    file cannot be opened or has no video stream)."""
    import av

    try:
        c = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: cannot open as a video ({plain(e)})", "unreadable") from None
    with c:
        fmt = c.format.name
        if not c.streams.video:
            raise VideoError(f"{path}: no video stream", "no_video_stream")
        s = c.streams.video[0]
        s.codec_context.options = {"skip_loop_filter": "all"}  # pixels are not kept here
        pts: list = []
        keys: list[bool] = []
        pkt_pts: list = []
        bad: list[int] = []  # coded packets (decode order, from 0) that failed to decode
        first = None
        demux_error = ""
        it = c.demux(s)
        while True:
            try:
                pkt = next(it)
            except StopIteration:
                break
            except (av.FFmpegError, OSError) as e:
                demux_error = plain(e)
                break
            if pkt.size == 0 and pkt.pts is not None:
                continue  # an empty time slot (AVI): nothing to decode; never send it (it drains)
            if pkt.size:
                pkt_pts.append(pkt.pts)
            try:
                frames = pkt.decode()
            except av.FFmpegError:
                bad.append(len(pkt_pts) - 1)
                continue
            for f in frames:
                if first is None:
                    first = f
                pts.append(f.pts)
                keys.append(bool(f.key_frame))
        rate = s.average_rate or s.guessed_rate
        fps = float(rate) if rate else 0.0
        tb = float(s.time_base) if s.time_base else 0.0
        declared = float(s.duration * tb) if s.duration and tb else (
            c.duration / 1e6 if c.duration and len(c.streams) == 1 else 0.0)
        declared_frames = int(s.frames or 0)  # AVI: time slots in the header; MP4: samples in the table
        # an AVI cut short loses its index: stream.duration shrinks to the packets left (in time
        # slots), while the header's slot count stays
        avi_slots = int(s.duration or 0) if fmt == "avi" and tb and fps and abs(tb * fps - 1) < 1e-6 else 0
        if declared_frames and fps:
            declared = max(declared, declared_frames / fps)
        codec = s.codec_context.name
        w, h = s.codec_context.width, s.codec_context.height
    n = len(pts)
    have_pts = n > 0 and all(p is not None for p in pts)
    p = np.asarray(pts if have_pts else range(n), np.int64)
    order = np.argsort(p, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    sorted_pts = p[order]
    exact = have_pts and bool(np.all(np.diff(sorted_pts) > 0))
    in_order = bool(np.all(np.diff(p) > 0)) if exact else False  # frames came out in pts order
    aligned = in_order and None not in pkt_pts and sorted(pkt_pts) == sorted_pts.tolist()
    rotation = int(round(first.rotation or 0)) % 360 if first is not None else 0
    if first is not None:
        w, h = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
    duration = declared or (n / fps if fps else 0.0)
    idx = FrameIndex(sorted_pts, np.asarray(keys, bool)[order], rank, exact, aligned, w, h, rotation,
                     fps, duration, codec)
    sample_table = fmt.startswith("mov")  # MP4 / MOV: stream.frames counts the samples stored
    idx.kind, idx.reason = _verdict(idx, bad, pkt_pts, demux_error, tb, fps, declared, declared_frames,
                                    sample_table, avi_slots)
    return idx


_TAIL_PACKETS = 2  # decode errors only this close to the end of a file cut short = truncation


def _verdict(idx: FrameIndex, bad: list[int], pkt_pts: list, demux_error: str, tb: float, fps: float,
             declared: float, declared_frames: int, sample_table: bool, avi_slots: int = 0) -> tuple[str, str]:
    """(kind, reason) of a decoded file; the reason names what happened, without the path.

    Truncated: the frames' time stamps stop well short of the declared duration (an AVI's header
    slot count / fps, or the stream duration), or an MP4 yields fewer packets than its sample table
    holds, or an AVI's index ends before its header's slot count. Variable frame rate (few frames spread over the declared time) covers it and is fine.
    A decode error only in the last packets of a truncated file is part of the truncation."""
    n, npk = idx.num_frames, len(pkt_pts)
    of = f" of {declared_frames} declared" if declared_frames else ""
    if demux_error:
        return "truncated", f"truncated or corrupt: reading stopped after {n}{of} frames ({demux_error})"
    short = ""
    if sample_table and declared_frames and npk < declared_frames:
        short = f"{npk} of {declared_frames} declared packets present"
    elif avi_slots and declared_frames and avi_slots < declared_frames - 1:
        short = f"the file ends at time slot {avi_slots} of {declared_frames}"
    elif idx.exact_pts and tb and fps and declared > 0 and n:
        # a file whose frames stop well before its declared duration was cut off
        covered = float(idx.pts[-1] - idx.pts[0]) * tb + 1 / fps
        if covered < 0.9 * declared - 1 / fps:
            short = f"frames cover {covered:.2f} s of {declared:.2f} s declared"
    where = sorted(set(bad))
    if short and (not where or where[0] >= npk - _TAIL_PACKETS):
        return "truncated", f"truncated: {n}{of} frames present ({short})"
    if where:
        more = f" and {len(where) - 10} more" if len(where) > 10 else ""
        also = f"; also truncated ({short})" if short else ""
        return "undecodable", (f"undecodable frames at {where[:10]}{more} (coded frames in decode order, "
                               f"from 0) of {npk}{also}")
    if n == 0:
        return "no_frames", "no video frames"
    return "", ""


# ---------------------------------------------------------------- caching
def _key(path: str) -> tuple:
    return (os.path.realpath(path), *file_identity(path))


def cache_dir() -> Optional[Path]:
    """Folder of the on-disk index cache, None when disabled (`TGMAE_CACHE_DIR=off`)."""
    root = cache_root()
    return None if root is None else root / "frame_index"


def _entry_file(key: tuple) -> Optional[Path]:
    d = cache_dir()
    if d is None:
        return None
    h = hashlib.sha1(json.dumps([INDEX_VERSION, *key]).encode()).hexdigest()
    return d / h[:2] / f"{h}.npz"


def _load(f: Path, key: tuple) -> Optional[FrameIndex]:
    try:
        with np.load(f, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.pop("key") != [INDEX_VERSION, *key]:
                return None
            return FrameIndex(z["pts"], z["key"], z["rank"], **meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or foreign entry: re-index


def _save(f: Path, key: tuple, idx: FrameIndex) -> None:
    global _disk_warned
    meta = {k: v for k, v in asdict(idx).items() if k not in ("pts", "key", "rank")}
    meta["key"] = [INDEX_VERSION, *key]
    try:
        with atomic_path(f) as tmp, open(tmp, "wb") as out:  # concurrent workers never see half an entry
            np.savez(out, pts=idx.pts, key=idx.key, rank=idx.rank, meta=np.array(json.dumps(meta)))
    except OSError as e:
        if not _disk_warned:
            _disk_warned = True
            log.warning("frame index cache %s not writable (%s): indexes kept in memory only", f.parent, e)


def frame_index(path: str) -> FrameIndex:
    """The FrameIndex of a video file, from the memory or disk cache or by decoding it once."""
    try:
        key = _key(path)
    except OSError:
        raise VideoError(f"{path}: file not found", "missing") from None
    hit = _memory.get(key)
    if hit is not None:
        return hit
    f = _entry_file(key)
    idx = _load(f, key) if f is not None and f.exists() else None
    if idx is None:
        idx = build_index(path)
        if f is not None:
            _save(f, key, idx)
    _memory.put(key, idx)
    return idx


def cached_frame_index(path: str) -> Optional[FrameIndex]:
    """The FrameIndex of a video file when the memory or disk cache holds it, else None (never
    decodes: for cheap questions such as `tgmae.data.lengths`)."""
    try:
        key = _key(path)
    except OSError:
        return None
    hit = _memory.get(key)
    if hit is not None:
        return hit
    f = _entry_file(key)
    return _load(f, key) if f is not None and f.exists() else None


def forget(path: str) -> None:
    """Drop a file's cached index (memory and disk), e.g. when a read contradicts it."""
    try:
        key = _key(path)
    except OSError:
        return
    _memory.pop(key)
    f = _entry_file(key)
    if f is not None:
        try:
            f.unlink()
        except OSError:
            pass
