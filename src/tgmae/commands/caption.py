"""`tgmae caption`: a caption store for a dataset, from a keyframe captioner, the class names
(oracle), vision-free descriptions, the annotations' own text, or other stores combined
(`tgmae.captions.run`, whose docstring lists the forms)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from tgmae.captions import run
from tgmae.captions.captioner import ImageCaptioner
from tgmae.captions.run import SOURCE, caption_videos, captioner_settings, clear_outputs, refuse_other_store
from tgmae.captions.shard import errors_path, existing_parts, merge_parts, part_path, remove_parts
from tgmae.captions.store import CaptionRecord, ids_text
from tgmae.config import DATASET_FORMATS
from tgmae.errors import count
from tgmae.locks import check_kind, hold, refuse_in_checkpoints
from tgmae.commands.args import Parser, say


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = Parser(prog="tgmae caption", description=run.__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=run.__doc__)
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
    p.add_argument("--rebuild", action="store_true",
                   help="replace an existing --out made by another source, model or settings (else refused)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(list(argv))
    needs_ann = args.model or args.oracle or args.descriptions or args.annotation_captions
    if needs_ann and not args.annotations:
        p.error("ANNOTATIONS is required with --model, --oracle, --descriptions and --annotation-captions")
    if not args.model and (args.rank is not None or args.world_size is not None):
        p.error("--rank and --world-size shard --model captioning only: the other sources write the whole store")
    if args.keyframes < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        p.error("--keyframes, --batch-size and --max-new-tokens must be >= 1")
    return args


def _annotations(args: argparse.Namespace):
    from tgmae.data.formats import load_annotations

    return load_annotations(args.format, args.root, args.annotations, split=args.split, subset=args.subset)


def _run_captioner(args: argparse.Namespace) -> int:
    from tgmae.captions.shard import shard_from_env

    shard = shard_from_env(args.rank, args.world_size)
    check_kind(args.out, "--out", folder=False)
    with hold(part_path(args.out, shard), "--out"):  # one writer per part (the store itself: one process)
        return _caption(args, shard)


def _caption(args: argparse.Namespace, shard) -> int:
    from tgmae.captions.captioner import GenerationOptions, resolve_dtype
    from tgmae.distributed import distributed_ready, init_distributed_if_launched, resolve_device
    from tgmae.lifetime import local_rank

    videos, _ = _annotations(args)
    options = GenerationOptions(args.max_new_tokens, args.prompt, args.num_beams)
    if args.rebuild:
        clear_outputs(args.out, shard)
    from tgmae.hub import weights_fingerprint

    # first, before a model is loaded (weights known only once local: caption_videos checks again)
    refuse_other_store(args.out, SOURCE, args.model,
                       captioner_settings(args.keyframes, options, weights_fingerprint(args.model)), shard,
                       fresh=args.rebuild)
    device = resolve_device(args.device, local_rank(), key="--device")
    dtype = resolve_dtype(args.dtype, device)
    created = init_distributed_if_launched() if args.rank is None else False
    captioner = ImageCaptioner(args.model, device, dtype, options)
    summary = caption_videos(videos, captioner, args.model, args.out, args.keyframes, args.batch_size, shard,
                             args.workers, args.retry_errors, progress=not args.no_progress, fresh=args.rebuild)
    redone = (f" ({summary.redone} redone: their video or frame range changed since the last run)"
              if summary.redone else "")
    new = "" if summary.captioned or summary.errors else " (nothing new)"
    rank = f"rank {shard.rank}/{shard.world_size}: " if shard.world_size > 1 else ""
    print(f"{rank}captioned {count(summary.captioned, 'video')}{redone}, "
          f"{summary.skipped} already done, {len(summary.errors)} failed -> {summary.out}{new}")
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
                with hold(args.out, "--out", folder=False):
                    n, ne = merge_parts(args.out, [v.video_id for v in videos])
                print(f"merged {shard.world_size} parts: {n} videos in {args.out}, {ne} failures")
            if created:
                from tgmae.distributed import cleanup

                cleanup()  # barrier, then leave the group
            else:
                dist.barrier()
        else:
            print(f"when all {shard.world_size} ranks are done: tgmae caption --merge --out {args.out}")
    if summary.stored == 0 and summary.skipped + len(summary.errors):  # every video of this shard failed
        from tgmae.errors import nothing_done

        raise nothing_done(summary.skipped + len(summary.errors),
                           str(part_path(errors_path(args.out), shard)))
    return 0


def _run_text_source(args: argparse.Namespace) -> None:
    from tgmae.captions.sources import (ORACLE_TEMPLATE, description_records, load_descriptions,
                                        oracle_records, videos_with_classes)
    from tgmae.captions.store import CaptionStoreError, update_store
    from tgmae.data.fileid import video_stamp
    from tgmae.data.formats import require_class_names

    records, classes = _annotations(args)
    identity = _identities(records)
    if args.annotation_captions:
        texts = {r.video_id: r.caption for r in records}
        missing = [v for v, c in texts.items() if not (c and c.strip())]
        if missing:
            raise CaptionStoreError(f"{len(missing)} video(s) have no caption in the annotations, "
                                    f"e.g. {missing[0]!r} (format {args.format!r})")
        recs = [CaptionRecord(v, [c], "annotation", f"{args.format} annotations") for v, c in texts.items()]
    else:
        require_class_names(classes, args.format, args.root, args.annotations,
                            "oracle and vision-free captions need class names", split=args.split, subset=args.subset)
        pairs = videos_with_classes(records, classes)
        if args.oracle:
            recs = oracle_records(pairs, args.template or [ORACLE_TEMPLATE])
        else:
            table, meta = load_descriptions(args.descriptions)
            model = str(meta.get("model") or f"file:{Path(args.descriptions).name}")
            recs = description_records(pairs, table, model)
    paths = {v.video_id: str(v.path) for v in records}
    for r in recs:  # which file each caption is of: `--combine`, `masks` and training compare it
        if identity.get(r.video_id) is not None:
            r.extra.update(video_stamp(paths[r.video_id], identity[r.video_id]))
    redone = _replaced(args.out, identity, paths) if not args.rebuild else []
    added, there, kept = update_store(args.out, recs, rebuild=args.rebuild)  # this run's record replaces
    counts = f" ({added} added, {there} already there, {kept} other videos kept)" if there or kept else ""
    if redone:  # their old records (of the files before) were refused by `masks` and training
        counts += f", {len(redone)} redone (replaced since captioned: {ids_text(redone, 3)})"
    say(f"{len(recs)} videos, {sum(len(r.captions) for r in recs)} captions ({recs[0].source if recs else '-'}) "
          f"-> {args.out}{counts}")


def _replaced(out: str, identity: dict, paths: dict) -> list[str]:
    """Ids of the store at `out` (if any) whose record was made from another file than the data
    set's now (`replaced_videos`, the check `masks` and training make; `paths` {id: its file})."""
    from tgmae.captions.store import read_store, refuse_foreign_file, replaced_videos

    if not Path(out).is_file():
        return []
    refuse_foreign_file(out)  # a file of the user's as --out: named as such, not read as a store
    return replaced_videos(read_store(out).records, identity, paths)


