"""Datasets: records + DataConfig -> sample dicts as specified in docs/CONTRACTS.md.

`VideoDataset`: one augmented clip per index; `MultiViewDataset`: every temporal x spatial test
view of a video. Each sample's generator is seeded by (seed, epoch, index, attempt), independent
of the workers. Unreadable videos are logged once per path and run (`tgmae.data.seen`), counted
and replaced by another seeded index up to `max_load_retries` (then `VideoLoadError`); with
`substitute = False` (evaluation) they give a placeholder of the right shapes with `unreadable`
True, `load_error` and `load_kind` (the VideoError kind, "" for a read error that is no verdict).
`data.cache=memory|disk` reads from `tgmae.data.cache`, bit-identically.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from tgmae.config import ConfigError, DataConfig
from tgmae.data.annotations import (UNLABELLED, AnnotationError, VideoRecord, annotated_texts, clip_key,
                                    clip_range)
from tgmae.data.formats import load_annotations
from tgmae.data.cache import ClipCache, build_clip_cache
from tgmae.data.sampling import clip_indices, clip_span, temporal_views
from tgmae.data.seen import SeenVideos
from tgmae.data.shm import share_memory
from tgmae.data.transforms import EvalTransform, FinetuneTransform, PretrainTransform
from tgmae.data.frame_index import error_text, record_frame_range
from tgmae.data.lengths import check_clip_fits
from tgmae.data.video import VideoError, VideoReader
from tgmae.data.views import collate_views, gather_views, view_generators
from tgmae.errors import UserError, count
from tgmae.lifetime import quiet_worker_stops, workers_starting
from tgmae.mask_contract import MaskContext, MaskGenerator

log = logging.getLogger(__name__)



class VideoLoadError(RuntimeError, UserError):
    """No readable video found within `max_load_retries` replacements."""


class CaptionProvider(Protocol):
    """What the dataset needs from the captions module."""

    def draw(self, video_id: str, generator: torch.Generator) -> tuple[int, Optional[torch.Tensor]]: ...


def sample_generator(seed: int, epoch: int, index: int, attempt: int, stream: int = 0) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch, index, attempt[, stream]) by SeedSequence
    hashing: nearby tuples give unrelated streams."""
    words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in (seed, epoch, index, attempt, stream)]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))
    return g


def keep_freed_memory() -> bool:
    """glibc only (elsewhere a no-op, False): keep freed memory in the process (mallopt M_MMAP_THRESHOLD
    256 MiB, M_TRIM_THRESHOLD 1 GiB), so each sample's ~10 MB buffers do not fault afresh
    (docs/benchmarks.md). For DataLoader workers (`loader_worker_init`)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc's: musl / macOS have no such mallopt parameters
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 256 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def loader_worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn` of every loader the project makes (`Loader`): `keep_freed_memory`,
    and a stop left to the parent (`lifetime.quiet_worker_stops`: Ctrl-C ignored, SIGTERM a quiet
    exit). A stop sent to a worker still starting (before this runs) is held until here."""
    keep_freed_memory()
    quiet_worker_stops()


class Loader(DataLoader):
    """The DataLoader of every loader the project makes (the training loop's,
    `evaluate.sharded.map_dataset`'s): `loader_worker_init` in each worker, and its workers started
    under `lifetime.workers_starting` (a stop then is raised once they have all started, and each
    worker holds one until its init has run: re-trial 30A T1). Takes DataLoader's arguments but
    `worker_init_fn`."""

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(dataset, worker_init_fn=loader_worker_init, **kwargs)

    def _get_iterator(self):
        """A new iterator: with workers, the one place they fork (a persistent one is made once)."""
        if self.num_workers == 0:
            return super()._get_iterator()
        with workers_starting():
            return super()._get_iterator()


def _load_errors() -> tuple[type, ...]:
    import av

    return (VideoError, OSError, EOFError, av.FFmpegError)


