"""Frame access for video files (PyAV) and frame folders, behind one API.

`probe_video(path) -> VideoInfo`; `read_frames(path, frame_indices) -> uint8 [T, H, W, 3]`;
`read_motion_vectors(path, frame_indices) -> list of [Hb, Wb, 2] float32 or None (I-frames)`;
`video_verdict(path) -> Verdict`. `VideoReader` opens once and does all of them.

Frame i of a file is the i-th frame of its decode sorted by pts; `num_frames` counts the frames
present. Both come from the cached frame index (`tgmae.data.frame_index`), which also holds the
verdict, so every caller refuses the same files for the same reason. A read seeks to the keyframe
at or before the first wanted frame and decodes forward, placing frames by pts (backing off a seek
that lands late; a frame the index lacks restarts from the start; a file that decodes unlike its
stale index is re-indexed once); unreferenced unwanted packets are skipped (`skip_frame=NONREF`).
Rotation is applied. A frame folder: one numbered sequence of images (EPIC-style
`frame_0000000001.jpg`, `img_00001.jpg`, `1.png`, ...), frame i the i-th by number; any other folder
is refused by name (`tgmae.data.frame_folder`: kind "bad_frame_folder").
"""

from __future__ import annotations

import functools
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from tgmae.data.frame_folder import FrameFolder
from tgmae.data.frame_index import FrameIndex, VideoError, forget, frame_index, plain
from tgmae.data.motion_vectors import block_motion

log = logging.getLogger(__name__)

_REORDER_PACKETS = 32  # packets decoded past the last wanted frame when frames come out of pts order


@dataclass
class VideoInfo:
    """What a video holds. `width`/`height` are after rotation (as frames are returned)."""

    num_frames: int  # frames present (files: decoded frames)
    fps: float  # average frames per second (0 when unknown)
    width: int
    height: int
    rotation: int = 0  # display rotation, degrees counter-clockwise, applied to returned frames
    duration: float = 0.0  # seconds
    codec: str = ""  # decoder name, "image" for frame folders
    is_frame_folder: bool = False
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (files) frame indices
    pts: Optional[np.ndarray] = None  # [num_frames] int64 presentation timestamps (files)


@dataclass
class Verdict:
    """Whether a video can be used. kind: "ok" or one of `tgmae.data.frame_index.KINDS`."""

    kind: str
    reason: str = ""
    num_frames: int = 0

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def video_verdict(path: str | Path) -> Verdict:
    """The one verdict on a video file or frame folder, as every reader of it sees it: "ok", or
    missing / zero_bytes / unreadable (also "not a regular file (a fifo)", a device: judged by stat,
    never opened) / no_video_stream / no_frames / truncated / undecodable (with the frame
    positions) / bad_frame_folder (a frame folder that is not one numbered sequence, naming the
    files) and the reason."""
    try:
        with VideoReader(path) as r:
            return Verdict("ok", "", r.info.num_frames)
    except VideoError as e:
        return Verdict(e.kind, str(e))


