"""`tgmae caption` with a captioner: one caption per keyframe of each video.

N uniformly spaced keyframes per video (segment centres of the clip's frame range); batch-size
videos -> batch-size x N images per generate call, while a thread pool decodes the next ones.
Output is appended and flushed per batch: a rerun skips videos already in the output (or in the
errors file, unless --retry-errors), and a kill loses at most the batch in flight. Each record
holds its video's identity and content key (`video`, `content`: `tgmae.data.fileid.video_stamp`) and its clip's frame range
(`frames`: `tgmae.data.annotations.clip_range`): a video replaced in place since, or a row whose
start_frame / end_frame changed, is captioned again. Videos that
fail to decode go to `<out stem>.errors.jsonl` ({"video_id", "path", "error", "video", "frames"}):
one whose file or range changed since is tried again.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from tgmae.atomic import atomic_write_text
from tgmae.captions.captioner import GenerationOptions, keyframe_indices
from tgmae.captions.shard import Shard, errors_path, existing_parts, part_path, record_share, remove_parts
from tgmae.captions.store import (CaptionRecord, CaptionStoreError, StoreAppender, range_text,
                                  read_jsonl_tolerant, refuse_duplicate_ids, refuse_foreign_file,
                                  refuse_other_provenance, replaced_videos, video_ids_in)
from tgmae.data.annotations import clip_range
from tgmae.data.fileid import current_identity, video_identities, video_stamp
from tgmae.data.frame_folder import frame_names
from tgmae.hub import model_name

log = logging.getLogger("tgmae")

SOURCE = "captioner"


@dataclass
class CaptionSummary:
    """What one (rank's) captioning run did."""

    captioned: int = 0  # videos captioned now
    skipped: int = 0  # videos already in the output or errors file
    errors: list[dict] = field(default_factory=list)  # {"video_id", "path", "error", "video", "frames"} of this run
    out: str = ""  # the file this rank appended to
    stored: int = 0  # this shard's videos with captions in the output (now or before)
    redone: int = 0  # of those captioned: videos whose file or frame range changed since their old record


def load_keyframes(video: Any, n: int) -> tuple[np.ndarray, list[int]]:
    """uint8 [n, H, W, 3] keyframes of a `VideoRecord` and their frame indices. A frame range past
    the video's end is a VideoError (`record_frame_range`), reported for that video, never clipped."""
    from tgmae.data.frame_index import record_frame_range
    from tgmae.data.video import VideoReader

    with VideoReader(video.path) as reader:
        start, end = record_frame_range(video.path, video.start_frame, video.end_frame, reader.info.num_frames)
        idx = keyframe_indices(reader.info.num_frames, n, start, end)
        return reader.read(idx), idx


def _prefetch(videos: Sequence[Any], load: Callable[[Any], Any], workers: int, depth: int) -> Iterator[tuple[Any, Any]]:
    """(video, load(video) or the exception), in order, with up to `depth` loads in flight."""

    def safe(v: Any) -> Any:
        try:
            return load(v)
        except Exception as e:  # any decode failure is reported per video, never fatal
            return e

    if workers <= 0:
        yield from ((v, safe(v)) for v in videos)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: collections.deque[tuple[Any, Future]] = collections.deque()
        for v in videos:
            queue.append((v, pool.submit(safe, v)))
            if len(queue) > depth:
                done, fut = queue.popleft()
                yield done, fut.result()
        while queue:
            done, fut = queue.popleft()
            yield done, fut.result()


def _batches(items: Iterator, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def read_files(out: str | Path, shard: Shard = Shard(), fresh: bool = False) -> list[Path]:
    """The files of `out` (a store, or an errors file) a rank reads to skip what is done: `out`
    and every part of it (any world size); with `fresh` (a --rebuild, which replaces the store and
    the other ranks' parts, maybe not yet removed under torchrun) this rank's part alone."""
    return [part_path(out, shard)] if fresh else [Path(out), *existing_parts(out)]


def done_video_ids(out: Path, include_errors: bool = True, shard: Shard = Shard(), fresh: bool = False) -> set[str]:
    """Ids in the output, its part files and (optionally) the errors file and its parts
    (`read_files`)."""
    files = read_files(out, shard, fresh)
    if include_errors:
        files += read_files(errors_path(out), shard, fresh)
    done: set[str] = set()
    for f in files:
        done |= video_ids_in(f)
    return done


def _own_files(out: Path, shard: Shard) -> set[Path]:
    """The files of `out` (a store or an errors file) this shard may rewrite: its own part, and for
    a single process also `out` and every part (no other process writes them). A rank of a sharded
    run rewriting the merged file or another rank's part would race that rank."""
    return {part_path(out, shard)} | ({out, *existing_parts(out)} if shard.world_size == 1 else set())


def _forget_errors(out: Path, ids: set[str], shard: Shard) -> None:
    """Drop entries of `ids` from the errors files this shard owns (`_own_files`) before retrying
    them (--retry-errors). An entry in a file it does not own stays: `merge_parts` drops an error
    entry once its video has a record, and a new failure is this rank's later attempt."""
    for f in _own_files(errors_path(out), shard):
        if f.exists():
            items, _, _ = read_jsonl_tolerant(f, allow_torn_tail=True)
            keep = [o for _, o in items if not (isinstance(o, dict) and o.get("video_id") in ids)]
            if len(keep) < len(items):
                atomic_write_text(f, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in keep), fsync=True)


def _video_changed(obj: dict, now: Any, path: Optional[str]) -> bool:
    """Whether the file a stored record `obj` was made from is not the video at `path` now (its
    `video_identity` `now`): the rule `masks` and training use (`replaced_videos`: another size,
    rewritten in place, another `content` key, another key of a frame the captions were read from),
    so a byte-identical copy of the data set (`cp -r`, `rsync`: new inodes and ctimes) keeps its
    captions (re-trial 34A M1). A record without a `content` key (an older store's, an errors
    entry) or a file gone now: any change of identity."""
    if obj.get("content") is None or now is None:
        return current_identity(obj["video"]) != now  # an older store's form too
    return bool(replaced_videos([obj], {obj["video_id"]: now}, {obj["video_id"]: path}))


def _change(obj: Any, identity: dict[str, Any], frames: dict[str, list],
            paths: dict[str, str]) -> Optional[str]:
    """Why a stored record `obj` no longer describes its clip, or None: its file changed
    (`_video_changed` against `identity` {id: `video_identity` now} and `paths` {id: its file}), or
    its frame range (`frames` differs from the clip's, `clip_range`). A record without the key is
    not compared on it."""
    vid = obj.get("video_id") if isinstance(obj, dict) else None
    if vid not in identity:
        return None
    if "video" in obj and _video_changed(obj, identity[vid], paths.get(vid)):
        return "its video changed"
    if obj.get("frames") is not None and list(obj["frames"]) != list(frames.get(vid, obj["frames"])):
        return f"its frame range changed ({range_text(obj['frames'])} -> {range_text(frames[vid])})"
    return None


def _forget_changed(out: Path, identity: dict[str, Any], shard: Shard, frames: dict[str, list],
                    paths: dict[str, str], done: str = "captioned", fresh: bool = False) -> set[str]:
    """Drop the records of videos whose file or frame range changed since they were captioned
    (`_change`: their `video` is another file than the one at `paths` {id: path} with `identity`
    {id: `video_identity` now}, their `frames` differ from `frames` {id: `clip_range` now}), each logged, so they are captioned again. A stale record in a
    file this shard does not write (another rank's part, or the merged store under torchrun) is a
    CaptionStoreError naming the video: rewriting it would race that rank. Returns the ids dropped.
    `out` may be the errors file (`done` "failed"): its entries carry the same keys. The files
    read are `read_files`'."""
    own = _own_files(out, shard)
    dropped: set[str] = set()
    for f in read_files(out, shard, fresh):
        if not f.is_file():
            continue
        items, _, _ = read_jsonl_tolerant(f, allow_torn_tail=True)
        stale = {o["video_id"]: why for _, o in items if (why := _change(o, identity, frames, paths))}
        if not stale:
            continue
        if f not in own:
            vid, why = next(iter(stale.items()))
            raise CaptionStoreError(f"{f}: video {vid!r}: {why} since it was {done}, and this rank cannot "
                                    "rewrite that file: caption again in one process, or pass --rebuild")
        for vid, why in stale.items():
            log.info("tgmae caption: %r: %s since it was %s (%s): captioning it again", vid, why, done, f)
        keep = [o for _, o in items if not (isinstance(o, dict) and o.get("video_id") in stale)]
        atomic_write_text(f, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in keep), fsync=True)
        dropped.update(stale)
    return dropped