class _RobustBase(Dataset):
    """Shared: epoch counter visible to workers, retry-and-replace loading, failure logging.
    Subclasses define `_load(idx, generator) -> sample dict` raising a load error on bad input."""

    def __init__(self, records: Sequence[VideoRecord], cfg: DataConfig, seed: int, min_frames: Optional[int],
                 replaced: bool = False):
        if not records:
            raise ValueError("dataset has no records")
        self.records = list(records)
        self.cfg = cfg
        self.seed = seed
        self.min_frames = cfg.num_frames if min_frames is None else min_frames
        # at set-up, not after every item's retries: a clip longer than every video, or for a training
        # set (`replaced`: short rows are replaced by draws that run out) than most (`data.lengths`)
        check_clip_fits(self.records, self.min_frames, self._clip_setting(), replaced)
        # shared with DataLoader workers (cfg.num_workers: the loader built from the same config);
        # without workers in /dev/shm for nothing, where a small one fails the run
        shared = cfg.num_workers > 0
        self._logged = SeenVideos(shared=shared)  # unreadable paths already logged, by any worker
        self._short = SeenVideos(shared=shared)  # paths read with a smaller stride (`short_videos`)
        self._epoch = torch.zeros(1, dtype=torch.int64)  # workers see set_epoch
        if shared:
            share_memory(self._epoch, "the dataset's epoch counter")
        self.failures = 0  # in this process; DataLoader users sum the samples' load_failures
        self._errors = _load_errors()
        self._targets = sorted(self.records[0].targets)
        self.substitute = True  # False: report an unreadable video (placeholder) instead of replacing it

    def __len__(self) -> int:
        return len(self.records)

    def _clip_setting(self) -> str:
        """`data.num_frames=N`, with the clip's frames where they differ, for messages."""
        n = self.cfg.num_frames
        return f"data.num_frames={n}" + (f" (a clip of {self.min_frames} frames)" if self.min_frames != n else "")

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (also seen by persistent workers: the counter is shared)."""
        self._epoch[0] = int(epoch)

    @property
    def short_videos(self) -> int:
        """Videos read so far (by this process and its DataLoader workers) whose range is shorter
        than a dense clip's span, so read with a smaller stride (`sampling.dense_indices`)."""
        return self._short.count()

    def _frame_range(self, rec: VideoRecord, num_frames: int) -> tuple[int, int]:
        start, end = record_frame_range(rec.path, rec.start_frame, rec.end_frame, num_frames)  # never clipped
        if end - start < self.min_frames:
            raise VideoError(
                f"{rec.path}: too short: {max(end - start, 0)} frames in range [{start}, {end}), need {self.min_frames}",
                "too_short")
        self._note_short(rec, end - start)
        return start, end

    def _note_short(self, rec: VideoRecord, have: int) -> None:
        """Count a video whose range (`have` frames) is shorter than a dense clip's span, once per
        video (`short_videos`); the first one met is said once per run (the frame count comes
        with the decode: no extra header read)."""
        cfg = self.cfg
        span = clip_span(cfg.num_frames, cfg.frame_stride)
        if cfg.sampling != "dense" or have >= span or not self._short.first_time(rec.path):
            return
        if self._short.count() == 1:
            log.warning("%s: %d frames%s, shorter than a clip's %d (data.num_frames=%d, data.frame_stride=%d): "
                        "read with a smaller stride (said for the first one only; `tgmae data check --min-frames %d "
                        "--frame-stride %d` lists every such video)", rec.path, have,
                        " in its range" if rec.start_frame is not None or rec.end_frame is not None else "",
                        span, cfg.num_frames, cfg.frame_stride, cfg.num_frames, cfg.frame_stride)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self.records):
            raise IndexError(index)
        if not self._epoch.is_shared() and get_worker_info() is not None:
            # persistent workers would draw every epoch as the one they were started in
            raise RuntimeError(f"a dataset built with data.num_workers={self.cfg.num_workers} is read by DataLoader "
                               "workers: its epoch counter is not shared with them; build it with the "
                               "loader's num_workers")
        epoch, idx, reasons, kinds = self.epoch, index, [], set()
        for attempt in range(self.cfg.max_load_retries + 1):
            g = sample_generator(self.seed, epoch, idx, attempt)
            try:
                sample = self._load(idx, g)
            except self._errors as e:
                self._note_failure(self.records[idx].path, e)
                if not self.substitute:
                    return self._unreadable(index, e)
                reasons.append(error_text(self.records[idx].path, e))
                kinds.add(getattr(e, "kind", None))
                idx = int(torch.randint(len(self.records), (1,),
                                        generator=sample_generator(self.seed, epoch, index, attempt, 1)))
                continue
            sample["load_failures"] = attempt
            if not self.substitute:
                sample.update(unreadable=False, load_error="", load_kind="")
            return sample
        if kinds == {"too_short"}:  # every try: a clip longer than these videos (a setting, not the files)
            raise self._draws_ran_out(index, reasons)
        short = ""
        if "too_short" in kinds:  # the others unreadable: the videos that open all lack a clip's frames
            short = (f": the readable ones too short for a clip of {self.min_frames} frames "
                     f"(data.num_frames={self.cfg.num_frames}; lower it, or check the videos with "
                     f"`tgmae data check --min-frames {self.min_frames}`)")
        raise VideoLoadError(
            f"index {index}: no readable video after {self.cfg.max_load_retries} replacements "
            f"(data.max_load_retries){short}; last errors: " + " | ".join(dict.fromkeys(reasons[-3:])))

    def _draws_ran_out(self, index: int, reasons: list[str]) -> VideoLoadError:
        """The error of a row whose video and every replacement draw were too short: what ran out
        (data.max_load_retries) and how many rows are too short (`count_short`, read now: the
        failure's cost only), not "no video long enough" where some are (re-trial 30B M2)."""
        from tgmae.data.lengths import count_short

        retries, seen = self.cfg.max_load_retries, count_short(self.records, self.min_frames)
        known, more = f"{seen.text()} are too short by their headers", ", raise data.max_load_retries"
        if seen.short == 0:
            known = "their headers do not tell how many rows are"
        elif seen.short == seen.looked:
            more = ""  # no draw can find a longer one
        else:
            known += ", the others may hold a clip"
        return VideoLoadError(
            f"{self._clip_setting()}: the video of index {index} ({self.records[index].path}) and its {retries} "
            f"replacement draws (data.max_load_retries={retries}) were all too short for a clip of "
            f"{self.min_frames} frames, and the draws ran out; {known}; lower data.num_frames{more}, or leave "
            f"the short videos out (`tgmae data check --min-frames {self.min_frames}` lists them); last: "
            + " | ".join(dict.fromkeys(reasons[-2:])))  # once each

    def _note_failure(self, path: str, err: BaseException) -> None:
        self.failures += 1
        if self._logged.first_time(path):  # once per run: the table is shared with the workers
            log.warning("unreadable video %s: %s", "replaced" if self.substitute else "left out",
                        error_text(path, err))

    def _unreadable(self, idx: int, err: BaseException) -> dict[str, Any]:
        """Placeholder for a video that cannot be read (substitute False): the shapes of a sample."""
        rec, t, size = self.records[idx], self.cfg.num_frames, self.cfg.image_size
        v = getattr(self, "num_temporal", 0) * getattr(self, "num_spatial", 0)
        lead = (v,) if v else ()
        sample = self._base_sample(idx, rec)
        sample.update(video=torch.zeros(*lead, 3, t, size, size), frame_indices=torch.zeros(*lead, t, dtype=torch.int64),
                      crop=torch.zeros(*lead, 7), caption_id=torch.tensor(-1, dtype=torch.int64), load_failures=1,
                      unreadable=True, load_error=error_text(rec.path, err),
                      load_kind=getattr(err, "kind", ""))  # "" for a read error (OSError, FFmpeg) that is no verdict
        if getattr(self, "mask_generator", None) is not None:
            sample["mask"] = torch.zeros(math.prod(self.token_grid), dtype=torch.bool)
        return sample

    def _base_sample(self, idx: int, rec: VideoRecord) -> dict[str, Any]:
        s: dict[str, Any] = {"label": int(rec.label), "index": idx, "video_id": rec.video_id}
        for k in self._targets:
            s[k] = int(rec.targets.get(k, -1))
        return s


