"""Decoded-clip cache: every video's frames decoded once into uint8, so training skips decoding.

`data.cache=memory`: one shared-memory uint8 tensor (DataLoader workers map the same pages);
`data.cache=disk`: one flat file under `data.cache_dir` read through `np.memmap`.
Stored per distinct path: the RGB frames [lo, hi) any of its records can sample, at the source
resolution, exactly as `VideoReader.read` returns them, so a cached sample is bit-identical to the
decoded one for the same (seed, epoch, index) (tests/test_data_cache.py). Frames are not stored
downscaled: crop boxes are drawn in source pixels, and rescaled frames change the crops. A video
that cannot be decoded is stored as its error message (`video_verdict`) and replaced as on the
video path.

Key: SHA-256 over a format version, the PyAV version, `frame_index.INDEX_VERSION` and per path
(path, `tgmae.data.fileid` identity, lo, hi); a disk cache whose metadata holds other inputs is
rebuilt, with a log line. Under torch.distributed local rank 0 builds a disk cache while the others
wait; runs sharing `data.cache_dir` build a key one at a time (`tgmae.locks` on `<key>.u8`, waiting
up to `BUILD_WAIT_S`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from tgmae.atomic import OutputError, atomic_path, atomic_write_text, check_writable, remove_stale_temps
from tgmae.config import ConfigError
from tgmae.data.annotations import VideoRecord
from tgmae.data.fileid import video_identities
from tgmae.data.shm import share_memory
from tgmae.data.frame_index import error_text
from tgmae.data.video import VideoError, VideoReader
from tgmae.locks import hold
from tgmae.user_cache import cache_root

log = logging.getLogger(__name__)

BUILD_WAIT_S = 1800.0  # how long a run waits for another process building the same disk cache

CACHE_FORMAT = 1


@dataclass
class _Entry:
    offset: int  # byte offset of frame `lo` in the flat buffer
    lo: int  # first cached frame index
    count: int  # cached frames (hi - lo)
    height: int
    width: int
    num_frames: int  # frames the video holds (what `VideoReader.info.num_frames` said)
    error: str = ""  # non-empty: the video could not be read at build time (path: what happened)
    kind: str = ""  # its VideoError kind


def default_cache_dir() -> Path:
    """`clips/` in the user cache folder (tgmae.user_cache).

    Raises:
        ConfigError: the user cache folder is switched off (`TGMAE_CACHE_DIR=off`): nothing is
            written there, so `data.cache=disk` needs an explicit `data.cache_dir`."""
    root = cache_root()
    if root is None:
        raise ConfigError("data.cache=disk with TGMAE_CACHE_DIR=off: set data.cache_dir to the folder for "
                          "the cache file (or use data.cache=memory)")
    return root / "clips"


def frame_spans(records: Sequence[VideoRecord]) -> dict[str, tuple[int, Optional[int]]]:
    """path -> (lo, hi) frames any record of that path can sample; hi None = to the end."""
    spans: dict[str, tuple[int, Optional[int]]] = {}
    for r in records:
        lo, hi = max(r.start_frame or 0, 0), r.end_frame
        if r.path in spans:
            plo, phi = spans[r.path]
            lo = min(lo, plo)
            hi = None if hi is None or phi is None else max(hi, phi)
        spans[r.path] = (lo, hi)
    return spans


def cache_key(records: Sequence[VideoRecord]) -> tuple[str, dict]:
    """(16-hex key, the JSON-able inputs it hashes) for the records' videos as they are now."""
    import av

    from tgmae.data.frame_index import INDEX_VERSION

    spans = frame_spans(records)
    ident = video_identities(spans)  # a missing video is an entry too (None): it must fail the same way
    inputs = {"format": CACHE_FORMAT, "av": av.__version__, "reader": INDEX_VERSION,
              "videos": [[os.path.abspath(p), ident[p], lo, hi] for p, (lo, hi) in sorted(spans.items())]}
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16], inputs


def _decode(path: str, lo: int, hi: Optional[int], threads: int) -> tuple[Optional[np.ndarray], int, tuple]:
    """-> (frames uint8 [n, H, W, 3] or None, video frame count, (error message, kind))."""
    import av

    try:
        with VideoReader(path, threads=threads) as reader:
            total = reader.info.num_frames
            end = total if hi is None else min(hi, total)
            if end <= lo:
                return np.zeros((0, 1, 1, 3), np.uint8), total, ("", "")
            return np.ascontiguousarray(reader.read(np.arange(lo, end))), total, ("", "")
    except (VideoError, OSError, EOFError, av.FFmpegError) as e:
        return None, 0, (error_text(path, e), getattr(e, "kind", "undecodable"))


