"""Frozen-encoder features per video (per clip, per sliding window, or the token grid), written as
safetensors shards plus an index.

Units: one per annotation record (video id), over its frame range [start_frame, end_frame) of
the file (the whole file without one; clipped to the file as the dataset clips it): segments of
one long video (EPIC-Kitchens) are each their own unit. Frame numbers and times are the file's.
Windows: `window` frames, `frame_step` apart, read exactly by `tgmae.data.video.VideoReader`.
mode "windows": starts `start + range(0, n - span + 1, stride)` (n frames in range), span =
(window - 1) x frame_step + 1 (VideoMAEv2 `extract_tad_feature.py`, THUMOS14: 16 frames, stride
4); mode "clip": the dataset's single-view evaluation clip of the range
(`tgmae.data.sampling.clip_indices` with `sampling`: dense, start round((n - span) / 2); tsn, the
centre frame of each of `window` segments), so its features are the probes'. A unit shorter than
one window (span; `window` frames for tsn) is listed as "too_short", never padded; an extraction
where no unit fits is an error (`check_extracted`).
Pixels: centre crop of the short side then resize ("center_crop", as `EvalTransform`) or the whole
frame resized ("squash", as VideoMAEv2's TAD script), bilinear + antialias, encoder mean / std.
Outputs per window: "pooled" mean token [D] or "tokens" [N, D], float32. Times: first / last frame
read (inclusive) and their presentation times in seconds (frame / fps without exact pts; NaN for a
frame folder).

Files in `out_dir`: `manifest.json` (settings, encoder digest, video ids; other settings are refused
by name, `manifest_differences`), `shard-SSSSS-of-TTTTT.safetensors` (`features` [R, D] or
[R, N, D] and per row `video`, `window`, `start_frame`, `end_frame`, `start_sec`, `end_sec`;
metadata: unreadable videos, `videos_fingerprint` of its files), and from `write_index`
`index.csv` + `unreadable.json`. Atomic writes; a rerun skips finished shards of unchanged files.
Shards are dealt round-robin to ranks. `out_dir` inside a run, a non-empty folder without a
manifest.json or with one that is not an extraction's is refused (`check_output_folder`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tgmae.atomic import atomic_path, atomic_write_text, is_temp, remove_stale_temps
from tgmae.data.sampling import clip_indices
from tgmae.data.transforms import crop_resize, normalize, spatial_view_boxes
from tgmae.data.video import VideoInfo, VideoReader
from tgmae.errors import UserError
from tgmae.locks import check_kind, hold, refuse_inside_run, shard_target
from tgmae.train.precision import autocast
from tgmae.data.dataset import subset_annotations
from tgmae.data.fileid import videos_fingerprint

log = logging.getLogger("tgmae")

MANIFEST_VERSION = 1
INDEX_KEYS = ("video", "window", "start_frame", "end_frame", "start_sec", "end_sec")


class ExtractError(ValueError, UserError):
    """An output folder that holds another extraction or other files, or shards that are missing."""


@dataclass(frozen=True)
class ExtractSpec:
    """What is extracted and how (see the module doc)."""

    mode: str = "windows"  # windows | clip
    output: str = "pooled"  # pooled | tokens
    window: int = 16  # frames per window (= the encoder's num_frames)
    stride: int = 4  # frames between window starts (mode windows)
    frame_step: int = 1  # frames between a window's frames
    image_size: int = 224
    spatial: str = "center_crop"  # center_crop | squash
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    videos_per_shard: int = 64
    batch_size: int = 8  # windows per forward pass
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast of the encoder's forward)
    sampling: str = "dense"  # dense | tsn: the evaluation clip of mode "clip" (data.sampling)

    def __post_init__(self) -> None:
        choices = {"mode": ("windows", "clip"), "output": ("pooled", "tokens"),
                   "spatial": ("center_crop", "squash"), "precision": ("fp32", "bf16", "fp16"),
                   "sampling": ("dense", "tsn")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected {'|'.join(allowed)}")
        for name in ("window", "stride", "frame_step", "image_size", "videos_per_shard", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")

    @property
    def span(self) -> int:
        """Frames from a window's first to its last, both included."""
        return (self.window - 1) * self.frame_step + 1

    @property
    def min_frames(self) -> int:
        """Frames a unit's range must hold: one window's span (TSN clips: one frame per segment)."""
        return self.window if self.mode == "clip" and self.sampling == "tsn" else self.span


def frame_range(num_frames: int, start_frame: Optional[int], end_frame: Optional[int],
                path: str | os.PathLike = "video") -> tuple[int, int]:
    """[start, end) of a record's range in a file of `num_frames` frames, as the dataset reads it
    (`tgmae.data.frame_index.record_frame_range`): None = the file's start / end; a range past the
    file's end is a VideoError of kind "out_of_range", never clipped."""
    from tgmae.data.frame_index import record_frame_range

    return record_frame_range(str(path), start_frame, end_frame, num_frames)