def _identities(videos) -> dict:
    """{video_id: `tgmae.data.fileid.video_identity` of its file} of `VideoRecord`s."""
    from tgmae.data.fileid import video_identities

    on_disk = video_identities(str(v.path) for v in videos)  # each file or frame folder once
    return {v.video_id: on_disk[str(v.path)] for v in videos}


def _combine(args: argparse.Namespace) -> list[CaptionRecord]:
    """The --combine stores merged per video. With ANNOTATIONS, each store is first checked
    against the data set: a store captioned from other files or frame ranges for its ids, or from
    its text (captions, class names) before an edit, is refused (`refuse_other_videos`, naming it),
    an older `--oracle` store's records (no `class`) verified so get their class
    (`record_oracle_classes`: re-trial 32A S5), and ids not in the data set are dropped with a warning.
    With or without, stores whose records of one id were captioned from different files are
    refused naming both (`merge_stores`: two data sets' stores with the same ids)."""
    from tgmae.captions.store import (drop_foreign, merge_stores, read_store, record_oracle_classes,
                                      refuse_other_videos)

    stores = [read_store(f).records for f in args.combine]
    if args.annotations:
        from tgmae.data.annotations import annotated_texts, clip_range

        videos, classes = _annotations(args)
        identity, ranges = _identities(videos), {v.video_id: clip_range(v) for v in videos}
        paths, texts = {v.video_id: str(v.path) for v in videos}, annotated_texts(videos, classes)
        for f, recs in zip(args.combine, stores):
            refuse_other_videos(f, recs, identity, ranges, texts, paths)
            record_oracle_classes(recs, texts)  # verified just now: later checks compare the class by name
        stores = [drop_foreign(f, recs, identity) for f, recs in zip(args.combine, stores)]
    return merge_stores(stores, require_all=args.require_all, names=args.combine)