_FILE_KINDS = ((stat.S_ISFIFO, "a fifo"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _file_kind(mode: int) -> str:
    """What a path that is neither a regular file nor a folder is, in words (re-trial 31A M3:
    /dev/zero and a fifo were called zero-byte files)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


class VideoReader:
    """One open video file or frame folder. Use as a context manager.

    Raises VideoError (with `.kind`) at construction when the video is unusable (see
    `video_verdict`). threads: decoder threads (0 = FFmpeg's choice); thread_type "AUTO" (frame +
    slice), "SLICE" or "NONE". For many DataLoader workers on few cores, 1 thread per worker is
    the fastest total throughput (see docs/benchmarks.md); that is the default.
    """

    def __init__(self, path: str | Path, *, threads: int = 1, thread_type: str = "NONE"):
        self.path = str(path)
        self.threads = threads
        self.thread_type = thread_type
        self._folder: Optional[FrameFolder] = None
        self._container = None
        self._info: Optional[VideoInfo] = None
        self._fresh = False  # container open and nothing demuxed yet
        self._motion_enabled = False
        self._reindexed = False  # the index was rebuilt once after a read contradicted it
        self.frames_decoded = 0  # frames the decoder produced so far (skipped ones excluded)
        try:
            mode = os.stat(self.path).st_mode  # follows links; never opens (a fifo would block)
        except OSError:
            raise VideoError(f"{self.path}: file not found", "missing") from None
        if stat.S_ISDIR(mode):
            self._folder = FrameFolder(self.path)
            return
        if not stat.S_ISREG(mode):
            raise VideoError(f"{self.path}: not a regular file ({_file_kind(mode)})", "unreadable")
        if os.path.getsize(self.path) == 0:
            raise VideoError(f"{self.path}: zero-byte file", "zero_bytes")
        self._index: FrameIndex = frame_index(self.path)
        if self._index.kind:
            raise VideoError(f"{self.path}: {self._index.reason}", self._index.kind)

    # ---------------------------------------------------------------- context management
    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        """(Re)open the container for decoding, positioned at the start."""
        import av

        self.close()
        try:
            self._container = av.open(self.path, metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise VideoError(f"{self.path}: cannot open as a video ({plain(e)})", "unreadable") from None
        self._stream = self._container.streams.video[0]
        cc = self._stream.codec_context
        if self.threads != 1 or self.thread_type != "NONE":
            cc.thread_type = self.thread_type
            cc.thread_count = self.threads
        self._motion_enabled = False
        self._fresh = True

    # ---------------------------------------------------------------- probing
    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            if self._folder is not None:
                n, w, h = self._folder.info()
                self._info = VideoInfo(n, 0.0, w, h, 0, 0.0, "image", True, np.zeros(0, np.int64), None)
            else:
                x = self._index
                self._info = VideoInfo(x.num_frames, x.fps, x.width, x.height, x.rotation, x.duration,
                                       x.codec, False, x.keyframes, x.pts if x.exact_pts else None)
        return self._info

    def probe_rotation(self) -> VideoInfo:
        """The info, rotation included (kept for callers of the former two-step probe)."""
        return self.info

    # ---------------------------------------------------------------- reading
    def read(self, frame_indices: Sequence[int], *, with_motion: bool = False):
        """uint8 [T, H, W, 3] for `frame_indices` (any order, repeats allowed).

        With `with_motion`, returns (frames, motion) where motion is a list of [Hb, Wb, 2]
        float32 per-16x16-block forward displacement (dx, dy) in pixels, None for I-frames.
        Raises VideoError (kind "out_of_range") for indices outside 0..num_frames-1.
        """
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if idx.size == 0:
            raise ValueError("frame_indices is empty")
        info = self.info
        if idx.min() < 0 or idx.max() >= info.num_frames:
            raise VideoError(
                f"{self.path}: frame indices {int(idx.min())}..{int(idx.max())} outside 0..{info.num_frames - 1}",
                "out_of_range")
        if self._folder is not None:
            if with_motion:
                raise VideoError(f"{self.path}: frame folders carry no codec motion vectors", "no_motion")
            return self._folder.read(idx)
        wanted = np.unique(idx)
        got, motion = self._decode(wanted, with_motion)
        frames = np.stack([got[int(i)] for i in idx])
        if not with_motion:
            return frames
        return frames, [motion.get(int(i)) for i in idx]

    def _decode(self, wanted: np.ndarray, with_motion: bool) -> tuple[dict, dict]:
        """Seek-decode from the keyframe at or before the first wanted frame; back off one
        keyframe when the seek lands late; decode from the start when the stream contradicts
        the index (or has no usable pts)."""
        x = self._index
        want = set(wanted.tolist())
        got: dict[int, np.ndarray] = {}
        motion: dict[int, Optional[np.ndarray]] = {}
        if x.exact_pts:
            keys = x.keyframes
            k = int(np.searchsorted(keys, int(wanted[0]), side="right")) - 1
            while k >= 0:
                status = self._decode_from(int(keys[k]), wanted, want, got, motion, with_motion)
                if status == "done" or status == "mismatch":
                    break
                k -= 1  # landed late (or ran out): one keyframe earlier
            if not want - got.keys():
                return got, motion
        self._decode_sequential(want, got, motion, with_motion)
        missing = want - got.keys()
        if missing:
            forget(self.path)  # the file no longer decodes as indexed (changed under a stale key)
            if not self._reindexed:
                return self._reindex_and_decode(wanted, with_motion)
            raise VideoError(f"{self.path}: undecodable frames at {sorted(missing)[:10]} of "
                             f"{x.num_frames} (decoding differs from its index)", "undecodable")
        return got, motion

    def _reindex_and_decode(self, wanted: np.ndarray, with_motion: bool) -> tuple[dict, dict]:
        """Rebuild the file's index once (its cached one was stale) and decode again with it."""
        self._reindexed = True
        old = self._index.num_frames
        self._index, self._info = frame_index(self.path), None
        log.warning("%s decodes differently from its cached frame index: re-indexed (%d -> %d frames)",
                    self.path, old, self._index.num_frames)
        if self._index.kind:
            raise VideoError(f"{self.path}: {self._index.reason}", self._index.kind)
        if int(wanted[-1]) >= self._index.num_frames:
            raise VideoError(f"{self.path}: frame indices up to {int(wanted[-1])} outside 0.."
                             f"{self._index.num_frames - 1} (the file changed while open)", "out_of_range")
        return self._decode(wanted, with_motion)

    def _prepare(self, with_motion: bool) -> None:
        import av

        if self._container is None:
            self._open()
        if with_motion and not self._motion_enabled:
            self._stream.codec_context.flags2 |= av.codec.context.Flags2.export_mvs
            self._motion_enabled = True

    def _keep(self, j: int, frame, got: dict, motion: dict, with_motion: bool) -> None:
        got[j] = _to_rgb(frame, self._index.rotation)
        if with_motion:
            motion[j] = block_motion(frame, self._index.rotation)

    def _decode_from(self, start: int, wanted: np.ndarray, want: set, got: dict, motion: dict,
                     with_motion: bool) -> str:
        """Seek to keyframe `start` and decode forward, placing frames by pts. Returns "done"
        (all wanted frames out), "late" (the seek landed after `start`, or the stream ended
        first) or "mismatch" (a decoded frame's pts is not in the index)."""
        import av

        x = self._index
        self._prepare(with_motion)
        c, s = self._container, self._stream
        cc = s.codec_context
        last = int(wanted[-1])
        started, past, skip_state, status = False, -1, "DEFAULT", "late"
        try:
            if not (start == 0 and self._fresh):
                c.seek(int(x.pts[start]), stream=s, backward=True)
            self._fresh = False
            for pkt in c.demux(s):
                if pkt.size == 0 and pkt.pts is not None:
                    continue  # empty time slot (see frame_index.build_index)
                if x.aligned and started:
                    j = x.position(pkt.pts)
                    state = "NONREF" if j >= 0 and j not in want else "DEFAULT"
                    if state != skip_state:
                        cc.skip_frame = skip_state = state
                if past >= 0:
                    past += 1
                    if past > _REORDER_PACKETS:
                        break
                for frame in pkt.decode():
                    self.frames_decoded += 1
                    j = x.position(frame.pts)
                    if j < 0:
                        return "mismatch"
                    if not started:
                        if j < start:
                            continue  # before the keyframe: the seek landed early
                        if j != start:
                            return "late"
                        started = True
                    if j < start:
                        continue  # leading frames of an open GOP: need what came before `start`
                    if j in want and j not in got:
                        self._keep(j, frame, got, motion, with_motion)
                        if len(got) == len(want):
                            return "done"
                    if j >= last and past < 0:
                        past = 0  # frames may still come out of pts order: a bounded wait
        except av.FFmpegError:
            status = "late"
        finally:
            if skip_state != "DEFAULT":
                cc.skip_frame = "DEFAULT"
        return "done" if len(got) == len(want) else status

    def _decode_sequential(self, want: set, got: dict, motion: dict, with_motion: bool) -> None:
        """Decode from the start as the index pass did; the m-th frame out is at `rank[m]`."""
        import av

        x = self._index
        self._open()
        self._prepare(with_motion)
        self._fresh = False
        m = 0
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size == 0 and pkt.pts is not None:
                    continue
                try:
                    frames = pkt.decode()
                except av.FFmpegError:
                    continue  # as the index pass: it found no failing packet, or we would not be here
                for frame in frames:
                    self.frames_decoded += 1
                    if m >= len(x.rank):
                        return
                    j = int(x.rank[m])
                    m += 1
                    if x.exact_pts and frame.pts != int(x.pts[j]):
                        return  # the file decodes differently from its index
                    if j in want and j not in got:
                        self._keep(j, frame, got, motion, with_motion)
                        if len(got) == len(want):
                            return
        except av.FFmpegError:
            return


    def frames_in_order(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every frame once, in index order: (i, uint8 [H, W, 3]) for i = 0 .. num_frames - 1,
        from one sequential decode (as the index pass: the m-th decoded frame is frame `rank[m]`);
        frames that come out ahead of their turn wait in a buffer. Files only. Raises VideoError
        ("undecodable") when the decode ends before every frame came out."""
        import av

        x = self._index
        self._open()
        self._fresh, m, nxt, ahead = False, 0, 0, {}
        try:
            for pkt in self._container.demux(self._stream):
                if pkt.size == 0 and pkt.pts is not None:
                    continue  # empty time slot (see frame_index.build_index)
                try:
                    decoded = pkt.decode()
                except av.FFmpegError:
                    continue  # as the index pass, which counted no frame for this packet
                for frame in decoded:
                    if m >= len(x.rank):
                        break
                    ahead[int(x.rank[m])] = _to_rgb(frame, x.rotation)
                    m += 1
                    while nxt in ahead:
                        yield nxt, ahead.pop(nxt)
                        nxt += 1
        except av.FFmpegError:
            pass
        if nxt < x.num_frames:
            raise VideoError(f"{self.path}: sequential decode ended at frame {nxt} of {x.num_frames}", "undecodable")

    @property
    def time_base(self):
        """The video stream's time base (a Fraction; `info.pts` counts in it). Files only."""
        if self._container is None:
            self._open()
        return self._stream.time_base


def _to_rgb(frame, rotation: int) -> np.ndarray:
    arr = frame.to_ndarray(format="rgb24", **_rgb_options())
    if rotation:
        arr = np.ascontiguousarray(np.rot90(arr, k=rotation // 90))
    return arr


_RGB_OPTIONS: Optional[dict] = None


def _rgb_options() -> dict:
    """PyAV >= 17 converts a frame on every core by default (sws_scale_frame threads); for the
    small frames read here the thread hand-offs cost ~3x the CPU of one thread (50 videos of 16
    frames at 64 px: 0.46 vs 0.15 CPU-s, 26x the context switches; worse on a loaded machine), and
    DataLoader workers already run in parallel. One thread, as before 17 (the pixels are the same)."""
    global _RGB_OPTIONS
    if _RGB_OPTIONS is None:
        import av

        major = int(str(av.__version__).split(".")[0])
        _RGB_OPTIONS = {"threads": 1} if major >= 17 else {}
    return _RGB_OPTIONS


def x264_reproducible(options: dict) -> dict:
    """`options` (a libx264 stream's `options`) with x264's AVX-512 code left out where x264 would
    use it (`x264-params` gains `asm=AVX2`; elsewhere `options` come back unchanged), so the same
    frames and settings give the same bytes on every run (re-trial 29A S1).

    Why: on an AVX-512 CPU, libx264 (core 165, PyAV 18 wheels) encodes the same frames with the
    same settings (one thread, one lookahead thread) into different files now and then; with its
    AVX2 or C code every encode is one file, across processes too, and the inputs (decode, swscale
    resize) are the same each time, so some AVX-512 routine presumably reads memory nothing wrote.
    AVX2 costs about no speed (docs/benchmarks.md, "Prepared videos"). The flags `asm=AVX2` sets
    are those x264 detects on such a CPU but AVX-512 (x264 common/cpu.c): none the CPU lacks."""
    if not _x264_would_use_avx512():
        return dict(options)
    params = options.get("x264-params")
    return {**options, "x264-params": f"{params}:asm=AVX2" if params else "asm=AVX2"}


# x264's AVX-512 test (common/cpu.c: CPUID 7 EBX & 0xD0030000), as Linux names the flags
_X264_AVX512_FLAGS = ("avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl")
# what `asm=AVX2` has x264 use beyond SSE4.2 (its "AVX2" entry; `abm`: LZCNT), so "yes" never asks for more
_X264_AVX2_FLAGS = ("avx", "avx2", "fma", "bmi1", "bmi2", "abm")


@functools.lru_cache(maxsize=None)
def _x264_would_use_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether x264 would use its AVX-512 code here: the `flags` of `cpuinfo` (the first CPU's) hold
    x264's AVX-512 test and those `asm=AVX2` uses. Linux lists only what it enabled (noxsave or
    clearcpuid= clear AVX-512's flags). x264 also wants the OS to save the ZMM state (XCR0), which
    cpuinfo does not show: a VM listing the flags without it gets `asm=AVX2`, the AVX2 code x264
    would pick itself (the same bytes). No such file (macOS, Windows) or no x86 flags (Arm: x264
    has no AVX-512 code): False. Fix 31e: read from cpuinfo, not numpy's private CPU table."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(_X264_AVX512_FLAGS + _X264_AVX2_FLAGS) <= set(value.split())
    return False


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
            s.options = x264_reproducible(opts)
        if rotation:
            s.set_display_rotation(rotation)
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count (frames present), fps, size (after rotation), rotation, duration, codec of a
    file or folder. Raises VideoError (with `.kind`) for an unusable video."""
    with VideoReader(path) as r:
        return r.info


def read_frames(path: str | Path, frame_indices: Sequence[int], **reader_kw) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames at `frame_indices` (repeats give duplicates)."""
    with VideoReader(path, **reader_kw) as r:
        return r.read(frame_indices)


def read_motion_vectors(path: str | Path, frame_indices: Sequence[int]) -> list[Optional[np.ndarray]]:
    """Per index: [Hb, Wb, 2] float32 block motion (dx, dy) in pixels from the codec; None on
    I-frames. Hb, Wb = ceil(H / 16), ceil(W / 16) of the (rotated) frame."""
    with VideoReader(path) as r:
        return r.read(frame_indices, with_motion=True)[1]
