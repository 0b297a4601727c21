"""Frozen-encoder features per video (per clip, per sliding window, or the token grid), written as
safetensors shards plus an index (the folder's files: `tgmae.evaluate.feature_shards`).

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
where no unit fits is an error (`feature_shards.check_extracted`).
Pixels: centre crop of the short side then resize ("center_crop", as `EvalTransform`) or the whole
frame resized ("squash", as VideoMAEv2's TAD script), bilinear + antialias, encoder mean / std.
Outputs per window: "pooled" mean token [D] or "tokens" [N, D], float32. Times: first / last frame
read (inclusive) and their presentation times in seconds (frame / fps without exact pts; NaN for a
frame folder).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from tgmae.atomic import remove_stale_temps
from tgmae.data.sampling import clip_indices
from tgmae.data.transforms import crop_resize, normalize, spatial_view_boxes
from tgmae.data.video import VideoInfo, VideoReader
from tgmae.evaluate.feature_shards import (Unit, VideoFeatures, check_extracted, check_output_folder, claim_folder,
                                          listed_before, manifest, manifest_key, read_manifest, shard_done, shard_path,
                                          shard_unreadable, unit_fields, write_index, write_shard)
from tgmae.locks import hold, shard_target
from tgmae.train.precision import autocast
from tgmae.data.dataset import subset_annotations
from tgmae.data.fileid import videos_fingerprint

log = logging.getLogger("tgmae")


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
    claim_folder(out, m, names, what)
    key = manifest_key(m)
    was_training = encoder.training
    encoder.eval()
    summary, dims = ExtractSummary([], [], []), None  # dims: a window's feature shape
    mine = range(rank, m["num_shards"], world)
    bar = _progress(progress, sum(len(_shard_videos(s, spec, len(videos))) for s in mine))
    try:
        for s in mine:
            path = shard_path(out, s, m["num_shards"])
            files = videos_fingerprint([videos[v][1] for v in _shard_videos(s, spec, len(videos))])
            if shard_done(path, key, files):
                summary.skipped.append(s)
                summary.unreadable.extend(shard_unreadable(path))  # the rerun reports the folder's
                bar.update(len(_shard_videos(s, spec, len(videos))))
                continue
            listed = listed_before(path, key)
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
            write_shard(path, key, rows, bad, files, dims)
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
    from tgmae.weights.files import require_pretrained
    from tgmae.weights.sources import load_encoder_source

    names = names or {}
    check_output_folder(out_dir, "--out")  # before the encoder is loaded
    if (Path(out_dir) / "manifest.json").is_file():
        read_manifest(Path(out_dir) / "manifest.json", "--out")
    require_pretrained(cfg.model.pretrained, "the checkpoint whose encoder extracts the features")
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
