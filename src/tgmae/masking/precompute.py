"""Per-video CLIP similarity maps for cached text-guided masking (`tgmae masks`).

For every video: frames 0, s, 2s, ... (s = --frame-stride), the full source frame cut into the
model's patch grid (x --map-scale in dense mode), one cosine map per caption of the video
(layout: `tgmae.masking.cache`). Videos already in a part file with the same captions and the
same video file or a copy of it (`cache.changed_file`: its `video_identity` and content key) are
skipped (resume; a copy of the data set elsewhere keeps its maps, a video replaced at its path is
redone; maps of another path's file of other contents or captions, another data set with the same
ids, are refused: `refuse_other_data_set`); rank r of W takes videos r, r+W, ... into its
own part file. `precompute` holds the cache's lock (per rank), so a second writer is refused naming the first; a cache inside a
run folder is refused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from tgmae.locks import check_kind, hold, refuse_inside_run, shard_target
from tgmae.data.fileid import video_identities, video_stamp
from tgmae.data.frame_index import error_text
from tgmae.masking.cache import (
    CacheManifest, CacheMismatchError, captions_key, changed_file, check_cache_folder, entry_problem, made_where,
    next_run, part_file, part_records,
    remove_stale_cache_temps, MASKS_WAY_OUT, write_entry, write_manifest_or_check,
)
from tgmae.masking.caption_source import caption_source_of, file_sha256
from tgmae.clip.features import ClipBundle, ClipPatchScorer, cosine_maps, embed_texts, map_grid, uint8_to_unit

log = logging.getLogger(__name__)


@dataclass
class PrecomputeOptions:
    """Geometry and batching of a precompute run."""

    mode: str = "dense"
    frame_stride: int = 4
    image_size: int = 224
    patch_size: int = 16
    map_scale: int = 1
    dense_size: Optional[int] = None
    frames_per_chunk: int = 32  # frames decoded and embedded at once (bounds memory)
    batch_size: int = 256


def video_similarity(
    scorer: ClipPatchScorer, path: str, text: torch.Tensor, opts: PrecomputeOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """One video -> (sim [C, F, gh*scale, gw*scale] float, frames [F] int64)."""
    from tgmae.data.video import VideoReader

    with VideoReader(path) as reader:
        info = reader.probe_rotation()
        frames_idx = torch.arange(0, info.num_frames, opts.frame_stride)
        gh, gw = map_grid(info.height, info.width, opts.image_size, opts.patch_size)
        grid = (gh * opts.map_scale, gw * opts.map_scale)
        sims = []
        for chunk in frames_idx.split(opts.frames_per_chunk):
            x = uint8_to_unit(reader.read(chunk.numpy()))
            if opts.mode == "faithful":
                feats = scorer.faithful_features(x, (gh, gw), opts.patch_size)
            else:
                feats = scorer.dense_features(x, grid)
            sims.append(cosine_maps(feats, text).cpu())
    return torch.cat(sims, dim=1), frames_idx


def build_manifest(clip: ClipBundle, captions_file: str, records: Sequence, opts: PrecomputeOptions,
                   scorer: ClipPatchScorer) -> CacheManifest:
    grid_short = opts.image_size // opts.patch_size * opts.map_scale
    return CacheManifest(
        clip_model=clip.name, clip_fingerprint=clip.fingerprint(), mode=opts.mode,
        caption_source=caption_source_of(records), captions_sha256=file_sha256(captions_file),
        frame_stride=opts.frame_stride, image_size=opts.image_size, patch_size=opts.patch_size,
        map_scale=opts.map_scale,
        dense_size=scorer.dense_size_for((grid_short, grid_short)) if opts.mode == "dense" else None,
        embed_dim=clip.embed_dim,
    )


CACHE_SETTING = "similarity cache folder (tgmae masks --out, masking.cache_dir)"  # named in refusals


def precompute(
    videos: Sequence[tuple[str, str]], captions_file: str, clip: ClipBundle, out: str | Path,
    opts: PrecomputeOptions, rank: int = 0, world: int = 1, progress: bool = True, way_out: str = MASKS_WAY_OUT,
    ranges: Optional[dict[str, list]] = None, setting: str = CACHE_SETTING, run: Optional[int] = None,
    texts: Optional[dict[str, tuple]] = None,
) -> dict:
    """Compute this rank's share of (video_id, path) pairs into cache `out`, holding its lock
    (this rank's: `tgmae.locks.shard_target`; LockError naming another writer, first thing).
    Returns counts {"done", "skipped", "resumed"} for this rank. RunFolderError when `out` is a
    run folder or lies inside one (`locks.refuse_inside_run`: its maps and parts would mix with the
    run's checkpoints); CacheMismatchError for a non-empty folder that is not a cache
    (`cache.check_cache_folder`); for a cache built with other settings, one naming each difference
    and then `way_out` (`cache.write_manifest_or_check`: the calling command's flags).
    ranges: {video_id: `data.annotations.clip_range`} of the annotated clips (None: whole videos):
    a video whose range is past its end is skipped with `record_frame_range`'s reason (maps are of
    every frame; the clip must exist), and a caption store whose records were made from other
    ranges is refused (`refuse_other_videos`). texts: {video_id: (caption, class name)} of the
    annotated clips (`data.annotations.annotated_texts`): a store made from the annotations' text
    (`--annotation-captions`, `--oracle`, `--descriptions`) that has changed since is refused
    (`store.stale_texts`). setting: what chose `out`, named in the refusals of
    the folder (`CACHE_SETTING`; eval-masks names its --cache). run: the number this run's part
    lines carry (`cache.next_run`, which the ranks of `tgmae masks` take from rank 0); None: this
    process's own `next_run` of the parts it reads at its start."""
    check_kind(out, setting, folder=True)
    refuse_inside_run(out, setting)
    check_cache_folder(out, setting)
    with hold(shard_target(out, rank, world), setting):
        return _precompute(videos, captions_file, clip, Path(out), opts, rank, world, progress, way_out, ranges or {},
                           run, texts or {})


def range_error(path: str, frames: Optional[list]) -> Optional[str]:
    """Why a clip's annotated range (`clip_range`: [start, end], end None = the video's end) is
    unreadable in the video at `path` (`record_frame_range`'s VideoError: past the video's end), or
    None; a whole video ([0, None]) is not opened. An unreadable video is left to the maps' reader."""
    from tgmae.data.frame_index import record_frame_range
    from tgmae.data.video import VideoError, VideoReader

    if not frames or list(frames) == [0, None]:
        return None
    try:
        with VideoReader(path) as reader:
            record_frame_range(path, frames[0], frames[1], reader.info.num_frames)
    except VideoError as e:
        return error_text(path, e) if e.kind == "out_of_range" else None
    except OSError:
        return None
    return None


def _precompute(videos: Sequence[tuple[str, str]], captions_file: str, clip: ClipBundle, out: Path,
                opts: PrecomputeOptions, rank: int, world: int, progress: bool, way_out: str,
                ranges: dict[str, list], run: Optional[int], texts: dict[str, tuple]) -> dict:
    from tqdm import tqdm

    from tgmae.captions.store import read_store, refuse_other_videos
    from tgmae.data.video import VideoError

    remove_stale_cache_temps(out)  # index / manifest / maps of a killed run
    records = read_store(captions_file).records
    # captions of another data set's videos under these ids (or of text edited since) would make maps of the wrong text
    idents = video_identities(path for _, path in videos)  # a frame folder's segments share one scan
    refuse_other_videos(captions_file, records, {vid: idents[path] for vid, path in videos}, ranges, texts,
                        dict(videos))
    by_video = {r.video_id: r.captions for r in records}
    scorer = ClipPatchScorer(clip, opts.mode, opts.dense_size, opts.batch_size)
    write_manifest_or_check(out, build_manifest(clip, captions_file, records, opts, scorer), way_out)
    done: dict[str, dict] = {}  # the latest maps of each video, unless skipped since (as the index reads them)
    written = list(part_records(out))
    run = next_run(written) if run is None else run
    for r in written:
        if r.get("file"):
            done[r["video_id"]] = r
        else:
            done.pop(r["video_id"], None)
    # maps of another data set's files (or captions) under these ids are not replaced without a word
    refuse_other_data_set(out, done, videos, idents, by_video, way_out)
    share = list(videos)[rank::world]
    counts = {"done": 0, "skipped": 0, "resumed": 0}
    part = part_file(out, rank, world)
    part.parent.mkdir(parents=True, exist_ok=True)
    text_cache: dict[str, torch.Tensor] = {}
    with open(part, "a", encoding="utf-8") as log_file:

        def skip(vid: str, reason: str) -> None:
            log.warning("tgmae masks: skipping %r: %s", vid, reason)
            _append(log_file, {"video_id": vid, "reason": reason}, run)
            counts["skipped"] += 1

        bar = tqdm(share, desc=f"similarity maps [{opts.mode}]", unit="video", disable=not progress or rank != 0)
        for vid, path in bar:
            caps = by_video.get(vid)
            if caps is None:
                skip(vid, f"no captions for video {vid!r} in {captions_file}")
                continue
            bad_range = range_error(path, ranges.get(vid))
            if bad_range:  # as `caption` and `data check` report it: never counted as cached
                skip(vid, bad_range)
                continue
            key, ident = captions_key(caps), idents[path]
            if _is_done(out, done.get(vid), key, ident, vid, path, caps):
                counts["resumed"] += 1
                continue
            try:
                text = _embed(clip, caps, text_cache)
                sim, frames = video_similarity(scorer, path, text, opts)
            except (VideoError, OSError) as e:
                skip(vid, f"unreadable video {error_text(path, e)}")
                continue
            rel = write_entry(out, vid, sim, frames, text, caps)
            # the file's identity and content key: a copy of the set elsewhere keeps these maps (changed_file)
            _append(log_file, {"video_id": vid, "file": rel, "captions": key, **video_stamp(path, ident),
                               "path": os.path.abspath(path)}, run)
            counts["done"] += 1
    return counts


def refuse_other_data_set(out: Path, done: dict[str, dict], videos: Sequence[tuple[str, str]],
                          idents: dict[str, Optional[list]], captions: dict[str, list[str]], way_out: str) -> None:
    """CacheMismatchError naming the cache, the count, up to 5 ids (one with both paths) and `way_out`
    when maps already in `out` (`done`: the latest part line of each id) were made from a file at
    another path than this run's video of that id whose contents differ (`captions.store.other_file`:
    another size, rewritten in place, or another content key: re-trial 33B M1), or from other captions:
    another data set with the same ids (two `tgmae synth` sets; re-trial 31A S3), whose maps a rerun
    would silently replace. A video changed at its own path is this data set's and is redone
    (`_is_done`); a copy of the set at another path (same contents and captions) is not refused.
    Lines without a `path` (an older tgmae) are not compared. Every rank checks every video, so all
    refuse alike. `idents`: {path: `video_identity`}."""
    from tgmae.captions.store import ids_text, other_file
    from tgmae.data.fileid import content_key

    other = []
    for vid, path in videos:
        rec = done.get(vid)
        if rec is None or rec.get("path") in (None, os.path.abspath(path)):
            continue
        now = idents.get(path)
        # a record without `content` (an older tgmae) of the same size is no evidence of another
        # data set: `_is_done` redoes it
        moved = rec.get("video") is not None and now is not None and other_file(
            rec["video"], now, rec.get("content"), lambda p=path: content_key(p))
        if moved or (vid in captions and rec.get("captions") != captions_key(captions[vid])):
            what = "its file differs" if moved else "its captions differ"
            other.append((vid, rec["path"], os.path.abspath(path), what))
    if other:
        vid, was, now_path, what = other[0]
        raise CacheMismatchError(
            f"{out}: {len(other)} video(s) already there hold maps of other files or captions (another data set "
            f"with the same ids?): {ids_text([o[0] for o in other])} (e.g. {vid!r}: made from {was}, now {now_path}, "
            f"{what}); they are not replaced: {way_out}")


def _is_done(out: Path, rec: Optional[dict], key: str, ident: Optional[list], vid: str, path: str,
             captions: list[str]) -> bool:
    """True when part record `rec` holds `vid`'s maps from these captions (`key`) and this video
    file or a copy of it (`ident`, its `video_identity`; `cache.changed_file`, the check training
    makes: a data set copied elsewhere keeps its maps, re-trial 33B M1), in a sound map file
    (`entry_problem`); a video changed since (replaced at its path: another size, rewritten in
    place, other contents), an entry recorded before the identity was, a video that cannot be read
    now and a damaged map file (truncated, garbage, another video's captions, NaN maps) are logged
    and redone."""
    if rec is None or rec.get("captions") != key or not (out / rec["file"]).is_file():
        return False
    how = "its maps predate the video's identity in the cache" if rec.get("video") is None else \
        "it cannot be read" if ident is None else changed_file(rec, ident, path)
    if how is None:
        problem = entry_problem(out / rec["file"], captions)
        if problem is None:
            return True
        log.warning("tgmae masks: %r: its map file %s is damaged (%s): recomputing it", vid, out / rec["file"], problem)
        return False
    log.info("tgmae masks: %r: its video changed since its maps were made (%s: %s): recomputing them", vid,
             made_where(rec, path), how)
    return False


def _embed(clip: ClipBundle, captions: list[str], cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """[C, D] normalized embeddings of a video's captions (memoized per text: videos share them)."""
    missing = [c for c in dict.fromkeys(captions) if c not in cache]
    if missing:
        for c, e in zip(missing, embed_texts(clip, missing)):
            cache[c] = e.cpu()
    return torch.stack([cache[c] for c in captions])


def _append(f, rec: dict, run: int) -> None:
    """One part line, with its run's number: `cache.part_records` reads every rank's lines in run
    order, so a later run's line wins over one of a run at another world size."""
    f.write(json.dumps({**rec, "run": run}) + "\n")
    f.flush()