class VideoDataset(_RobustBase):
    """One clip per index: `video` float32 [C, T, H, W] and the keys of docs/CONTRACTS.md.

    train: random clip + `augment` ("pretrain": multi-scale crop + flip; "finetune": random
      resized crop + flip + RandAugment + random erasing); otherwise the centre clip, centre crop.
    token_grid / mask_generator: with a generator, each sample carries `mask` [N] bool.
    captions: provider of (caption_id, text_embedding) per video; `caption_id` -1 without one.
    With `cfg.with_motion` and a mask generator, or a generator that needs them (MGM with
      motion_source "codec": reading is turned on, logged once; with a decoded-clip cache, which
      holds none, that is a ConfigError), `MaskContext.motion` is the codec block motion
      float32 [T, Hb, Wb, 2] of the sampled source frames (zeros on I-frames; None for frame
      folders, which carry no motion vectors).
    min_frames: frames a clip's range must hold (default `cfg.num_frames`); shorter = failure.
    cache: a prebuilt `ClipCache` holding the records' videos; by default one is built here when
      `cfg.cache` is "memory" or "disk" (decoding `cfg.num_workers` videos at a time).
    class_names: the classes by label (`build_dataset` gives the annotations'), kept as
      `class_names`; the captions' set-up check compares a store made from class names with them.
    With `cfg.num_sample` = k > 1 (train only) a sample holds k views from one decode
      (`tgmae.data.views`): `video`, `frame_indices`, `crop`, `caption_id` (one caption per
      video) and `mask` are lists of k per-view values; the dataset's `collate`
      (`collate_views`) stacks a batch to [B*k, ...].
    """

    def __init__(self, records: Sequence[VideoRecord], cfg: DataConfig, *, train: bool,
                 token_grid: Optional[tuple[int, int, int]] = None,
                 mask_generator: Optional[MaskGenerator] = None,
                 captions: Optional[CaptionProvider] = None, seed: int = 0,
                 augment: str = "pretrain", min_frames: Optional[int] = None,
                 reader_threads: Optional[int] = None, cache: Optional[ClipCache] = None,
                 class_names: Sequence[str] = ()):
        super().__init__(records, cfg, seed, min_frames, replaced=train)
        if mask_generator is not None and token_grid is None:
            raise ValueError("mask_generator needs token_grid (T', H', W')")
        self.train, self.token_grid, self.mask_generator = train, token_grid, mask_generator
        self.captions, self.class_names = captions, list(class_names)
        check_videos_known(self.records, captions, mask_generator, self.class_names)
        if cfg.num_workers > 0 and getattr(mask_generator, "share_with_workers", None) is not None:
            mask_generator.share_with_workers()  # its state seen by every worker; none in /dev/shm without
        self.reader_threads = cfg.decoder_threads if reader_threads is None else reader_threads
        size = cfg.image_size
        if not train:
            self.transform = EvalTransform(size, cfg.mean, cfg.std)
        elif augment == "pretrain":
            self.transform = PretrainTransform(size, cfg.crop_scales, cfg.mean, cfg.std, flip=cfg.flip)
        elif augment == "finetune":
            self.transform = FinetuneTransform(size, cfg.mean, cfg.std, flip=cfg.flip,
                                               rand_augment=cfg.rand_augment, erase_prob=cfg.random_erase,
                                               crop=cfg.finetune_crop, scale=cfg.finetune_crop_scale,
                                               scales=cfg.crop_scales)
        else:
            raise ValueError(f"augment={augment!r}: expected 'pretrain' or 'finetune'")
        # codec motion vectors: asked for (data.with_motion) or needed by the mask generator (MGM)
        needs = bool(getattr(mask_generator, "needs_motion", False))
        self.read_motion = mask_generator is not None and (cfg.with_motion or needs)
        if needs and not cfg.with_motion:
            if cache is not None or cfg.cache != "none":
                raise ConfigError(f"masking.name=mgm reads codec motion vectors (masking.motion_source=codec), "
                                  f"which the decoded-clip cache (data.cache={cfg.cache!r}) does not hold: set "
                                  "data.cache=none, or masking.motion_source=framediff")
            log.info("masking.name=mgm: reading codec motion vectors (data.with_motion turned on)")
        # repeated sampling (tgmae.data.views): k views per decoded video, training only
        self.num_sample = cfg.num_sample if train else 1
        self.repeat_mode = cfg.repeat_mode
        if self.num_sample > 1:
            self.collate = collate_views
        self.cache = cache if cache is not None else build_clip_cache(
            self.records, cfg.cache, cfg.cache_dir, threads=self.reader_threads, workers=cfg.num_workers)

    def _load(self, idx: int, g: torch.Generator) -> dict[str, Any]:
        rec, k = self.records[idx], self.num_sample
        gens = view_generators(g, k)
        clips = self._clips(rec, gens)
        caption_id, text = -1, None
        views = []
        for v, ((frames, fi, motion), gv) in enumerate(zip(clips, gens)):
            video, crop = self.transform(frames, gv)
            if v == 0 and self.captions is not None:  # one caption per video (tgmae.data.views)
                caption_id, text = self.captions.draw(rec.video_id, g)
            view = {"video": video, "frame_indices": fi, "crop": crop.as_tensor(),
                    "caption_id": torch.tensor(int(caption_id), dtype=torch.int64)}
            if self.mask_generator is not None:
                ctx = MaskContext(grid=self.token_grid, frames=video, frame_indices=fi, crop=crop,
                                  video_id=rec.video_id, text_embedding=text, motion=motion,
                                  caption=self._caption_text(caption_id))
                view["mask"] = self.mask_generator(ctx, gv).to(torch.bool)
            views.append(view)
        sample = self._base_sample(idx, rec)
        sample.update(views[0] if k == 1 else gather_views(views))
        return sample

    def _clips(self, rec: VideoRecord, gens: list[torch.Generator]) -> list[tuple]:
        """One (frames uint8 [T, H, W, 3], frame indices [T], motion or None) per view, from one
        decode: repeat_mode "views" shares view 0's clip; "clips" draws each view's clip indices
        from its generator and decodes their union once."""
        cfg = self.cfg
        draws = gens if self.repeat_mode == "clips" else gens[:1]
        if self.cache is not None:  # same indices, same frames, same generator draws as below
            start, end = self._frame_range(rec, self.cache.num_frames(rec.path))
            fis = [clip_indices(start, end, cfg.num_frames, cfg.frame_stride, cfg.sampling,
                                train=self.train, generator=gv) for gv in draws]
            frames, motion = self.cache.read(rec.path, torch.cat(fis).numpy()), None
        else:
            frames, fis, motion = self._decode(rec, draws, self.read_motion)
        t = cfg.num_frames
        clips = [(frames[j * t:(j + 1) * t], fi, None if motion is None else motion[j * t:(j + 1) * t])
                 for j, fi in enumerate(fis)]
        return clips if len(clips) == len(gens) else clips * len(gens)

    def _caption_text(self, caption_id: int) -> Optional[str]:
        """The text of a drawn caption id, None without one (or from a provider without `texts`)."""
        texts = getattr(self.captions, "texts", None)
        return texts[caption_id] if texts is not None and caption_id >= 0 else None

    def _decode(self, rec: VideoRecord, gens: list[torch.Generator], want_motion: bool):
        """Clip indices from each generator, decoded in one read -> (frames uint8 [len * T, H, W, 3],
        frame indices [T] per generator, motion [len * T, Hb, Wb, 2] or None)."""
        cfg = self.cfg
        with VideoReader(rec.path, threads=self.reader_threads) as reader:
            start, end = self._frame_range(rec, reader.info.num_frames)
            fis = [clip_indices(start, end, cfg.num_frames, cfg.frame_stride, cfg.sampling,
                                train=self.train, generator=g) for g in gens]
            wanted = torch.cat(fis).numpy()
            motion = None
            if want_motion and not reader.info.is_frame_folder:
                frames, mvs = reader.read(wanted, with_motion=True)
                motion = _stack_motion(mvs)
            else:
                frames = reader.read(wanted)
        return frames, fis, motion


