"""Frame access for video files (PyAV) and frame folders, behind one API.

`probe_video(path) -> VideoInfo`; `read_frames(path, frame_indices) -> uint8 [T, H, W, 3]`;
`read_motion_vectors(path, frame_indices) -> list of [Hb, Wb, 2] float32 or None (I-frames)`.
`VideoReader` opens once and does all three, which is what the Dataset uses.

Frame i is the i-th frame in presentation order. For files the frame table is the sorted pts of
the demuxed video packets (exact under variable frame rate; 1-9 ms per 300-frame video); a file
holding fewer frames than its header declares is reported as truncated. A read seeks to the last
keyframe at or before the first wanted frame and decodes forward only up to the last wanted
one; unwanted frames that nothing references are skipped by the decoder (`skip_frame=NONREF`)
and only wanted frames are converted to RGB. Rotation metadata is applied, so frames come out
upright. A frame folder is a directory of images: EPIC-style `frame_0000000001.jpg` (1-based,
opened by name, counted by binary search without listing) or any naturally sorted image files.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tgmae.data.motion_vectors import block_motion

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_EPIC_NAME = "frame_{:010d}.jpg"  # EPIC-Kitchens RGB frames, 1-based


class VideoError(RuntimeError):
    """A video or frame folder cannot be read (missing, empty, corrupt, truncated, too short)."""


@dataclass
class VideoInfo:
    """What a video holds. `width`/`height` are after rotation (as frames are returned) once
    `rotation` is known: `probe_video` decodes the first frame for it; `VideoReader.info` alone
    only demuxes, and learns the rotation at the first read."""

    num_frames: int
    fps: float  # average frames per second (0 when unknown)
    width: int
    height: int
    rotation: int = 0  # display rotation, degrees counter-clockwise, applied to returned frames
    duration: float = 0.0  # seconds
    codec: str = ""  # decoder name, "image" for frame folders
    is_frame_folder: bool = False
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (files) frame indices
    pts: Optional[np.ndarray] = None  # [num_frames] int64 presentation timestamps (files)


def is_frame_folder(path: str | Path) -> bool:
    return os.path.isdir(path)


class VideoReader:
    """One open video file or frame folder. Use as a context manager.

    threads: decoder threads (0 = FFmpeg's choice); thread_type "AUTO" (frame + slice),
      "SLICE" or "NONE". For many DataLoader workers on few cores, 1 thread per worker is the
      fastest total throughput (see docs/benchmarks.md); that is the default.
    info: a `VideoInfo` from an earlier probe of the same file (skips the frame-table demux).
    """

    def __init__(self, path: str | Path, *, threads: int = 1, thread_type: str = "NONE",
                 info: Optional[VideoInfo] = None):
        self.path = str(path)
        self.threads = threads
        self.thread_type = thread_type
        self._folder: Optional[_FrameFolder] = None
        self._container = None
        self._info: Optional[VideoInfo] = info  # a cached probe of this same file skips the demux
        self._rotation_known = False
        self.frames_decoded = 0  # frames the decoder produced so far (skipped ones excluded)
        if os.path.isdir(self.path):
            self._folder = _FrameFolder(self.path)
            return
        if not os.path.exists(self.path):
            raise VideoError(f"{self.path}: file not found")
        if os.path.getsize(self.path) == 0:
            raise VideoError(f"{self.path}: zero-byte file")
        import av

        try:
            self._container = av.open(self.path, metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoError(f"{self.path}: cannot open ({e})") from None
        if not self._container.streams.video:
            self.close()
            raise VideoError(f"{self.path}: no video stream")
        self._stream = self._container.streams.video[0]
        cc = self._stream.codec_context
        if threads != 1 or thread_type != "NONE":
            cc.thread_type = thread_type
            cc.thread_count = threads
        self._motion_enabled = False

    # ---------------------------------------------------------------- context management
    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- probing
    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            self._info = self._folder.info() if self._folder else self._probe_file()
        return self._info

    def _probe_file(self) -> VideoInfo:
        import av

        s = self._stream
        pts, keys = [], []
        try:
            for pkt in self._container.demux(s):
                if pkt.size == 0 or pkt.is_discard:
                    continue
                t = pkt.pts if pkt.pts is not None else pkt.dts
                pts.append(-1 if t is None else t)
                keys.append(pkt.is_keyframe)
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: truncated or corrupt after {len(pts)} packets ({e})") from None
        if not pts:
            raise VideoError(f"{self.path}: no video frames")
        self._check_complete(pts)
        p = np.asarray(pts, np.int64)
        k = np.asarray(keys, bool)
        if (p < 0).any() and (p[p >= 0].size == 0):
            table = None  # no timestamps at all: reads decode sequentially from the start
            keyframes = np.zeros(1, np.int64)
        else:
            order = np.argsort(p, kind="stable")
            table = p[order]
            keyframes = np.flatnonzero(k[order]).astype(np.int64)
            if keyframes.size == 0 or keyframes[0] != 0:
                keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
        rate = s.average_rate or s.guessed_rate
        fps = float(rate) if rate else 0.0
        tb = float(s.time_base) if s.time_base else 0.0
        duration = float(s.duration * tb) if s.duration and tb else (len(p) / fps if fps else 0.0)
        w, h = s.codec_context.width, s.codec_context.height
        return VideoInfo(len(p), fps, w, h, 0, duration, s.codec_context.name, False, keyframes, table)

    def _check_complete(self, pts: list[int]) -> None:
        """Raise when fewer frames exist than the header declares (a cut-off file): frame count
        from the sample table (MP4), else the stream's or single-stream container's duration."""
        s, c = self._stream, self._container
        if s.frames and len(pts) < s.frames:
            raise VideoError(f"{self.path}: truncated: {len(pts)} of {s.frames} declared frames present")
        tb = float(s.time_base) if s.time_base else 0.0
        rate = s.average_rate or s.guessed_rate
        if not tb or not rate or min(pts) < 0:
            return
        declared = float(s.duration * tb) if s.duration else (
            c.duration / 1e6 if c.duration and len(c.streams) == 1 else 0.0)
        covered = (max(pts) - min(pts)) * tb + 1 / float(rate)
        if declared > 0 and covered < 0.9 * declared - 1 / float(rate):
            raise VideoError(f"{self.path}: truncated: frames cover {covered:.2f} s of {declared:.2f} s declared")

    def probe_rotation(self) -> VideoInfo:
        """Fill `info.rotation` (and rotated width/height) from the first decoded frame."""
        info = self.info
        if self._folder is None and not self._rotation_known:
            import av

            try:
                self._container.seek(0, stream=self._stream, backward=True)
                for frame in self._container.decode(self._stream):
                    self._set_rotation(frame)
                    break
            except av.FFmpegError as e:
                raise VideoError(f"{self.path}: cannot decode the first frame ({e})") from None
        return info

    def _set_rotation(self, frame) -> None:
        if self._rotation_known:
            return
        info = self.info
        info.rotation = int(round(frame.rotation or 0)) % 360
        turned = info.rotation in (90, 270)
        info.width, info.height = (frame.height, frame.width) if turned else (frame.width, frame.height)
        self._rotation_known = True

    # ---------------------------------------------------------------- reading
    def read(self, frame_indices: Sequence[int], *, with_motion: bool = False):
        """uint8 [T, H, W, 3] for `frame_indices` (any order, repeats allowed).

        With `with_motion`, returns (frames, motion) where motion is a list of [Hb, Wb, 2]
        float32 per-16x16-block forward displacement (dx, dy) in pixels, None for I-frames.
        """
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("frame_indices is empty")
        info = self.info
        if idx.min() < 0 or idx.max() >= info.num_frames:
            raise VideoError(
                f"{self.path}: frame indices {int(idx.min())}..{int(idx.max())} outside 0..{info.num_frames - 1}"
            )
        if self._folder is not None:
            if with_motion:
                raise VideoError(f"{self.path}: frame folders carry no codec motion vectors")
            return self._folder.read(idx)
        wanted = np.unique(idx)
        got, motion = self._decode(wanted, with_motion)
        frames = np.stack([got[int(i)] for i in idx])
        if not with_motion:
            return frames
        return frames, [motion.get(int(i)) for i in idx]

    def _decode(self, wanted: np.ndarray, with_motion: bool) -> tuple[dict, dict]:
        import av

        info = self.info
        s = self._stream
        if with_motion and not self._motion_enabled:
            s.codec_context.flags2 |= av.codec.context.Flags2.export_mvs
            self._motion_enabled = True
        first, last = int(wanted[0]), int(wanted[-1])
        want = set(wanted.tolist())
        # keyframe at or before `first`; if decoding starts late (open GOP, bad index), back off
        k = int(np.searchsorted(info.keyframes, first, side="right")) - 1
        while True:
            start = int(info.keyframes[max(k, 0)])
            got, motion, first_seen = self._decode_from(start, first, last, want, with_motion)
            if first_seen is not None and first_seen <= first or k <= 0:
                break
            k -= 1
        missing = want - got.keys()
        if missing:
            raise VideoError(
                f"{self.path}: could not decode frames {sorted(missing)[:5]} of {info.num_frames} "
                "(truncated or corrupt)"
            )
        return got, motion

    def _decode_from(self, start: int, first: int, last: int, want: set, with_motion: bool):
        """Seek to frame `start` (a keyframe), decode forward until `last` is out.

        Packets of unwanted frames are decoded with `skip_frame=NONREF`: a frame nothing else
        references is dropped by the decoder, which cannot change any other frame (about 45% of
        x264's frames). Frames are placed by pts in the frame table.
        """
        import av

        info, s, c = self.info, self._stream, self._container
        cc = s.codec_context
        table = info.pts
        got: dict[int, np.ndarray] = {}
        motion: dict[int, Optional[np.ndarray]] = {}
        pos, first_seen, done = -1, None, False
        skip_state = "DEFAULT"
        try:
            if table is not None and start > 0:
                c.seek(int(table[start]), stream=s, backward=True, any_frame=False)
            else:
                c.seek(0, stream=s, backward=True) if table is not None else c.seek(0)
            for pkt in c.demux(s):
                if table is not None and pkt.pts is not None:
                    j = int(np.searchsorted(table, pkt.pts))
                    wanted = not (j < len(table) and table[j] == pkt.pts) or j in want
                    state = "DEFAULT" if wanted else "NONREF"
                    if state != skip_state:
                        cc.skip_frame = skip_state = state
                for frame in pkt.decode():
                    self.frames_decoded += 1
                    if table is not None and frame.pts is not None:
                        j = int(np.searchsorted(table, frame.pts))
                        pos = j if j < len(table) and table[j] == frame.pts else pos + 1
                    else:
                        pos = pos + 1 if first_seen is not None else (start if table is not None else 0)
                    if first_seen is None:
                        first_seen = pos
                        self._set_rotation(frame)
                    if pos in want and pos not in got:
                        got[pos] = _to_rgb(frame, info.rotation)
                        if with_motion:
                            motion[pos] = block_motion(frame, info.rotation)
                    if pos >= last:
                        done = True
                        break
                if done:
                    break
        except av.FFmpegError as e:
            if want - got.keys():
                raise VideoError(f"{self.path}: decode error ({e})") from None
        finally:
            if skip_state != "DEFAULT":
                cc.skip_frame = "DEFAULT"
        return got, motion, first_seen


def _to_rgb(frame, rotation: int) -> np.ndarray:
    arr = frame.to_ndarray(format="rgb24")
    if rotation:
        arr = np.ascontiguousarray(np.rot90(arr, k=rotation // 90))
    return arr


class _FrameFolder:
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

    def info(self) -> VideoInfo:
        """Frame count and size. EPIC-style folders are counted without listing (they can hold
        100k frames): exponential then binary search for the last `frame_%010d.jpg` present."""
        from PIL import Image

        if self.epic:
            n = self._epic_count()
        else:
            n = len(self.files())
            if not n:
                raise VideoError(f"{self.path}: frame folder holds no images")
        first = os.path.join(self.path, self._name(0))
        try:
            with Image.open(first) as im:  # reads the header only
                w, h = im.size
        except (OSError, ValueError) as e:
            raise VideoError(f"{first}: cannot read frame image ({e})") from None
        return VideoInfo(n, 0.0, w, h, 0, 0.0, "image", True, np.zeros(0, np.int64), None)

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


def write_video(path: str | Path, frames: np.ndarray, fps: float = 30, *, codec: str = "libx264",
                gop: int = 30, crf: int = 23, rotation: int = 0, bframes: Optional[int] = None) -> None:
    """Encode uint8 [T, H, W, 3] RGB frames to a video file (tests, benchmarks, figures).

    gop: keyframe interval (fixed: no scene-cut keyframes); rotation: display-matrix rotation in
    degrees counter-clockwise stored in the container; bframes: x264 B-frames (None = default).
    """
    import av
    from fractions import Fraction

    frames = np.asarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height = w, h
        odd = bool(w % 2 or h % 2)  # x264 4:2:0 needs even sides; odd sizes are stored 4:4:4
        s.pix_fmt = "yuv444p" if odd and codec == "libx264" else "yuv420p"
        s.codec_context.gop_size = gop
        if codec == "libx264":
            opts = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "crf": str(crf),
                    "preset": "veryfast"}
            if bframes is not None:
                opts["bf"] = str(bframes)
            s.options = opts
        if rotation:
            s.set_display_rotation(rotation)
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps, size (after rotation), rotation, duration, codec of a file or folder."""
    with VideoReader(path) as r:
        return r.probe_rotation()


def read_frames(path: str | Path, frame_indices: Sequence[int], **reader_kw) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames at `frame_indices` (repeats give duplicates)."""
    with VideoReader(path, **reader_kw) as r:
        return r.read(frame_indices)


def read_motion_vectors(path: str | Path, frame_indices: Sequence[int]) -> list[Optional[np.ndarray]]:
    """Per index: [Hb, Wb, 2] float32 block motion (dx, dy) in pixels from the codec; None on
    I-frames. Hb, Wb = ceil(H / 16), ceil(W / 16) of the (rotated) frame."""
    with VideoReader(path) as r:
        return r.read(frame_indices, with_motion=True)[1]


__all__ = ["VideoInfo", "VideoReader", "VideoError", "probe_video", "read_frames",
           "read_motion_vectors", "write_video", "is_frame_folder", "IMAGE_EXTS"]