def _refuse_inputs(args: argparse.Namespace) -> None:
    """SettingsError naming --out when it is a file this command reads: the annotation list, the
    classes.txt beside it (in a folder of split lists: in it), --descriptions or a --combine
    store; the caption store written there would replace it (--rebuild or not)."""
    from tgmae.errors import SettingsError

    out = Path(args.out).resolve()
    inputs = [*(args.combine or []), *([args.descriptions] if args.descriptions else [])]
    if args.annotations:
        ann = Path(args.annotations) if Path(args.annotations).exists() else Path(args.root) / args.annotations
        ann = ann.resolve()
        inputs += [ann, (ann if ann.is_dir() else ann.parent) / "classes.txt"]
    if any(out == Path(f).resolve() for f in inputs):
        raise SettingsError(f"{args.out} (--out): is a file this command reads (annotations, classes.txt, "
                            "--descriptions or --combine), which the caption store would replace; "
                            "give --out another file")


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    refuse_in_checkpoints(args.out, "--out")  # a run's resume reads its checkpoints/
    _refuse_inputs(args)
    if args.model:
        return _run_captioner(args)
    from tgmae.lifetime import launch_env, other_launched_rank

    if other_launched_rank():  # torchrun: the store is written whole, by rank 0 (only --model is sharded)
        rank, world = launch_env()
        print(f"rank {rank}/{world}: {args.out} is written by rank 0 (only --model captioning is sharded)")
        return 0
    with hold(args.out, "--out", folder=False):
        return _write_store(args)


def _write_store(args: argparse.Namespace) -> int:
    from tgmae.captions.store import update_store

    if args.merge:
        order = [v.video_id for v in _annotations(args)[0]] if args.annotations else None
        n, ne = merge_parts(args.out, order)
        say(f"{n} videos in {args.out}, {ne} failures in {errors_path(args.out)}")
        return 0
    parts = _unmerged_parts(args)
    if args.combine:
        recs = _combine(args)
        update_store(args.out, recs, rebuild=args.rebuild, keep_others=False)
        say(f"{len(recs)} videos from {len(args.combine)} sources -> {args.out}")
    else:
        _run_text_source(args)
    remove_parts(parts)  # --rebuild: the store is this run's alone, and a later --merge must not fold them in
    return 0


def _unmerged_parts(args: argparse.Namespace) -> list[Path]:
    """The part files of a sharded captioner run beside --out (and its errors file), which a
    store written whole by --oracle / --descriptions / --combine would sit beside until a
    `--merge` mixed them in. CaptionStoreError naming one, unless --rebuild (which removes them
    once the store is written)."""
    from tgmae.captions.store import CaptionStoreError

    parts = existing_parts(args.out) + existing_parts(errors_path(args.out))
    if parts and not args.rebuild:
        raise CaptionStoreError(f"{parts[0]}: --out {args.out} has {count(len(parts), 'part file')} of a sharded "
                                "captioner run not merged yet; finish that run (`tgmae caption --merge`) and "
                                "give this store another --out, or pass --rebuild to replace them")
    return parts