def captioner_settings(keyframes: int, options: Optional[GenerationOptions] = None,
                       weights: Optional[str] = None) -> dict[str, Any]:
    """The settings a captioner run records in each record (`settings`) and a rerun must share:
    keyframes, the generation options (max_new_tokens, prompt, num_beams) and the fingerprint of
    the model's files (`tgmae.hub.weights_fingerprint`: weights, config, tokenizer, processor,
    generation config; left out when not known, e.g. a hub id not downloaded yet: any of them
    changed at the same path or hub id are other captions)."""
    out = {"keyframes": keyframes, **(dataclasses.asdict(options) if options is not None else {})}
    return {**out, "weights": weights} if weights else out


def refuse_other_store(out: str | Path, source: str, model: str, settings: dict[str, Any],
                       shard: Shard = Shard(), fresh: bool = False) -> None:
    """CaptionStoreError naming the key when a file this shard reads to skip what is done
    (`read_files`: the store and every part, whichever rank's videos they hold; with `fresh`, a
    --rebuild, its own part) holds captions made by another source, model or settings (a rerun
    would skip those videos and keep them, and a merge mix them), or by weights it did not record
    (a store written before they were: which model made it is not known, so resuming into it could
    mix two). `model` as recorded (`tgmae.hub.model_name`: a local folder by its absolute path).
    Also one holding a video twice (`refuse_duplicate_ids`, naming the line: the run would count it
    done and keep both lines, which masks and training refuse; re-trial 30B M3)."""
    want = {"source": source, "model": model_name(model), **settings}
    for f in dict.fromkeys([part_path(out, shard), *read_files(out, shard, fresh)]):
        refuse_other_provenance(f, [want], required=("weights",))
        refuse_duplicate_ids(f)