def window_frames(num_frames: int, spec: ExtractSpec, start: int = 0, end: Optional[int] = None) -> np.ndarray:
    """[W, window] int64 frames of each window inside [start, end) (default the whole
    `num_frames`-frame file); W = 0 when the range holds fewer than `spec.min_frames`."""
    end = num_frames if end is None else end
    if end - start < spec.min_frames:
        return np.zeros((0, spec.window), np.int64)
    if spec.mode == "clip":  # the probes' clip: the dataset's own function, with its sampling
        return clip_indices(start, end, spec.window, spec.frame_step, spec.sampling, train=False).numpy()[None]
    starts = np.arange(start, end - spec.span + 1, spec.stride, dtype=np.int64)
    return starts[:, None] + np.arange(spec.window, dtype=np.int64) * spec.frame_step


def window_starts(num_frames: int, spec: ExtractSpec, start: int = 0, end: Optional[int] = None) -> np.ndarray:
    """[W] int64 first frame of each window (`window_frames`)."""
    return window_frames(num_frames, spec, start, end)[:, 0]


def frame_seconds(path: str | os.PathLike, info: VideoInfo) -> np.ndarray:
    """[num_frames] float64 presentation time of each frame in seconds (see the module doc)."""
    n = info.num_frames
    if info.pts is not None and not info.is_frame_folder:
        import av

        with av.open(str(path), metadata_errors="ignore") as c:
            tb = c.streams.video[0].time_base
        if tb:
            return info.pts.astype(np.float64) * float(tb)
    if info.fps > 0:
        return np.arange(n, dtype=np.float64) / info.fps
    return np.full(n, np.nan)


def preprocess(frames: np.ndarray, spec: ExtractSpec) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [3, T, S, S] normalised (S = spec.image_size)."""
    _, h, w, _ = frames.shape
    box = spatial_view_boxes(h, w, 1)[0] if spec.spatial == "center_crop" else (0, 0, h, w)
    return normalize(crop_resize(frames, box, spec.image_size), spec.mean, spec.std)


@torch.no_grad()
def encode_windows(encoder: nn.Module, video: torch.Tensor, spec: ExtractSpec) -> torch.Tensor:
    """video [B, C, T, H, W] -> float32 [B, D] (pooled) or [B, N, D] (tokens), on the CPU."""
    with autocast(spec.precision, video.device):
        tokens = encoder(video).float()
    return (tokens.mean(dim=1) if spec.output == "pooled" else tokens).cpu()


@dataclass
class VideoFeatures:
    """One video's windows: features [W, D] or [W, N, D]; frames and times [W] each."""

    features: torch.Tensor
    start_frame: np.ndarray
    end_frame: np.ndarray
    start_sec: np.ndarray
    end_sec: np.ndarray


def extract_video(encoder: nn.Module, path: str | os.PathLike, spec: ExtractSpec,
                  device: Optional[torch.device] = None, start_frame: Optional[int] = None,
                  end_frame: Optional[int] = None) -> VideoFeatures:
    """Features of every window of one video, inside [start_frame, end_frame) (`frame_range`; see
    the module doc). Raises `tgmae.data.frame_index.VideoError` for an unusable video (kind
    "too_short" when its range holds fewer frames than one window)."""
    from tgmae.data.frame_index import VideoError

    device = device or next(encoder.parameters()).device
    with VideoReader(path) as reader:
        info = reader.info
        start, end = frame_range(info.num_frames, start_frame, end_frame, path)
        frames = window_frames(info.num_frames, spec, start, end)  # [W, window] frame numbers
        if not len(frames):
            have = max(end - start, 0)
            where = f" in range [{start}, {end})" if (start_frame, end_frame) != (None, None) else ""
            err = VideoError(f"{path}: {have} frames{where}, fewer than one window ({spec.min_frames})", "too_short")
            err.num_frames = have  # type: ignore[attr-defined]  # the longest is named when none fits
            raise err
        seconds = frame_seconds(path, info)
        parts = []
        for i in range(0, len(frames), spec.batch_size):
            idx = frames[i: i + spec.batch_size]  # [b, window] frame numbers
            wanted = np.unique(idx)
            clip = preprocess(reader.read(wanted), spec)  # [3, u, S, S]
            pos = torch.from_numpy(np.searchsorted(wanted, idx))  # [b, window] rows of `clip`
            video = clip[:, pos].permute(1, 0, 2, 3, 4).to(device)  # [b, 3, window, S, S]
            parts.append(encode_windows(encoder, video, spec))
    starts, ends = frames[:, 0], frames[:, -1]
    return VideoFeatures(torch.cat(parts), starts, ends, seconds[starts], seconds[ends])