def _stack_motion(mvs: list[Optional[np.ndarray]]) -> torch.Tensor:
    """Per-frame [Hb, Wb, 2] (None on I-frames) -> float32 [T, Hb, Wb, 2]; I-frames are zeros."""
    shape = next((m.shape for m in mvs if m is not None), None)
    if shape is None:
        return torch.zeros((len(mvs), 1, 1, 2))
    return torch.from_numpy(np.stack([m if m is not None else np.zeros(shape, np.float32) for m in mvs]))


class MultiViewDataset(_RobustBase):
    """Multi-view testing: `video` float32 [V, C, T, H, W], V = temporal x spatial views
    (temporal-major: view v = t * S + s), `frame_indices` int64 [V, T], `crop` float32 [V, 7].

    Temporal views follow `cfg.sampling` (dense: clips spread start to end; tsn: frame offsets
    within the segments); spatial views are short-side squares along the long side. All frames
    are decoded in one pass.
    """

    def __init__(self, records: Sequence[VideoRecord], cfg: DataConfig, *, seed: int = 0,
                 temporal_views: Optional[int] = None, spatial_views: Optional[int] = None,
                 min_frames: Optional[int] = None, reader_threads: int = 1):
        super().__init__(records, cfg, seed, min_frames)
        self.num_temporal = temporal_views or cfg.test_temporal_views
        self.num_spatial = spatial_views or cfg.test_spatial_views
        self.reader_threads = reader_threads
        self.transform = EvalTransform(cfg.image_size, cfg.mean, cfg.std, num_views=self.num_spatial)

    def _load(self, idx: int, g: torch.Generator) -> dict[str, Any]:
        rec, cfg = self.records[idx], self.cfg
        with VideoReader(rec.path, threads=self.reader_threads) as reader:
            start, end = self._frame_range(rec, reader.info.num_frames)
            fi = temporal_views(start, end, cfg.num_frames, cfg.frame_stride, self.num_temporal, cfg.sampling)
            frames = reader.read(fi.reshape(-1).numpy())  # [Tv * T, H, W, 3]
        t = cfg.num_frames
        videos, crops = [], []
        for k in range(self.num_temporal):
            v, c = self.transform.views(frames[k * t:(k + 1) * t])
            videos.append(v)
            crops += [p.as_tensor() for p in c]
        sample = self._base_sample(idx, rec)
        sample.update(video=torch.cat(videos), frame_indices=fi.repeat_interleave(self.num_spatial, 0),
                      crop=torch.stack(crops), caption_id=torch.tensor(-1, dtype=torch.int64))
        return sample