def recorded_model(out: str | Path, model: str, shard: Shard = Shard(), fresh: bool = False) -> str:
    """The name this run records for `model`: a local folder's resolved absolute path
    (`tgmae.hub.model_name`), or the name the first record of a file it resumes (`read_files`)
    gives it, which `refuse_other_store` found to be this model (an older tgmae recorded a folder as
    typed: re-trial 29B M1). One name per store: a similarity cache keys its captions by the
    store's (source, model) pairs (`tgmae.masking.caption_source`), so a second spelling in the
    store would refuse the `tgmae masks` cache built from it."""
    for f in dict.fromkeys([part_path(out, shard), *read_files(out, shard, fresh)]):
        if f.is_file():
            with open(f, encoding="utf-8", errors="replace") as fh:
                first = next((line for line in fh if line.strip()), "")
            try:
                name = json.loads(first).get("model")
            except (ValueError, AttributeError):  # a torn line: the other files, else this run's name
                continue
            if isinstance(name, str) and name:
                return name
    return model_name(model)


def clear_outputs(out: str | Path, shard: Shard) -> None:
    """Remove what a captioner run writes (`--rebuild`): this shard's part and errors part; for a
    single process or rank 0 also the store, its errors file and the parts of runs of other world
    sizes (which its merge would fold in; this run's other ranks clear their own), with their share
    records and stale locks (`remove_parts`).
    CaptionStoreError, before anything is removed, when one of those stores is not a caption store
    (`refuse_foreign_file`: a file of the user's given as --out)."""
    out = Path(out)
    stores = [part_path(out, shard)]
    errors = [part_path(errors_path(out), shard)]
    if shard.rank == 0:
        stores, errors = stores + [out], errors + [errors_path(out)]
    if shard.rank == 0:
        stores, errors = (stores + existing_parts(out, other_than=shard.world_size),
                          errors + existing_parts(errors_path(out), other_than=shard.world_size))
    for f in stores:
        refuse_foreign_file(f)
    remove_parts(stores + errors)


