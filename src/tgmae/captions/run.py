"""`tgmae caption`: build a caption store for a dataset.

    tgmae caption --format F --root DIR ANNOTATIONS --model NAME_OR_PATH --out captions.jsonl
        [--keyframes 3] [--batch-size 8] [--device auto] [--dtype auto] [--max-new-tokens 30]
        [--prompt TEXT] [--num-beams N] [--workers 2] [--rank R --world-size W] [--retry-errors]
    tgmae caption --format F --root DIR ANNOTATIONS --oracle [--template "a video of {}"] --out oracle.jsonl
    tgmae caption --format F --root DIR ANNOTATIONS --descriptions descriptions.json --out vf.jsonl
    tgmae caption --format F --root DIR ANNOTATIONS --annotation-captions --out ann.jsonl
    tgmae caption --combine blip.jsonl vf.jsonl --out combined.jsonl [--require-all]
    tgmae caption --merge --out captions.jsonl   # join the part files of a sharded run

Captioning takes N uniformly spaced keyframes per video (segment centres of the clip's frame
range; N=1 = centre frame) and stores one caption per keyframe. Videos are batched across
(batch-size videos -> batch-size x N images per generate call) while a thread pool decodes the
next ones. Output is appended and flushed per batch: rerunning the same command skips videos
already in the output (or in the errors file, unless --retry-errors), and a kill loses at most
the batch in flight. Videos that fail to decode go to `<out stem>.errors.jsonl`
({"video_id", "path", "error"}) and are skipped.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from tgmae.atomic import atomic_write_text
from tgmae.captions.captioner import ImageCaptioner, keyframe_indices
from tgmae.captions.shard import Shard, errors_path, existing_parts, merge_parts, part_path
from tgmae.captions.store import (CaptionRecord, StoreAppender, read_jsonl_tolerant,
                                  video_ids_in)
from tgmae.config import DATASET_FORMATS

SOURCE = "captioner"


@dataclass
class CaptionSummary:
    """What one (rank's) captioning run did."""

    captioned: int = 0  # videos captioned now
    skipped: int = 0  # videos already in the output or errors file
    errors: list[dict] = field(default_factory=list)  # {"video_id", "path", "error"} of this run
    out: str = ""  # the file this rank appended to


def load_keyframes(video: Any, n: int) -> tuple[np.ndarray, list[int]]:
    """uint8 [n, H, W, 3] keyframes of a `VideoRecord` and their frame indices."""
    from tgmae.data.video import VideoReader

    with VideoReader(video.path) as reader:
        idx = keyframe_indices(reader.info.num_frames, n, video.start_frame, video.end_frame)
        return reader.read(idx), idx


def _prefetch(videos: Sequence[Any], load: Callable[[Any], Any], workers: int, depth: int) -> Iterator[tuple[Any, Any]]:
    """(video, load(video) or the exception), in order, with up to `depth` loads in flight."""

    def safe(v: Any) -> Any:
        try:
            return load(v)
        except Exception as e:  # any decode failure is reported per video, never fatal
            return e

    if workers <= 0:
        for v in videos:
            yield v, safe(v)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        queue: collections.deque[tuple[Any, Future]] = collections.deque()
        it = iter(videos)
        for v in it:
            queue.append((v, pool.submit(safe, v)))
            if len(queue) >= depth:
                break
        while queue:
            v, fut = queue.popleft()
            nxt = next(it, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(safe, nxt)))
            yield v, fut.result()


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for x in items:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def done_video_ids(out: Path, include_errors: bool = True) -> set[str]:
    """Ids in the output, its part files and (optionally) the errors file and its parts."""
    files = [out, *existing_parts(out)]
    if include_errors:
        err = errors_path(out)
        files += [err, *existing_parts(err)]
    done: set[str] = set()
    for f in files:
        done |= video_ids_in(f)
    return done


def _forget_errors(out: Path, ids: set[str]) -> None:
    """Drop entries of `ids` from the errors file(s) before retrying them."""
    err = errors_path(out)
    for f in [err, *existing_parts(err)]:
        if f.exists():
            items, _, _ = read_jsonl_tolerant(f, allow_torn_tail=True)
            keep = [o for _, o in items if not (isinstance(o, dict) and o.get("video_id") in ids)]
            atomic_write_text(f, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in keep), fsync=True)