def check_videos_known(records: Sequence[VideoRecord], captions: Optional[CaptionProvider],
                       mask_generator: Optional[MaskGenerator], class_names: Sequence[str] = ()) -> None:
    """At set-up, not in a DataLoader worker at step N: the caption provider and the mask
    generator know every record's video (their `check_videos` where they have one: captions
    for each video, captioned from the record's file and frames where the store records them, and
    from its caption and class (`class_names`, by label) where made from those (`annotated_texts`);
    a TGM similarity cache's maps, made from the record's file, and captions). They raise a
    UserError naming the videos and the file."""
    ids = [r.video_id for r in records]
    paths = {r.video_id: r.path for r in records}
    if getattr(captions, "check_videos", None) is not None:  # captions of these very files, frames and texts
        captions.check_videos(ids, paths, {r.video_id: clip_range(r) for r in records},
                              annotated_texts(records, class_names))
    if getattr(mask_generator, "check_videos", None) is not None:  # maps made from these very files
        mask_generator.check_videos(ids, paths)


SPLIT_FOLDER_FORMATS = ("ssv2", "ucf101", "hmdb51", "diving48")  # train and test lists side by side


def subset_annotations(cfg: DataConfig, subset: str) -> str:
    """The annotations a subset reads ("" = none): "train" `cfg.train_annotations`; "val"/"test"
    `cfg.val_annotations`, or for a split-folder format (`SPLIT_FOLDER_FORMATS`) with that empty,
    the folder of the train annotations, read for the subset (testlistNN.txt beside
    trainlistNN.txt; never the train list file itself). ConfigError when a UCF101 train list file's
    split number is not `data.split` and the test list comes from a folder (it would be another
    split's)."""
    if subset == "train":
        return cfg.train_annotations
    if cfg.format not in SPLIT_FOLDER_FORMATS or not cfg.train_annotations:
        return cfg.val_annotations
    from tgmae.data.formats import _resolve

    root = Path(cfg.root) if cfg.root else Path(".")
    given = _resolve(root, cfg.train_annotations)
    numbered = re.fullmatch(r"trainlist(\d+)\.txt", given.name)
    val_is_folder = not cfg.val_annotations or _resolve(root, cfg.val_annotations).is_dir()
    if cfg.format == "ucf101" and numbered and int(numbered.group(1)) != cfg.split and val_is_folder:
        raise ConfigError(f"data.split={cfg.split}: data.train_annotations names {given.name} (split "
                          f"{int(numbered.group(1))}), so the test list would be another split's; set "
                          "data.split to match, or data.val_annotations")
    if cfg.val_annotations:
        return cfg.val_annotations
    return str(given.parent) if given.is_file() else cfg.train_annotations