class ClipCache:
    """Decoded frames of a set of videos in one flat uint8 buffer (see the module docstring).

    `num_frames(path)` -> frames the video holds (raises VideoError for a video that failed at
    build time, with the same message); `read(path, indices)` -> uint8 [T, H, W, 3] frames at
    those video frame indices (each in the cached span)."""

    def __init__(self, key: str, entries: dict[str, _Entry], data, location: str):
        self.key, self.entries, self.data, self.location = key, entries, data, location

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        # A memmap would pickle as a full copy (spawned DataLoader workers): reopen it instead.
        # The memory cache's shared tensor pickles as a handle to the same shared pages.
        state = dict(self.__dict__)
        if isinstance(self.data, np.memmap):
            state["data"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.data is None:
            self.data = np.memmap(self.location, dtype=np.uint8, mode="r")

    @property
    def nbytes(self) -> int:
        return int(self.data.shape[0])

    def _entry(self, path: str) -> _Entry:
        e = self.entries.get(path)
        if e is None:
            raise KeyError(f"{path}: not in the decoded-clip cache {self.key}")
        if e.error:
            raise VideoError(e.error, e.kind or "undecodable")
        return e

    def num_frames(self, path: str) -> int:
        return self._entry(path).num_frames

    def read(self, path: str, frame_indices) -> np.ndarray:
        e = self._entry(path)
        idx = np.asarray(frame_indices, dtype=np.int64) - e.lo
        if idx.size and (idx.min() < 0 or idx.max() >= e.count):
            raise IndexError(f"{path}: frames {np.asarray(frame_indices).tolist()} outside the cached "
                             f"span [{e.lo}, {e.lo + e.count}) of cache {self.key}")
        frame = e.height * e.width * 3
        buf = self.data[e.offset: e.offset + e.count * frame]
        if isinstance(buf, torch.Tensor):
            buf = buf.numpy()
        return np.asarray(buf).reshape(e.count, e.height, e.width, 3)[idx]


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="video", dynamic_ncols=True, disable=None)


def _decode_all(spans: dict, threads: int, workers: int, desc: str):
    """Yields (path, frames | None, num_frames, error) in `spans` order, decoding `workers`
    videos at a time (PyAV releases the GIL while decoding)."""
    items = list(spans.items())
    with ThreadPoolExecutor(max(workers, 1)) as pool, _progress(len(items), desc) as bar:
        for (path, _), (frames, total, err) in zip(items, pool.map(
                lambda kv: _decode(kv[0], kv[1][0], kv[1][1], threads), items)):
            bar.update(1)
            yield path, frames, total, err


def _entry_for(path: str, lo: int, frames: Optional[np.ndarray], total: int, err: tuple, offset: int) -> _Entry:
    if frames is None:
        return _Entry(offset, lo, 0, 1, 1, 0, *err)
    n, h, w, _ = frames.shape
    return _Entry(offset, lo, n, h, w, total)


def build_memory_cache(records: Sequence[VideoRecord], *, threads: int = 1, workers: int = 1) -> ClipCache:
    """Decode every video into one shared-memory uint8 tensor (workers see it without copies)."""
    key, _ = cache_key(records)
    spans = frame_spans(records)
    log.info("building decoded-clip cache %s in memory (%d videos)", key, len(spans))
    chunks: list[tuple[str, _Entry, Optional[np.ndarray]]] = []
    offset = 0
    for path, frames, total, err in _decode_all(spans, threads, workers, f"decoding clips (cache {key})"):
        e = _entry_for(path, spans[path][0], frames, total, err, offset)
        offset += 0 if frames is None else frames.nbytes
        chunks.append((path, e, frames))
    # e.g. a small /dev/shm in a container: one line naming it, and data.cache=disk
    data = share_memory(torch.empty(offset, dtype=torch.uint8), "the decoded-clip cache (data.cache=memory)",
                        way_out="use data.cache=disk")
    entries = {}
    for i, (path, e, frames) in enumerate(chunks):
        if frames is not None and frames.size:
            data[e.offset: e.offset + frames.nbytes] = torch.from_numpy(frames.reshape(-1))
        entries[path] = e
        chunks[i] = (path, e, None)  # free as we go: peak stays near one copy
    _log_built(key, entries, offset, "memory")
    return ClipCache(key, entries, data, "memory")


def _log_built(key: str, entries: dict[str, _Entry], nbytes: int, where: str) -> None:
    bad = sum(1 for e in entries.values() if e.error)
    log.info("decoded-clip cache %s: %d videos, %.1f MiB (%s)%s", key, len(entries), nbytes / 2**20, where,
             f"; {bad} unreadable, replaced when drawn" if bad else "")


