"""Small video files of the kinds real datasets hold, written with PyAV's encoders (tests only).

Each writer takes a path and returns it; frames are a moving pattern whose content identifies the
frame, at small sizes so every file is written and decoded in well under a second.
- `mpeg4_bframes_avi`: MPEG-4 Part 2 (FFmpeg's `mpeg4`) in AVI with 2 B-frames per P-frame. The
  packed bitstream of XviD / DivX (a P+B pair in one chunk, then a 7-byte "not coded" packet)
  cannot be written by FFmpeg (it has only the `mpeg4_unpack_bframes` filter); the real file in
  ../shared/data/videos covers that kind.
- `msmpeg4v3_avi`: MS-MPEG4 v3 (DivX ;-) 3) in AVI.
- `vfr_avi`: cinepak or MJPEG in AVI with frames at irregular time stamps; the AVI header then
  declares one frame per time slot, more than are present.
- `frameless_packet_mp4`: H.264 MP4 with one extra packet (an end-of-sequence NAL only) that
  presents no frame.
- `vp9_webm`: VP9 in WebM (alt-ref frames hidden inside superframes).
- `raw_h264`: an H.264 elementary stream, whose frames have no time stamps (read in decode order).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [t, h, w, 3]: a textured square moving over a gradient; frame number in the tint."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        img = np.stack([(xx * 3 + 5 * i) % 256, (yy * 3) % 256, np.full_like(xx, (9 * i) % 256)], -1)
        y0, x0 = (2 * i) % (h // 2), (3 * i) % (w // 2)
        img[y0:y0 + h // 2, x0:x0 + w // 2] = tex[: h // 2, : w // 2]
        out[i] = img
    return out


def _write(path: Path, codec: str, frames: np.ndarray, rate, *, pts=None, options=None,
           pix_fmt="yuv420p") -> Path:
    t, h, w, _ = frames.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if options:
            s.options = options
        s.codec_context.thread_count = 1
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = int(pts[i]), Fraction(1, rate)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def mpeg4_bframes_avi(path: Path, t: int = 40) -> Path:
    return _write(path, "mpeg4", pattern(t, 48, 64), 25, options={"bf": "2", "g": "12", "qscale": "4"})


def msmpeg4v3_avi(path: Path, t: int = 30) -> Path:
    return _write(path, "msmpeg4", pattern(t, 48, 64, 1), 25, options={"g": "10", "qscale": "4"})


def vfr_avi(path: Path, codec: str = "cinepak", t: int = 24) -> Path:
    """Frames on a 15 fps time base at gaps of 1-6 ticks (pts 0 .. ~80)."""
    gaps = np.random.default_rng(2).integers(1, 7, t)
    pts = np.concatenate([[0], np.cumsum(gaps[:-1])])
    pix = "rgb24" if codec == "cinepak" else "yuvj420p"
    return _write(path, codec, pattern(t, 32, 48, 2), 15, pts=pts, pix_fmt=pix)


def frameless_packet_mp4(path: Path, t: int = 30, after: int = 12) -> Path:
    """H.264 at 30 fps on a 1/60 s time base (no B-frames); after the `after`-th packet comes a
    packet holding only an end-of-sequence NAL (the decoder returns no frame and no error), at
    the time stamp between two frames."""

    frames = pattern(t, 48, 64, 3)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"bf": "0", "g": "10", "keyint_min": "10", "sc_threshold": "0", "threads": "1"}
        s.codec_context.time_base = Fraction(1, 60)
        packets = []
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = 2 * i, Fraction(1, 60)
            packets += s.encode(f)
        packets += s.encode()
        for k, p in enumerate(packets):  # no B-frames: packet k is frame k
            c.mux(p)
            if k == after - 1:
                q = av.Packet(b"\x00\x00\x00\x01\x0a")  # an end-of-sequence NAL only: no picture
                q.stream, q.time_base = s, Fraction(1, 60)
                q.pts = q.dts = 2 * k + 1
                c.mux(q)
    return path


def raw_h264(path: Path, t: int = 24) -> Path:
    """An H.264 elementary stream (.h264): no container, frames carry no time stamps."""
    from tgmae.data.video import write_video

    write_video(path, pattern(t, 48, 64, 5), gop=8)
    return path


def vp9_webm(path: Path, t: int = 30) -> Path:
    return _write(path, "libvpx-vp9", pattern(t, 48, 64, 4), 25,
                  options={"g": "10", "crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8",
                           "lag-in-frames": "8", "auto-alt-ref": "1"})


def corrupt_mjpeg(src: Path, dst: Path, frames: tuple[int, ...]) -> Path:
    """Zero the JPEG data of the given coded frames (the decoder refuses those packets)."""
    data = bytearray(src.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for k in frames:
        data[soi[k]:soi[k + 1] - 8] = bytes(soi[k + 1] - 8 - soi[k])
    dst.write_bytes(bytes(data))
    return dst


WRITERS = {
    "mpeg4_bframes.avi": mpeg4_bframes_avi,
    "msmpeg4v3.avi": msmpeg4v3_avi,
    "cinepak_vfr.avi": lambda p: vfr_avi(p, "cinepak"),
    "mjpeg_vfr.avi": lambda p: vfr_avi(p, "mjpeg"),
    "frameless_packet.mp4": frameless_packet_mp4,
    "vp9.webm": vp9_webm,
    "raw.h264": raw_h264,
}


def sequential_decode(path) -> list[np.ndarray]:
    """The reference: PyAV's sequential decode, sorted by frame.pts (stable)."""
    with av.open(str(path)) as c:
        fr = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return [a for _, a in sorted(fr, key=lambda x: -1 if x[0] is None else x[0])]  # no pts: as decoded