def caption_videos(videos: Sequence[Any], captioner: Callable[[Sequence[np.ndarray]], list[str]], model_name: str,
                   out: str | Path, keyframes: int = 3, batch_size: int = 8, shard: Shard = Shard(),
                   workers: int = 2, retry_errors: bool = False, progress: bool = True,
                   load: Optional[Callable[[Any, int], tuple[np.ndarray, list[int]]]] = None) -> CaptionSummary:
    """Caption this shard's share of `videos` (`VideoRecord`s) into its part of `out`.

    captioner: images -> captions (an `ImageCaptioner`); model_name goes into each record.
    Duplicate video ids in `videos` are captioned once.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    out = Path(out)
    load = load or load_keyframes
    seen: set[str] = set()
    unique = [v for v in videos if not (v.video_id in seen or seen.add(v.video_id))]
    mine = shard.take(unique)
    if retry_errors:
        _forget_errors(out, {v.video_id for v in mine})
    done = done_video_ids(out, include_errors=not retry_errors)
    todo = [v for v in mine if v.video_id not in done]
    summary = CaptionSummary(skipped=len(mine) - len(todo), out=str(part_path(out, shard)))
    bar = tqdm(total=len(todo), desc=f"captioning (rank {shard.rank})", unit="video",
               disable=not progress or shard.rank != 0)
    with StoreAppender(part_path(out, shard)) as store, StoreAppender(part_path(errors_path(out), shard)) as errs:
        loaded = _prefetch(todo, lambda v: load(v, keyframes), workers, depth=2 * batch_size)
        for batch in _batches(loaded, batch_size):
            good = [(v, r) for v, r in batch if not isinstance(r, BaseException)]
            failed = [{"video_id": v.video_id, "path": str(v.path), "error": f"{type(r).__name__}: {r}"}
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
                                   "error": "the captioner produced only empty captions"})
                    continue
                records.append(CaptionRecord(v.video_id, [c for c, _ in keep], SOURCE, model_name,
                                             {"frame_indices": [int(i) for _, i in keep]}))
            store.write_batch(records)
            errs.write_batch(failed)
            summary.captioned += len(records)
            summary.errors.extend(failed)
            bar.update(len(batch))
    bar.close()
    return summary


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tgmae caption", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("annotations", nargs="?", help="annotation file or folder (as for every tgmae command)")
    p.add_argument("--format", default="csv", choices=DATASET_FORMATS, help="annotation layout")
    p.add_argument("--root", default="", help="folder the annotation paths are relative to")
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--subset", default="train")
    p.add_argument("--out", required=True, help="caption store to write (JSONL)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="image-to-text model: hub id or local directory")
    what.add_argument("--oracle", action="store_true", help="class names as captions (Table 6b)")
    what.add_argument("--descriptions", help="class -> [descriptions] JSON (vision-free captions)")
    what.add_argument("--annotation-captions", action="store_true",
                      help="text shipped with the annotations (SSv2 filled-in labels, EPIC narrations)")
    what.add_argument("--combine", nargs="+", metavar="STORE", help="merge caption stores per video")
    what.add_argument("--merge", action="store_true", help="join the part files of a sharded run into --out")
    p.add_argument("--keyframes", type=int, default=3, help="keyframes (= captions) per video; 1 = centre frame")
    p.add_argument("--batch-size", type=int, default=8, help="videos per generate call")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (auto: bf16/fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--prompt", default="", help="conditioning text, e.g. 'a picture of' for BLIP")
    p.add_argument("--num-beams", type=int, default=None, help="beam search width (default greedy)")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    p.add_argument("--rank", type=int, default=None, help="shard index (default $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of shards (default $WORLD_SIZE or 1)")
    p.add_argument("--retry-errors", action="store_true", help="try again videos listed in the errors file")
    p.add_argument("--template", action="append", default=None, help="oracle template with {} (repeatable)")
    p.add_argument("--require-all", action="store_true", help="--combine: every video must be in every store")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(list(argv))
    needs_ann = args.model or args.oracle or args.descriptions or args.annotation_captions
    if needs_ann and not args.annotations:
        p.error("ANNOTATIONS is required with --model, --oracle, --descriptions and --annotation-captions")
    if args.keyframes < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        p.error("--keyframes, --batch-size and --max-new-tokens must be >= 1")
    return args


def _annotations(args: argparse.Namespace):
    from tgmae.data.formats import load_annotations

    return load_annotations(args.format, args.root, args.annotations, split=args.split, subset=args.subset)


def _run_captioner(args: argparse.Namespace) -> int:
    from tgmae.captions.captioner import GenerationOptions, resolve_dtype
    from tgmae.captions.shard import shard_from_env
    from tgmae.distributed import distributed_ready, init_distributed_if_launched, resolve_device

    shard = shard_from_env(args.rank, args.world_size)
    videos, _ = _annotations(args)
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")), key="--device")
    dtype = resolve_dtype(args.dtype, device)
    created = init_distributed_if_launched() if args.rank is None else False
    captioner = ImageCaptioner(args.model, device, dtype,
                               GenerationOptions(args.max_new_tokens, args.prompt, args.num_beams))
    summary = caption_videos(videos, captioner, args.model, args.out, args.keyframes, args.batch_size, shard,
                             args.workers, args.retry_errors, progress=not args.no_progress)
    print(f"rank {shard.rank}/{shard.world_size}: captioned {summary.captioned} videos, "
          f"{summary.skipped} already done, {len(summary.errors)} failed -> {summary.out}")
    for e in summary.errors[:5]:
        print(f"  failed: {e['video_id']}: {e['error'][:200]}", file=sys.stderr)
    if summary.errors:
        print(f"  (all failures: {part_path(errors_path(args.out), shard)})", file=sys.stderr)
    if shard.world_size == 1 and (existing_parts(args.out) or existing_parts(errors_path(args.out))):
        n, ne = merge_parts(args.out, [v.video_id for v in videos])  # parts left by an earlier sharded run
        print(f"merged leftover part files: {n} videos in {args.out}, {ne} failures")
    elif shard.world_size > 1:
        if distributed_ready():
            import torch.distributed as dist

            dist.barrier()
            if shard.rank == 0:
                n, ne = merge_parts(args.out, [v.video_id for v in videos])
                print(f"merged {shard.world_size} parts: {n} videos in {args.out}, {ne} failures")
            if created:
                from tgmae.distributed import cleanup

                cleanup()  # barrier, then leave the group
            else:
                dist.barrier()
        else:
            print(f"when all {shard.world_size} ranks are done: tgmae caption --merge --out {args.out}")
    return 0


def _run_text_source(args: argparse.Namespace) -> int:
    from tgmae.captions.sources import (ORACLE_TEMPLATE, description_records, load_descriptions,
                                        oracle_records, videos_with_classes)
    from tgmae.captions.store import CaptionStoreError, write_store

    records, classes = _annotations(args)
    if args.annotation_captions:
        texts = {r.video_id: r.caption for r in records}
        missing = [v for v, c in texts.items() if not (c and c.strip())]
        if missing:
            raise CaptionStoreError(f"{len(missing)} video(s) have no caption in the annotations, "
                                    f"e.g. {missing[0]!r} (format {args.format!r})")
        recs = [CaptionRecord(v, [c], "annotation", f"{args.format} annotations") for v, c in texts.items()]
        n = write_store(args.out, recs)
        print(f"{n} videos, {n} captions (annotation) -> {args.out}")
        return 0
    pairs = list({vid: cls for vid, cls in videos_with_classes(records, classes)}.items())
    if args.oracle:
        recs = oracle_records(pairs, args.template or [ORACLE_TEMPLATE])
    else:
        table, meta = load_descriptions(args.descriptions)
        model = str(meta.get("model") or f"file:{Path(args.descriptions).name}")
        recs = description_records(pairs, table, model)
    n = write_store(args.out, recs)
    print(f"{n} videos, {sum(len(r.captions) for r in recs)} captions ({recs[0].source if recs else '-'}) -> {args.out}")
    return 0


def main(argv: Sequence[str]) -> int:
    from tgmae.hub import ModelUnavailableError
    from tgmae.captions.sources import DescriptionsError
    from tgmae.captions.store import CaptionStoreError, merge_stores, read_store, write_store
    from tgmae.data.annotations import AnnotationError

    args = _parse(argv)
    try:
        if args.merge:
            order = [v.video_id for v in _annotations(args)[0]] if args.annotations else None
            n, ne = merge_parts(args.out, order)
            print(f"{n} videos in {args.out}, {ne} failures in {errors_path(args.out)}")
            return 0
        if args.combine:
            recs = merge_stores([read_store(f).records for f in args.combine], require_all=args.require_all)
            write_store(args.out, recs)
            print(f"{len(recs)} videos from {len(args.combine)} sources -> {args.out}")
            return 0
        if args.model:
            return _run_captioner(args)
        return _run_text_source(args)
    except (ModelUnavailableError, CaptionStoreError, DescriptionsError, AnnotationError, ValueError) as e:
        print(f"tgmae caption: {e}", file=sys.stderr)
        return 2