def _listed(cfg: DataConfig, subset: str, data: Optional[Dataset]) -> Optional[list[VideoRecord]]:
    """The records of `data` (None for a dataset without records), else those `cfg` names for the
    subset, rows that do not read left out (their refusal is the dataset's); None when none are named
    or the list does not read (then there is nothing to compare)."""
    if data is not None:
        return getattr(data, "records", None)
    read = _read_subset(cfg, subset)
    return None if read is None else read[0]


def _read_subset(cfg: DataConfig, subset: str) -> Optional[tuple[list[VideoRecord], list[str]]]:
    """(records, class names) of the list `cfg` names for the subset, rows that do not read left
    out; None when none is named or it does not read (its own refusal is the dataset's)."""
    ann = subset_annotations(cfg, subset)
    if not ann:
        return None
    try:
        return load_annotations(cfg.format, cfg.root, ann, split=cfg.split, subset=subset, on_error="skip",
                                problems=[])
    except AnnotationError:
        return None


def list_key(cfg: DataConfig, subset: str) -> str:
    """The setting that names the list a subset reads, for messages: `data.train_annotations=X`,
    `data.val_annotations=X`, or for a split-folder test list read beside the train list
    `data.val_annotations empty (the test list of FOLDER)` (`subset_annotations`)."""
    if subset == "train":
        return f"data.train_annotations={cfg.train_annotations}"
    if cfg.val_annotations:
        return f"data.val_annotations={cfg.val_annotations}"
    return f"data.val_annotations empty (the test list of {subset_annotations(cfg, subset)})"