def output_settings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's fields that change what a folder holds: batch_size (windows per forward pass) never
    does, stride only in mode "windows" (clip mode takes the evaluation clip), sampling only in mode
    "clip" and only when not "dense" (what every folder held before it was a setting, so theirs
    stay valid); a rerun that differs only in those reuses the folder."""
    out = {k: v for k, v in spec.items() if k != "batch_size"}
    if out.get("mode") == "clip":
        out.pop("stride", None)
    if out.get("mode") != "clip" or out.get("sampling", "dense") == "dense":
        out.pop("sampling", None)
    return out


Unit = tuple  # (video_id, path) or (video_id, path, start_frame, end_frame): one extraction unit


def unit_fields(unit: Sequence) -> tuple[str, str, Optional[int], Optional[int]]:
    """(video_id, path, start_frame, end_frame) of a unit; None = the file's start / end."""
    vid, path, *rng = unit
    start, end = (list(rng) + [None, None])[:2]
    return vid, path, start, end


def manifest(videos: Sequence[Unit], spec: ExtractSpec, encoder_digest: str) -> dict[str, Any]:
    """What an output folder holds: settings (`output_settings`), encoder digest, video ids (in
    order), shard count, and, when a unit has a frame range, every unit's [start, end] ("video_ranges";
    null = the file's start / end; absent otherwise, as in folders made before ranges counted)."""
    n, units = len(videos), [unit_fields(v) for v in videos]
    m = {"version": MANIFEST_VERSION, "spec": output_settings(dataclasses.asdict(spec)), "encoder": encoder_digest,
         "video_ids": [u[0] for u in units], "num_shards": max(1, -(-n // spec.videos_per_shard))}
    if any(u[2:] != (None, None) for u in units):
        m["video_ranges"] = [list(u[2:]) for u in units]
    return m


def _normalized(m: dict[str, Any]) -> dict[str, Any]:
    """A manifest as `manifest` writes it now: one written before `output_settings` also held
    batch_size (and stride in clip mode), which are no settings of the folder."""
    return {**m, "spec": output_settings(m["spec"])} if isinstance(m.get("spec"), dict) else m


def _manifest_key(m: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_normalized(m), sort_keys=True).encode()).hexdigest()[:24]


def shard_path(out_dir: str | os.PathLike, shard: int, num_shards: int) -> Path:
    return Path(out_dir) / f"shard-{shard:05d}-of-{num_shards:05d}.safetensors"


def manifest_differences(old: dict[str, Any], new: dict[str, Any], names: Optional[Mapping[str, str]] = None
                         ) -> list[str]:
    """`setting: old -> new` for each difference: spec fields, encoder digest, videos (count and first
    other id), version. names: the caller's names (spec field, "encoder", "videos" -> `--stride`)."""
    names = names or {}
    old, new = _normalized(old), _normalized(json.loads(json.dumps(new)))  # tuples as the JSON file holds them
    out = []
    o_spec, n_spec = old.get("spec") or {}, new["spec"]
    for k in list(n_spec) + [k for k in o_spec if k not in n_spec]:
        if o_spec.get(k) != n_spec.get(k):
            out.append(f"{names.get(k, k)}: {o_spec.get(k)!r} -> {n_spec.get(k)!r}")
    if old.get("encoder") != new["encoder"]:
        out.append(f"{names.get('encoder', 'encoder weights')}: {str(old.get('encoder'))[:12]} -> {new['encoder'][:12]}")
    o_ids, n_ids = list(old.get("video_ids") or []), new["video_ids"]
    if o_ids != n_ids:
        first = next((i for i, (a, b) in enumerate(zip(o_ids, n_ids)) if a != b), None)
        other = f" (first other: {o_ids[first]!r} -> {n_ids[first]!r})" if first is not None else ""
        out.append(f"{names.get('videos', 'videos')}: {len(o_ids)} -> {len(n_ids)}{other}")
    o_r = old.get("video_ranges") or [[None, None]] * len(o_ids)  # absent: every unit a whole file
    n_r = new.get("video_ranges") or [[None, None]] * len(n_ids)
    if o_ids == n_ids and o_r != n_r:
        i = next(i for i, (a, b) in enumerate(zip(o_r, n_r)) if a != b)
        out.append(f"{names.get('videos', 'videos')}: frame range of {n_ids[i]!r}: {o_r[i]} -> {n_r[i]}")
    if old.get("version") != new["version"]:
        out.append(f"manifest version: {old.get('version')!r} -> {new['version']!r}")
    if not out and old != new:  # a field only a damaged or foreign manifest differs in
        out += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return out


MANIFEST_KEYS = ("version", "spec", "encoder", "video_ids", "num_shards")  # what `manifest` writes


def check_output_folder(out_dir: str | os.PathLike, what: str = "output folder") -> None:
    """Refuse an output folder whose files are not an extraction's, each naming it: LockError for a
    file at `out_dir` (`locks.check_kind`), RunFolderError for a run folder or a folder inside one
    (`locks.refuse_inside_run`), ExtractError for a non-empty folder without manifest.json, naming
    up to 5 of its files (a user's files could be replaced; writers' temp files aside)."""
    check_kind(out_dir, what, folder=True)
    refuse_inside_run(out_dir, what)
    out = Path(out_dir)
    held = sorted(p.name for p in out.iterdir() if not is_temp(p.name)) if out.is_dir() else []
    if held and not (out / "manifest.json").is_file():
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise ExtractError(f"{out} ({what}): not empty ({shown}) and holds no manifest.json, so it is not an "
                           f"extraction; its files could be replaced; choose another {what}")


def _read_manifest(path: Path, what: str) -> dict[str, Any]:
    """The extraction manifest at `path`; ExtractError naming it when it is not one (unreadable
    JSON, or without `MANIFEST_KEYS`: a user's own manifest.json)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or any(k not in old for k in MANIFEST_KEYS):
        raise ExtractError(f"{path}: not an extraction's manifest (no {', '.join(MANIFEST_KEYS)}), so its folder "
                           f"is not an extraction; choose another {what} or remove that file")
    return old


def _claim_folder(out_dir: Path, m: dict[str, Any], names: Optional[Mapping[str, str]] = None,
                  what: str = "output folder") -> None:
    """Write the manifest, or ExtractError naming each setting the folder's own differs in (or
    the folder's other files, `check_output_folder`; a manifest that is not one, `_read_manifest`)."""
    path = out_dir / "manifest.json"
    check_output_folder(out_dir, what)
    if path.is_file():
        old = _read_manifest(path, what)
        diffs = manifest_differences(old, m, names)
        if diffs:
            raise ExtractError(f"{out_dir} holds another extraction, made with other settings (that one -> this "
                               f"run): {'; '.join(diffs)}; choose another {what} or remove that folder")
        return
    atomic_write_text(path, json.dumps(m, indent=2, sort_keys=True))


def _shard_done(path: Path, key: str, videos: Optional[str] = None) -> bool:
    """A finished shard of this extraction (written whole, by the same manifest) and, given
    `videos` (the fingerprint of its videos' files), of these very files."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # a damaged file is redone
        return False
    return meta.get("manifest") == key and (videos is None or meta.get("videos") == videos)


def _shard_unreadable(path: Path) -> list[dict]:
    """The unreadable videos a finished shard lists in its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["unreadable"])


def _listed_before(path: Path, key: str) -> set[tuple[str, str]]:
    """(video id, path) of each unreadable video a shard of this extraction listed before it is
    redone (its files changed): a rerun reports as new only the others."""
    return {(u["video_id"], u["path"]) for u in _shard_unreadable(path)} if _shard_done(path, key) else set()


def _write_shard(path: Path, key: str, rows: list[tuple[int, VideoFeatures]], unreadable: list[dict],
                 videos: str = "", feature_dims: Sequence[int] = (0,)) -> None:
    """One shard: features and index tensors of its videos' windows, unreadable ones and the
    fingerprint of its videos' files (`videos`) in metadata (keys sorted: the same shard is the
    same bytes). feature_dims: a window's feature shape ([D] or [N, D]), for a shard without rows."""
    from safetensors.torch import save_file

    feats = [vf.features for _, vf in rows]
    cols: dict[str, list] = {k: [] for k in INDEX_KEYS}
    for v, vf in rows:
        w = len(vf.start_frame)
        cols["video"].append(np.full(w, v, np.int64))
        cols["window"].append(np.arange(w, dtype=np.int64))
        for k in ("start_frame", "end_frame", "start_sec", "end_sec"):
            cols[k].append(np.asarray(getattr(vf, k)))
    tensors = {"features": torch.cat(feats).contiguous() if feats else torch.zeros(0, *feature_dims)}
    for k, parts in cols.items():
        dtype = np.float64 if k.endswith("_sec") else np.int64
        tensors[k] = torch.from_numpy(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
    with atomic_path(path, own_folder=True) as tmp:  # save_file makes a temp of its own
        save_file(tensors, str(tmp), metadata={"manifest": key, "unreadable": json.dumps(unreadable),
                                                 "videos": videos})
        _sort_header(Path(tmp))


def _sort_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys (and the metadata's) sorted: the
    library writes the metadata in a per-process hash order, so a re-written shard differed in bytes."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header = {k: (dict(sorted(v.items())) if k == "__metadata__" else v) for k, v in sorted(header.items())}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the same entries in another order: the same length, padded as the library pads
            f.seek(8)
            f.write(text.ljust(size))
            return
        data = f.read()
    text = text.ljust(-(-len(text) // 8) * 8)  # the data stays 8-byte aligned
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


@dataclass
class ExtractSummary:
    """What one call did: shards written and skipped (already done); the unreadable videos of
    all those shards (skipped ones' included: the folder's, for this rank) and the new ones (of the
    shards it wrote, not listed by the shard it replaced)."""

    written: list[int]
    skipped: list[int]
    unreadable: list[dict]
    unreadable_new: list[dict] = dataclasses.field(default_factory=list)


def extract_to_shards(encoder: nn.Module, videos: Sequence[Unit], out_dir: str | os.PathLike,
                      spec: ExtractSpec, *, encoder_digest: str = "", rank: int = 0, world: int = 1,
                      device: Optional[torch.device] = None, progress: bool = False,
                      what: str = "output folder", names: Optional[Mapping[str, str]] = None) -> ExtractSummary:
    """Extract units ((video_id, path) or (video_id, path, start_frame, end_frame), `unit_fields`;
    ids unique) into `out_dir`: this rank's shards (rank, rank + world, ...),
    finished ones skipped; an unreadable or too short video (`VideoError`) is listed, not extracted.
    LockError for a second process on the same rank, or a second job (rank 0 holds the folder; `what`
    names the setting); ExtractError for a folder of other settings (named as `names` gives them)."""
    check_output_folder(out_dir, what)
    with hold(out_dir, what, enabled=rank == 0), hold(shard_target(out_dir, rank, world), what):
        return _extract(encoder, videos, Path(out_dir), spec, encoder_digest, rank, world, device, progress,
                        what, names)


def _extract(encoder: nn.Module, videos: Sequence[Unit], out: Path, spec: ExtractSpec,
             encoder_digest: str, rank: int, world: int, device: Optional[torch.device], progress: bool,
             what: str, names: Optional[Mapping[str, str]]) -> ExtractSummary:
    from tgmae.data.frame_index import VideoError

    m = manifest(videos, spec, encoder_digest)
    remove_stale_temps(out)  # shards of a killed run
    _claim_folder(out, m, names, what)
    key = _manifest_key(m)
    was_training = encoder.training
    encoder.eval()
    summary, dims = ExtractSummary([], [], []), None  # dims: a window's feature shape
    mine = range(rank, m["num_shards"], world)
    bar = _progress(progress, sum(len(_shard_videos(s, spec, len(videos))) for s in mine))
    try:
        for s in mine:
            path = shard_path(out, s, m["num_shards"])
            files = videos_fingerprint([videos[v][1] for v in _shard_videos(s, spec, len(videos))])
            if _shard_done(path, key, files):
                summary.skipped.append(s)
                summary.unreadable.extend(_shard_unreadable(path))  # the rerun reports the folder's
                bar.update(len(_shard_videos(s, spec, len(videos))))
                continue
            listed = _listed_before(path, key)
            rows, bad = [], []
            for v in _shard_videos(s, spec, len(videos)):
                vid, vpath, first, stop = unit_fields(videos[v])
                ranged = {"start_frame": first, "end_frame": stop} if (first, stop) != (None, None) else {}
                try:
                    rows.append((v, extract_video(encoder, vpath, spec, device, first, stop)))
                except VideoError as e:
                    bad.append({"video": v, "video_id": vid, "path": str(vpath), **ranged, "kind": e.kind,
                                "reason": str(e),
                                **({"num_frames": e.num_frames} if hasattr(e, "num_frames") else {})})
                bar.update(1)
            dims = dims or (tuple(rows[0][1].features.shape[1:]) if rows else _feature_dims(encoder, spec, device))
            _write_shard(path, key, rows, bad, files, dims)
            summary.written.append(s)
            summary.unreadable.extend(bad)
            summary.unreadable_new.extend(u for u in bad if (u["video_id"], u["path"]) not in listed)
    finally:
        bar.close()
        encoder.train(was_training)
    return summary


def _feature_dims(encoder: nn.Module, spec: ExtractSpec, device: Optional[torch.device]) -> tuple[int, ...]:
    """A window's feature shape, [D] (pooled) or [N, D] (tokens), for a shard without rows: from the
    encoder's `arch` (N from the window and image geometry), else from one forward pass of zeros."""
    arch = getattr(encoder, "arch", None)
    if arch is not None:
        n = (spec.window // arch.tubelet_size) * (spec.image_size // arch.patch_size) ** 2
        return (arch.embed_dim,) if spec.output == "pooled" else (n, arch.embed_dim)
    device = device or next(encoder.parameters()).device
    zeros = torch.zeros(1, 3, spec.window, spec.image_size, spec.image_size, device=device)
    return tuple(encode_windows(encoder, zeros, spec).shape[1:])


def _shard_videos(shard: int, spec: ExtractSpec, n: int) -> range:
    return range(shard * spec.videos_per_shard, min(n, (shard + 1) * spec.videos_per_shard))


def _progress(enabled: bool, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="extract", unit="video", disable=not enabled)


def _finished_shards(out: Path) -> tuple[dict[str, Any], list[Path], list[dict]]:
    """(manifest, shard paths, their unreadable videos) of a finished extraction; ExtractError
    naming a shard that is missing or belongs to another extraction."""
    m = json.loads((out / "manifest.json").read_text())
    key, shards, unreadable = _manifest_key(m), [], []
    for s in range(m["num_shards"]):
        path = shard_path(out, s, m["num_shards"])
        if not _shard_done(path, key):
            raise ExtractError(f"{path}: missing or from another extraction; run the extraction again to finish it")
        unreadable.extend(_shard_unreadable(path))
        shards.append(path)
    return m, shards, unreadable


def read_shards(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Every shard of a finished extraction, concatenated: {features [R, ...], the index
    columns [R] each, video_ids (the manifest's list), unreadable [list of dict]}.
    ExtractError when a shard is missing or belongs to another extraction."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    if not (out / "manifest.json").is_file():
        raise ExtractError(f"{out}: no manifest.json (not an extraction folder)")
    m, shards, unreadable = _finished_shards(out)
    parts = [load_file(str(path)) for path in shards]
    out_t = {k: torch.cat([p[k] for p in parts]) for k in INDEX_KEYS}
    feats = [p["features"] for p in parts if p["features"].shape[0]]
    out_t["features"] = torch.cat(feats) if feats else torch.zeros(0, 0)
    return {**out_t, "video_ids": m["video_ids"], "unreadable": unreadable}


def check_extracted(out_dir: str | os.PathLike, names: Optional[Mapping[str, str]] = None,
                    made_folder: bool = False, tubelet: int = 1) -> None:
    """ExtractError when a finished extraction holds no window (every video too short, naming the
    window, frame step and longest video, and the longest window that fits, a multiple of `tubelet`
    (the encoder's frames per token: any other window is refused); or unreadable), after removing
    its manifest and shards (and the folder when made_folder). names: the caller's names of the
    spec's fields (`--window`)."""
    from safetensors import safe_open

    names = names or {}
    out = Path(out_dir)
    m, shards, unreadable = _finished_shards(out)
    rows = 0
    for path in shards:
        with safe_open(str(path), "pt") as f:
            rows += f.get_slice("features").get_shape()[0]
    if rows or not m["video_ids"]:
        return
    for path in shards + [out / "manifest.json"]:
        path.unlink(missing_ok=True)
    if made_folder:
        try:
            out.rmdir()
        except OSError:  # something else lies there
            pass
    spec, n = m["spec"], len(m["video_ids"])
    short = [u for u in unreadable if u.get("kind") == "too_short"]
    if short:
        win, step_name, step = names.get("window", "window"), names.get("frame_step", "frame_step"), spec["frame_step"]
        span = (spec["window"] - 1) * step + 1
        longest = max(u.get("num_frames", 0) for u in short)
        fits = (longest - 1) // step + 1 if longest else 0  # frames of the longest window that fits
        fits -= fits % tubelet  # a window the encoder takes
        stepped = f" x {step_name}={step}" if step > 1 else ""
        also = f" ({n - len(short)} others unreadable)" if len(short) < n else ""
        whole = f" (a multiple of model.tubelet_size={tubelet})" if tubelet > 1 else ""
        hint = (f"Lower {win} to {fits} or less{whole}" + (f" (or {step_name})" if step > 1 else "") if fits else
                f"no window of model.tubelet_size={tubelet} frames fits" + (f"; lower {step_name}" if step > 1 else ""))
        raise ExtractError(f"{win}={spec['window']}{stepped}: a window spans {span} frames and no video holds one: "
                           f"the longest has {longest} frames{also}; nothing extracted. {hint}")
    first = "; ".join(u["reason"] for u in unreadable[:2]) + (" ..." if len(unreadable) > 2 else "")
    raise ExtractError(f"nothing extracted: none of the {n} videos can be read ({first}); `tgmae data check` "
                       "lists them")


def write_index(out_dir: str | os.PathLike) -> Path:
    """`index.csv` (video_id, row, window, start_frame, end_frame, start_sec, end_sec; row = the
    window's row in `read_shards`' features) and `unreadable.json` of a finished extraction."""
    out = Path(out_dir)
    data = read_shards(out)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video_id", "row", "window", "start_frame", "end_frame", "start_sec", "end_sec"])
    cols = [data[k].tolist() for k in INDEX_KEYS]
    for row, (v, win, f0, f1, t0, t1) in enumerate(zip(*cols)):
        w.writerow([data["video_ids"][v], row, win, f0, f1, repr(t0), repr(t1)])
    atomic_write_text(out / "unreadable.json", json.dumps(data["unreadable"], indent=2))
    atomic_write_text(out / "index.csv", buf.getvalue())
    return out / "index.csv"


def load_frozen_encoder(checkpoint: str | os.PathLike, num_frames: int, image_size: int,
                        num_heads: Optional[int] = None, device: Optional[torch.device] = None
                        ) -> tuple[nn.Module, Any]:
    """(frozen encoder for `num_frames` x `image_size` clips, its `EncoderSource`) from any checkpoint
    `tgmae.weights.sources.load_encoder_source` reads (ours, official, Hugging Face)."""
    from tgmae.weights.sources import load_encoder_source

    src = load_encoder_source(checkpoint, num_heads=num_heads)
    return frozen_encoder(src, num_frames, image_size, device), src


def frozen_encoder(src: Any, num_frames: int, image_size: int, device: Optional[torch.device] = None) -> nn.Module:
    """An `EncoderSource`'s `VideoViTEncoder`, frozen, in eval mode on `device` (default CPU), for
    clips of `num_frames` x `image_size` (no drop path)."""
    from tgmae.models.encoder import VideoViTEncoder

    net = VideoViTEncoder(dataclasses.replace(src.arch, num_frames=num_frames, image_size=image_size,
                                              drop_path=0.0))
    net.load_state_dict(src.encoder)
    return net.requires_grad_(False).to(device or torch.device("cpu")).eval()


def dataset_videos(data_cfg: Any, subsets: Sequence[str]) -> list[tuple[str, str, Optional[int], Optional[int]]]:
    """(video_id, path, start_frame, end_frame) of every record the annotations of `subsets`
    ("train" / "val") name, in annotation order, through the data set's own format (`data.format`):
    one unit per record, so segments of one file (EPIC-Kitchens) and a file under two ids are each
    extracted over their own range. A record listed in both subsets (same id, file and range) is
    extracted once, logged. AnnotationError naming both files (or ranges) and the annotation files
    read (`_list_named`) when one video id names two of them (the index is keyed by it; within one list
    `UniqueIds` refuses that already)."""
    from tgmae.config import ConfigError
    from tgmae.data.annotations import AnnotationError
    from tgmae.data.formats import load_annotations

    videos, owner, both = [], {}, []  # owner: video id -> (unit, annotations)
    for subset in subsets:
        ann = subset_annotations(data_cfg, "train" if subset == "train" else "val")
        if not ann:
            other = "val" if subset == "train" else "train"  # the CLI's --subset (both by default)
            raise ConfigError(f"no annotations for subset {subset!r}: set data.{subset}_annotations, or extract "
                              f"the {other} videos alone (--subset {other})" if len(subsets) > 1 else
                              f"no annotations for subset {subset!r}: set data.{subset}_annotations")
        records, _ = load_annotations(data_cfg.format, data_cfg.root, ann, split=data_cfg.split, subset=subset)
        where = _list_named(data_cfg, subset, ann)
        for r in records:
            unit = (r.video_id, r.path, r.start_frame, r.end_frame)
            first = owner.get(r.video_id)
            if first is None:
                owner[r.video_id] = (unit, where)
                videos.append(unit)
            elif first[0] == unit:
                both.append(r.video_id)
            else:
                raise AnnotationError(f"video id {r.video_id!r} names two videos: {_unit_text(first[0])} ({first[1]}) "
                                      f"and {_unit_text(unit)} ({where}); index.csv and the manifest are keyed by the "
                                      "id, so each video needs its own (rename one, or extract one --subset)")
    if both:
        log.info("%d video(s) listed in both subsets, extracted once each: %s%s", len(both), ", ".join(both[:5]),
                 " ..." if len(both) > 5 else "")
    return videos


def _list_named(data_cfg: Any, subset: str, ann: str) -> str:
    """How a message names the list `subset` read from `ann` (`subset_annotations`): its setting,
    and the file read where the setting does not name it (a split folder's test list, with
    data.val_annotations empty or a folder)."""
    from tgmae.data.formats import _resolve, list_file

    side = "train" if subset == "train" else "val"
    key = f"data.{side}_annotations"
    file = list_file(data_cfg.format, data_cfg.root, ann, data_cfg.split, subset)
    setting = getattr(data_cfg, f"{side}_annotations")
    if not setting:
        return f"{file}, the test list beside data.train_annotations"
    if file == _resolve(Path(data_cfg.root) if data_cfg.root else Path("."), setting):
        return f"{key}={setting}"
    return f"{file} in {key}={setting}"


def _unit_text(unit: Sequence) -> str:
    """A unit's file, with its frame range when it has one."""
    _, path, start, end = unit_fields(unit)
    return path if (start, end) == (None, None) else f"{path} frames [{start or 0}, {'end' if end is None else end})"


@contextmanager
def job_lock(out_dir: str | os.PathLike, what: str, rank: int, world: int) -> Iterator[None]:
    """One job per extract folder: rank 0 holds `out_dir`'s lock; under torchrun every rank learns the
    outcome before any work, and all raise the one LockError naming the holder."""
    from tgmae.evaluate.sharded import all_gather_objects
    from tgmae.locks import LockError, acquire, release

    error = None
    if rank == 0:
        try:
            acquire(out_dir, what, folder=True)
        except LockError as e:
            error = e
    first = all_gather_objects(None if error is None else str(error))[0] if world > 1 else None
    if error is not None:
        raise error
    if first is not None:
        raise LockError(first)
    try:
        yield
    finally:
        if rank == 0:
            release(out_dir)


def _folder_summary(summary: ExtractSummary) -> ExtractSummary:
    """Every rank's summary in one (shards sorted, unreadable videos in video order); the rank's own
    without a process group. A collective: every rank calls it."""
    from tgmae.evaluate.sharded import all_gather_objects

    parts = all_gather_objects(summary)
    if len(parts) == 1:
        return summary
    joined = {f.name: [x for p in parts for x in getattr(p, f.name)] for f in dataclasses.fields(ExtractSummary)}
    return ExtractSummary(sorted(joined["written"]), sorted(joined["skipped"]),
                          sorted(joined["unreadable"], key=lambda u: u["video"]),
                          sorted(joined["unreadable_new"], key=lambda u: u["video"]))


def extract_dataset(cfg: Any, out_dir: str | os.PathLike, spec: ExtractSpec, subsets: Sequence[str],
                    names: Optional[Mapping[str, str]] = None, given: Optional[Collection[str]] = None
                    ) -> tuple[ExtractSummary, Optional[Path]]:
    """`tgmae extract`: `cfg.model.pretrained`'s frozen encoder over the videos of `subsets` into
    `out_dir` (this rank's shards); then rank 0 runs `check_extracted` and `write_index`. Returns
    (the folder's summary, every rank's gathered; the index path on rank 0 else None). names: the
    command's flag names. given: the dotted keys the user set; the model keys among the others are
    the weights' (`with_checkpoint_model`; None: none), one set against them a ConfigError naming it."""
    from tgmae.config import ConfigError
    from tgmae.distributed import init_distributed
    from tgmae.models.arch import check_checkpoint_geometry, size_from_checkpoint, with_checkpoint_model
    from tgmae.weights.sources import load_encoder_source

    names = names or {}
    if not cfg.model.pretrained:
        raise ConfigError("model.pretrained must name the checkpoint whose encoder extracts the features")
    check_output_folder(out_dir, "--out")  # before the encoder is loaded
    if (Path(out_dir) / "manifest.json").is_file():
        _read_manifest(Path(out_dir) / "manifest.json", "--out")
    src = load_encoder_source(cfg.model.pretrained, num_heads=cfg.model.num_heads)
    model, note = with_checkpoint_model(cfg.model, src.arch, given)
    if note:
        log.info("model.pretrained=%s: %s", cfg.model.pretrained, note)
        cfg = dataclasses.replace(cfg, model=model)
    check_checkpoint_geometry(cfg.model, src.arch, cfg.model.pretrained)  # as probe / finetune refuse it
    if spec.window % cfg.model.tubelet_size:  # before any work, at the tubelet the checkpoint agrees with
        raise ConfigError(f"{names.get('window', 'window')}={spec.window}: must be a multiple of "
                          f"model.tubelet_size={cfg.model.tubelet_size} (frames per token)")
    if note := size_from_checkpoint(cfg.model, src.arch):
        log.info("%s: %s", cfg.model.pretrained, note)
    dist = init_distributed(cfg.train.device)
    made_folder = not Path(out_dir).exists()
    with job_lock(out_dir, "--out", dist.rank, dist.world_size), \
            hold(shard_target(out_dir, dist.rank, dist.world_size), "--out"):  # before any work: a busy folder
        videos = dataset_videos(cfg.data, subsets)
        encoder = frozen_encoder(src, spec.window, spec.image_size, dist.device)
        summary = extract_to_shards(encoder, videos, out_dir, spec, encoder_digest=src.digest(), rank=dist.rank,
                                    world=dist.world_size, device=dist.device,
                                    progress=cfg.log.progress and dist.is_main, what="--out",
                                    names={"encoder": "model.pretrained's weights", **names})
    summary = _folder_summary(summary)  # also the barrier: every rank's shards are written
    if not dist.is_main:
        return summary, None
    # a window no video holds: an error, not an empty index
    check_extracted(out_dir, names, made_folder, cfg.model.tubelet_size)
    return summary, write_index(out_dir)
