"""`tgmae masks`: precompute per-video CLIP similarity maps for cached text-guided masking
(`tgmae.masking.precompute`, whose docstring describes the cache, resume and sharding).

    tgmae masks --format F --root DIR ANNOTATIONS --captions captions.jsonl \\
        --clip NAME_OR_PATH --mode faithful|dense --out CACHE_DIR [--frame-stride 4]
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tgmae.clip.features import MODES
from tgmae.masking.cache import check_cache_folder, clear_cache, merge_parts, next_run, part_records
from tgmae.masking.precompute import PrecomputeOptions, precompute
from tgmae.locks import check_kind, hold, refuse_inside_run, shard_target
from tgmae.commands.args import Parser, say


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = Parser(
        prog="tgmae masks",
        description="Precompute per-video CLIP similarity maps for cached text-guided masking.",
    )
    p.add_argument("annotations", help="annotation file or folder (as for training)")
    p.add_argument("--format", default="csv", help="annotation format (csv, k400, ssv2, ...)")
    p.add_argument("--root", default="", help="folder the annotation paths are relative to")
    p.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 split")
    p.add_argument("--subset", default="train", help="train | val | test")
    p.add_argument("--captions", required=True, help="captions JSONL (tgmae caption / synth)")
    p.add_argument("--clip", required=True, help="CLIP model name or directory")
    p.add_argument("--mode", choices=MODES, default="dense")
    p.add_argument("--out", required=True, help="cache directory")
    p.add_argument("--frame-stride", type=int, default=4, help="a map every N source frames")
    p.add_argument("--image-size", type=int, default=224, help="the video model's input side")
    p.add_argument("--patch-size", type=int, default=16, help="the video model's patch side")
    p.add_argument("--map-scale", type=int, default=1, help="dense: map cells per patch side (finer maps)")
    p.add_argument("--dense-size", type=int, default=None,
                   help="dense: CLIP input short side (default: grid x CLIP patch)")
    p.add_argument("--batch-size", type=int, default=256, help="CLIP images per forward")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--merge-only", action="store_true", help="only merge the part files into index.json")
    p.add_argument("--rebuild", action="store_true",
                   help="empty an existing cache in --out first (built with other weights, captions or geometry)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    check_kind(args.out, "--out", folder=True)
    refuse_inside_run(args.out, "--out")  # before CLIP is loaded (`precompute` refuses it too)
    check_cache_folder(args.out, "--out")  # a user's folder: never built, merged or emptied into
    if args.merge_only:
        with hold(args.out, "--out", folder=True):
            index = merge_parts(args.out)
        say(f"tgmae masks: merged {len(index['videos'])} videos ({len(index['skipped'])} skipped) "
              f"-> {args.out}/index.json")
        return 0
    if args.frame_stride < 1 or args.map_scale < 1 or args.image_size % args.patch_size:
        print("tgmae masks: --frame-stride and --map-scale must be >= 1, --image-size a multiple of --patch-size",
              file=sys.stderr)
        return 2
    if args.mode == "faithful" and args.map_scale != 1:
        print("tgmae masks: --map-scale > 1 is for dense mode (faithful embeds one crop per patch)", file=sys.stderr)
        return 2
    from tgmae.captions.shard import shard_from_env

    shard = shard_from_env()
    with hold(shard_target(args.out, shard.rank, shard.world_size), "--out"):  # one writer per cache (rank)
        return _precompute(args, shard)


def _refuse_no_video_on_disk(videos: Sequence[tuple[str, str]], args: argparse.Namespace) -> None:
    """NothingDoneError (one line, every rank alike) when no (video_id, path) of the list exists on
    disk or can be opened for reading: every video would be skipped, after CLIP was loaded for nothing.
    Some present: the missing ones are skipped later with their reason, as any unreadable video."""
    import os

    from tgmae.data.fileid import video_identity
    from tgmae.errors import nothing_done

    if not videos or any(video_identity(path) is not None and os.access(path, os.R_OK) for _, path in videos):
        return
    shown = ", ".join(path for _, path in videos[:2]) + (f" ... (+{len(videos) - 2} more)" if len(videos) > 2 else "")
    raise nothing_done(len(videos), f"none of them is on disk or readable ({shown}); check --root "
                                    f"{args.root or '.'!r} and {args.annotations}")


def _run_number(out: str, rank: int) -> int:
    """The number every rank's part lines of this run carry (`cache.next_run`): rank 0's, read after
    --rebuild emptied the folder. In a process group the ranks take it in a collective, so none
    writes before rank 0 has read (nor before it emptied the folder); without one, each process
    reads it itself (its share's lines are of other videos than the other ranks')."""
    import torch

    from tgmae.distributed import all_reduce_sum, distributed_ready

    if not distributed_ready():
        return next_run(part_records(out))
    mine = torch.tensor([next_run(part_records(out)) if rank == 0 else 0])  # gloo: a CPU tensor
    return int(all_reduce_sum(mine).item())


def _precompute(args: argparse.Namespace, shard) -> int:
    from tgmae.clip.features import load_clip
    from tgmae.data.annotations import annotated_texts, clip_range
    from tgmae.data.formats import load_annotations
    from tgmae.distributed import distributed_ready, init_distributed_if_launched, resolve_device
    from tgmae.lifetime import local_rank

    records, classes = load_annotations(args.format, args.root, args.annotations, args.split, args.subset)
    videos = list({r.video_id: r.path for r in records}.items())
    _refuse_no_video_on_disk(videos, args)  # a stat each, before CLIP (seconds to minutes) is loaded
    created = init_distributed_if_launched()
    ranges = {r.video_id: clip_range(r) for r in records}
    device = resolve_device(args.device, local_rank(), key="--device")
    clip = load_clip(args.clip, device, setting="--clip")
    if args.rebuild and shard.rank == 0:
        clear_cache(args.out)
    opts = PrecomputeOptions(args.mode, args.frame_stride, args.image_size, args.patch_size,
                             args.map_scale, args.dense_size, batch_size=args.batch_size)
    counts = precompute(videos, args.captions, clip, args.out, opts, shard.rank, shard.world_size,
                        progress=not args.no_progress, ranges=ranges, run=_run_number(args.out, shard.rank),
                        texts=annotated_texts(records, classes))
    if distributed_ready():
        import torch.distributed as dist

        dist.barrier()
    if shard.rank == 0:
        index = merge_parts(args.out)
        say(f"tgmae masks: {len(index['videos'])} videos cached, {len(index['skipped'])} skipped "
              f"(this rank: {counts['done']} computed, {counts['resumed']} already done) -> {args.out}")
    if created:
        from tgmae.distributed import cleanup

        cleanup()
    if shard.rank == 0 and index["skipped"] and not index["videos"]:  # after the group is left
        from pathlib import Path

        from tgmae.errors import nothing_done

        raise nothing_done(len(index["skipped"]), f"'skipped' in {Path(args.out) / 'index.json'}")
    return 0