def refuse_unlabelled(cfg: DataConfig, subset: str, data: Optional[Dataset] = None, *, use: str) -> None:
    """ConfigError, in one line naming the list's key and file (`list_key`), when every record of
    the subset's list (`data`'s records, else the list `cfg` names, read: no video is opened) is
    UNLABELLED: a test list shipped without labels (SSv2 test.json, Kinetics test.csv without a
    label column) scored every prediction wrong (the k-NN probe: top-1 0.0, exit 0) or failed after
    decoding every video ("labels must lie in [0, K)"; re-trial 29B S2, T2). `use`: why this command
    needs the labels (e.g. "tgmae evaluate scores its videos against their labels"). A list with
    some unlabelled records is refused too, naming the first (a head trained on label -1 crashed,
    "Target -1 is out of bounds": re-trial 29B T1; scored, they would count as wrong). For every
    command that trains on labels (train) or scores them (val/test), at set-up; pretraining, extract
    and caption retrieval read such lists. No list, a dataset without records or a list that does
    not read (its own refusal is the dataset's) passes."""
    records = _listed(cfg, subset, data)
    missing = [r for r in records or [] if r.label == UNLABELLED]
    if not missing:
        return
    if len(missing) < len(records):
        raise ConfigError(f"{list_key(cfg, subset)}: {len(missing)} of its {count(len(records), 'video')} have no "
                          f"label (first: {missing[0].video_id!r}), and {use}: label them or leave them out")
    raise ConfigError(f"{list_key(cfg, subset)} has no labels (a test list, {count(len(records), 'video')} without "
                      f"a label), and {use}: name a list with labels")


def refuse_unnamed_classes(cfg: DataConfig, subset: str, data: Optional[Dataset] = None, *, need: str) -> None:
    """AnnotationError, in one line naming the list's key and file (`list_key`), when the classes of
    the subset's list (`data`'s `class_names`, else those of the list `cfg` names, read: no video is
    opened) have no names (numbers only; `tgmae.data.formats.require_class_names`), for a command
    that embeds them as text (class retrieval: re-trial 30B S2), at set-up. `need`: why, and the
    way round. No list, or one that does not read (its own refusal is the dataset's), passes."""
    from tgmae.data.formats import require_class_names

    if data is not None:
        names = list(getattr(data, "class_names", None) or [])
    else:
        read = _read_subset(cfg, subset)
        names = [] if read is None else read[1]
    require_class_names(names, cfg.format, cfg.root, subset_annotations(cfg, subset), need, split=cfg.split,
                        subset=subset, listed=list_key(cfg, subset))