def _read_meta(meta_path: Path) -> Optional[dict]:
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def _usable_meta(key: str, inputs: dict, data_path: Path, meta_path: Path, say: bool) -> Optional[dict]:
    """The metadata of a complete cache of exactly these inputs, else None (say: log why not)."""
    meta = _read_meta(meta_path)
    if meta is not None and meta.get("inputs") != inputs:
        if say:
            log.warning("decoded-clip cache %s at %s was built from other videos or settings: rebuilding",
                        key, meta_path)
        return None
    if meta is not None and (not data_path.exists() or data_path.stat().st_size != meta["nbytes"]):
        if say:
            log.warning("decoded-clip cache %s: %s is missing or truncated: rebuilding", key, data_path)
        return None
    return meta


def build_disk_cache(records: Sequence[VideoRecord], cache_dir: str | Path, *, threads: int = 1,
                     workers: int = 1, wait: float = BUILD_WAIT_S, setting: str = "data.cache_dir") -> ClipCache:
    """Open `<cache_dir>/<key>.u8` (+ `.json`) when its metadata matches this key's inputs;
    otherwise decode every video into it (written to a temporary name, then renamed). Temp files
    of builds killed on this host are removed first (`remove_stale_temps`).

    One process builds a key at a time (`tgmae.locks` on `<key>.u8`): another run that needs the
    same cache waits up to `wait` seconds for it, then uses what it built (LockError naming the
    builder after the wait); a lock left by a killed build is taken over. `setting`: what chose
    `cache_dir`, named in the refusals (the user cache folder: TGMAE_CACHE_DIR)."""
    key, inputs = cache_key(records)
    folder = Path(cache_dir)
    remove_stale_temps(folder)
    data_path, meta_path = folder / f"{key}.u8", folder / f"{key}.json"
    meta = _usable_meta(key, inputs, data_path, meta_path, say=False)
    if meta is None:
        with hold(data_path, setting, wait=wait, folder=False):
            meta = _usable_meta(key, inputs, data_path, meta_path, say=True)  # as the last builder left it
            if meta is None:
                _write_disk_cache(records, key, inputs, folder, threads, workers, setting)
                return _open_disk_cache(key, json.loads(meta_path.read_text()), data_path)
    log.info("decoded-clip cache %s: using %s", key, data_path)
    return _open_disk_cache(key, meta, data_path)


def _open_disk_cache(key: str, meta: dict, data_path: Path) -> ClipCache:
    entries = {p: _Entry(**e) for p, e in meta["entries"].items()}
    data = (np.memmap(data_path, dtype=np.uint8, mode="r") if meta["nbytes"] else np.zeros(0, np.uint8))
    return ClipCache(key, entries, data, str(data_path))


def _write_disk_cache(records, key: str, inputs: dict, folder: Path, threads: int, workers: int,
                      setting: str) -> None:
    try:  # before decoding every video, not after
        check_writable(folder / f"{key}.u8")
    except OutputError as err:
        raise OutputError(err.errno, f"{setting}: {err}") from None
    spans = frame_spans(records)
    log.info("building decoded-clip cache %s in %s (%d videos)", key, folder, len(spans))
    entries, offset = {}, 0
    with atomic_path(folder / f"{key}.u8") as tmp, open(tmp, "wb") as f:
        for path, frames, total, err in _decode_all(spans, threads, workers, f"decoding clips (cache {key})"):
            entries[path] = _entry_for(path, spans[path][0], frames, total, err, offset)
            if frames is not None:
                f.write(frames.tobytes())
                offset += frames.nbytes
    meta = {"key": key, "inputs": inputs, "nbytes": offset,
            "entries": {p: vars(e) for p, e in entries.items()}}
    # written last: its presence marks a complete cache
    atomic_write_text(folder / f"{key}.json", json.dumps(meta))
    _log_built(key, entries, offset, str(folder / f"{key}.u8"))


def build_clip_cache(records: Sequence[VideoRecord], mode: str, cache_dir: str = "", *,
                     threads: int = 1, workers: int = 1) -> Optional[ClipCache]:
    """`mode` (data.cache, validated) "none" -> None; "memory" / "disk" -> a ClipCache of the records' videos.
    `workers`: videos decoded at once while building; `threads`: decoder threads per video.
    Under torch.distributed, "disk" is built by local rank 0 while the other ranks wait."""
    if mode == "none":
        return None
    if mode == "memory":
        return build_memory_cache(records, threads=threads, workers=workers)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    setting = "data.cache_dir" if cache_dir else "TGMAE_CACHE_DIR (or data.cache_dir)"  # the user cache chose it
    from tgmae.distributed import barrier, rank_world
    from tgmae.lifetime import local_rank

    rank, world = rank_world()
    if world > 1:
        if local_rank(default=rank) == 0:
            build_disk_cache(records, folder, threads=threads, workers=workers, setting=setting)
        barrier()
    return build_disk_cache(records, folder, threads=threads, workers=workers, setting=setting)