def caption_videos(videos: Sequence[Any], captioner: Callable[[Sequence[np.ndarray]], list[str]], model: str,
                   out: str | Path, keyframes: int = 3, batch_size: int = 8, shard: Shard = Shard(),
                   workers: int = 2, retry_errors: bool = False, progress: bool = True,
                   fresh: bool = False) -> CaptionSummary:
    """Caption this shard's share of `videos` (`VideoRecord`s) into its part of `out`.

    captioner: images -> captions (an `ImageCaptioner`; its `options` and `weights` fingerprint,
    where it has them, are settings); `model` (as `recorded_model` names it: a local folder by its
    absolute path, so the same folder named from another working directory is one model, re-trial
    29B M1) and the settings (`captioner_settings`) go into each record: a store made by another source, model or settings raises CaptionStoreError
    (`refuse_other_store`) before anything is written. Duplicate video ids in `videos` are
    captioned once. `fresh` (--rebuild): the store and other ranks' parts, which rank 0 or those
    ranks replace, are neither checked nor skipped from (`read_files`). A rank of a sharded run
    records its share first (`record_share`) and leaves its part even when it has nothing new
    (empty): `merge_parts` tells by them that it ran and finished.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out)
    settings = captioner_settings(keyframes, getattr(captioner, "options", None), getattr(captioner, "weights", None))
    refuse_other_store(out, SOURCE, model, settings, shard, fresh)
    model = recorded_model(out, model, shard, fresh)
    seen: set[str] = set()
    unique = [v for v in videos if not (v.video_id in seen or seen.add(v.video_id))]
    mine = shard.take(unique)
    if retry_errors:
        _forget_errors(out, {v.video_id for v in mine}, shard)
    on_disk = video_identities(str(v.path) for v in mine)  # a frame folder's segments share one scan
    identity = {v.video_id: on_disk[str(v.path)] for v in mine}
    ranges = {v.video_id: clip_range(v) for v in mine}
    paths = {v.video_id: str(v.path) for v in mine}
    changed = _forget_changed(out, identity, shard, ranges, paths, fresh=fresh)
    changed |= _forget_changed(errors_path(out), identity, shard, ranges, paths, "failed", fresh)  # a fixed range: tried again
    done = done_video_ids(out, not retry_errors, shard, fresh)
    todo = [v for v in mine if v.video_id not in done]
    summary = CaptionSummary(skipped=len(mine) - len(todo), out=str(part_path(out, shard)))
    record_share(out, shard, [v.video_id for v in mine])  # before the part: a kill leaves it unfinished
    bar = tqdm(total=len(todo), desc=f"captioning (rank {shard.rank})", unit="video",
               disable=not progress or shard.rank != 0)
    with StoreAppender(part_path(out, shard)) as store, StoreAppender(part_path(errors_path(out), shard)) as errs:
        loaded = _prefetch(todo, lambda v: load_keyframes(v, keyframes), workers, depth=2 * batch_size)
        for batch in _batches(loaded, batch_size):
            good = [(v, r) for v, r in batch if not isinstance(r, BaseException)]
            failed = [{"video_id": v.video_id, "path": str(v.path), "error": f"{type(r).__name__}: {r}",
                       "video": identity[v.video_id], "frames": ranges[v.video_id]}
                      for v, r in batch if isinstance(r, BaseException)]
            images = [img for _, (frames, _) in good for img in frames]
            texts = captioner(images) if images else []
            records, pos = [], 0
            for v, (frames, idx) in good:
                caps = texts[pos:pos + len(frames)]
                pos += len(frames)
                keep = [(c, i) for c, i in zip(caps, idx) if c.strip()]
                if not keep:
                    failed.append({"video_id": v.video_id, "path": str(v.path),
                                   "error": "the captioner produced only empty captions",
                                   "video": identity[v.video_id], "frames": ranges[v.video_id]})
                    continue
                records.append(CaptionRecord(v.video_id, [c for c, _ in keep], SOURCE, model,
                                             {"frame_indices": [int(i) for _, i in keep], "settings": settings,
                                              **video_stamp(str(v.path), identity[v.video_id],
                                                          frame_names(str(v.path), [i for _, i in keep])),
                                              "frames": ranges[v.video_id]}))
            store.write_batch(records)
            errs.write_batch(failed)
            summary.captioned += len(records)
            summary.errors.extend(failed)
            bar.update(len(batch))
    bar.close()
    if shard.world_size > 1:
        part_path(out, shard).touch()  # this rank ran (`merge_parts` refuses a rank that did not)
    stored = done_video_ids(out, False, shard, fresh)
    summary.stored, summary.redone = len({v.video_id for v in mine} & stored), len(changed & stored)
    return summary