def refuse_training_videos_as_test(cfg: DataConfig, test: Optional[Dataset] = None,
                                   train: Optional[Dataset] = None, *,
                                   trained_on: Optional[tuple[DataConfig, str]] = None, own_checked: bool = True) -> None:
    """ConfigError, naming data.val_annotations and data.train_annotations, when every clip of the
    val/test set (`test`, else `subset_annotations(cfg, "val")` read) is a clip of the training set
    (`train`, else `cfg.train_annotations` read): the same list file, or a split-folder train list that
    is the test list itself (UCF101 testlistNN.txt, SSv2 validation.json with data.val_annotations
    empty), would score the videos the model trained on. Nothing to compare (no val list, a dataset
    without records, a list that does not read) passes; some shared clips pass with a warning naming
    how many.

    trained_on: (the data settings a checkpoint was trained with, where they are written - its run's
    config.yaml): the training list compared is theirs (`train`, else their train_annotations read),
    and the refusal names it with that file; the same list as `cfg`'s passes when `own_checked` (the
    caller checks `cfg`'s own list too). A list of theirs that does not read is warned about."""
    of = list_key(cfg, "train")
    train_cfg = cfg
    if trained_on is not None:
        train_cfg, where = trained_on
        if train is None and own_checked and _same_list(train_cfg, cfg):  # the caller's own check says it
            return
        of = f"data.train_annotations={train_cfg.train_annotations} in {where}"
    test_records = _listed(cfg, "val", test)
    if not test_records:
        return
    val = list_key(cfg, "val")
    root = os.path.abspath(cfg.root or ".")
    train_records = _listed(train_cfg, "train", train)
    if not train_records:
        if trained_on is not None:  # a checkpoint's list gone or relative to another folder: the check is not made
            _warn_once(root, f"{val}: not compared with the training videos of {of} (that list does not read from "
                             f"here, data.root={train_cfg.root!r}); a test of videos the model trained on would go unnoticed")
        return
    train_clips = {clip_key(r) for r in train_records}
    shared = [r for r in test_records if clip_key(r) in train_clips]
    if len(shared) < len(test_records):
        if shared:  # a leak the user may not know of: said (once), the test goes on (part of some official splits)
            n = len(shared)
            _warn_once(root, f"{val}: {n} of its {len(test_records)} videos "
                             f"{'is a training video' if n == 1 else 'are training videos'} of {of} "
                             f"(first: {shared[0].video_id}); their scores are of videos the model trained on")
        return
    other = "" if trained_on is None else ", or start from a model that did not train on them (model.pretrained)"
    raise ConfigError(f"{val}: its {len(test_records)} videos are all training videos "
                      f"of {of}; a test there scores what the model trained on (a pretraining without labels "
                      f"too): name a test list of other videos{other}")


@functools.lru_cache(maxsize=None)
def _warn_once(root: str, message: str) -> None:
    """A warning said once per process and data root (set-up and test both check the same lists)."""
    log.warning("%s", message)


def _same_list(a: DataConfig, b: DataConfig) -> bool:
    """Whether two data settings name the same training list (format, root, file, split)."""
    return ((a.format, os.path.abspath(a.root or "."), a.train_annotations, a.split)
            == (b.format, os.path.abspath(b.root or "."), b.train_annotations, b.split))


def build_dataset(cfg: DataConfig, subset: str = "train", *, train: Optional[bool] = None,
                  multi_view: bool = False, **kwargs) -> Dataset:
    """Annotations named by `cfg` -> dataset. subset "train" reads `cfg.train_annotations`;
    "val"/"test" read `cfg.val_annotations` (for split-folder formats an empty value reads the
    folder of the train annotations for that subset: testlistNN.txt beside trainlistNN.txt, never
    the train list itself). `train` defaults to subset == "train". Extra keyword arguments
    go to the dataset class. The dataset's `class_names` attribute lists the classes."""
    is_train = subset == "train"
    ann = subset_annotations(cfg, subset)
    if not ann:
        key = "train_annotations" if is_train else "val_annotations"
        raise ConfigError(f"no annotations for subset {subset!r}: set data.{key}")
    records, classes = load_annotations(cfg.format, cfg.root, ann, split=cfg.split, subset=subset)
    if not records:
        raise AnnotationError(f"{ann}: no {subset} records (format {cfg.format}, split {cfg.split})")
    if multi_view:
        ds: Dataset = MultiViewDataset(records, cfg, **kwargs)
    else:
        ds = VideoDataset(records, cfg, train=is_train if train is None else train, class_names=classes, **kwargs)
    ds.class_names = classes  # type: ignore[attr-defined]
    return ds
