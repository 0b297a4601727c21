"""`tgmae data check --format F --root DIR ANNOTATIONS [--out report.json] [--workers N]` and
`tgmae data prepare --format F --root DIR ANNOTATIONS --out DIR [--short-side 320] [--workers N]`:
the dataset tools (`tgmae.data.check.run_check`, `tgmae.data.prepare.run_prepare`). Unreadable
annotations are an `AnnotationError`, a refused preparation a `PrepareError` (exit 2); bad videos
found (check) or failed (prepare) are exit 1 unless --allow-bad, every video failing exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from tgmae.config import DATASET_FORMATS
from tgmae.atomic import atomic_write_text, check_writable
from tgmae.data import check, prepare
from tgmae.data.check import check_report_out, found_problems, item_where, run_check
from tgmae.data.prepare import PrepareSettings, run_prepare
from tgmae.errors import count, nothing_done
from tgmae.commands.args import Parser


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tgmae data check", description=check.__doc__)
    p.add_argument("--format", required=True, choices=DATASET_FORMATS, help="annotation layout")
    p.add_argument("--root", required=True, help="folder the annotation paths are relative to")
    p.add_argument("annotations", help="annotation file, or the folder of split files")
    p.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 split number")
    p.add_argument("--subset", default="train", help="train | val | test (split-file formats)")
    p.add_argument("--min-frames", type=int, default=16, help="shorter clips are reported (data.num_frames)")
    p.add_argument("--frame-stride", type=int, default=4,
                   help="videos shorter than a clip of --min-frames frames this far apart are listed: a run reads "
                        "them with a smaller stride (data.frame_stride)")
    p.add_argument("--out", default="", help="write the JSON report here (a new file or an earlier report)")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not an earlier report")
    p.add_argument("--workers", type=int, default=1, help="processes checking videos in parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-bad", action="store_true",
                   help="exit 0 even when bad videos or rows are found (default: exit 1)")
    return p


def build_prepare_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tgmae data prepare", description=prepare.__doc__)
    p.add_argument("--format", required=True, choices=DATASET_FORMATS, help="annotation layout")
    p.add_argument("--root", required=True, help="folder the annotation paths are relative to")
    p.add_argument("annotations", help="annotation file, or the folder of split files")
    p.add_argument("--out", required=True, help="new data root: videos, annotations, prepare.json")
    p.add_argument("--short-side", type=int, default=PrepareSettings.short_side,
                   help="short side in pixels (never enlarged; 0 keeps the size)")
    p.add_argument("--crf", type=int, default=PrepareSettings.crf, help="x264 quality (lower = better)")
    p.add_argument("--preset", default=PrepareSettings.preset, help="x264 preset")
    p.add_argument("--gop", type=int, default=PrepareSettings.gop, help="keyframe interval in frames")
    p.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 split number")
    p.add_argument("--subset", default="train", help="train | val | test (split-file formats)")
    p.add_argument("--min-frames", type=int, default=16, help="for the data check of the output")
    p.add_argument("--workers", type=int, default=1, help="processes converting videos in parallel")
    p.add_argument("--report", default="", help="write the JSON report here (a new file or an earlier report)")
    p.add_argument("--overwrite", action="store_true", help="replace a --report file that is not an earlier report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-bad", action="store_true",
                   help="exit 0 even when videos failed or the output's check found bad videos (default: exit 1)")
    return p


def prepare_main(argv: Sequence[str]) -> int:
    args = build_prepare_parser().parse_args(argv)
    settings = PrepareSettings(args.short_side, args.crf, args.preset, args.gop)
    with prepare.hold_out(args.out):  # `run_prepare`'s (re-entrant): --out is judged under it
        if args.report:  # before the videos are prepared, not after; --out first: its refusal names it
            prepare.check_out(args.out, args.root, settings, args.format, args.annotations)
            written = prepare.files_written(args.format, args.root, args.annotations, args.out, split=args.split,
                                            subset=args.subset)  # the lists, classes.txt, videos, prepare.json
            read = prepare.files_a_check_reads(args.format, args.root, args.annotations, args.split, args.subset)
            prepare.refuse_prepared_set_file(args.report, "--report")  # another prepared set's files
            check_report_out(args.report, args.root, args.annotations, args.overwrite, what="--report",
                             tool="tgmae data prepare",
                             is_report=lambda f: check.is_check_report(f, prepare.REPORT_KEYS),
                             inputs=[*written, *read])
            check_writable(args.report, keep_new_folders=False)  # a refused --out leaves no report folder
        report = run_prepare(args.format, args.root, args.annotations, args.out, settings, split=args.split,
                             subset=args.subset, workers=max(1, args.workers), min_frames=args.min_frames,
                             progress=not args.no_progress)
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=2))
    c, ch = report["counts"], report["check"]
    print(f"{sum(c.values())} videos: {c['converted']} converted, {c['copied']} copied, {c['skipped']} "
          f"already done, {c['failed']} failed; annotations: {report['annotations'] or 'none written'}")
    for item in report["failed"][:10]:
        print(f"  {item['path']}: {item['reason']}")
    if ch is not None:  # None: nothing was prepared, nothing to check
        checked = ", ".join(x["annotations"] for x in ch["lists"])  # the list given, not every list carried
        print(f"data check of {checked}: {ch['checked']} videos, {ch['ok']} ok, {ch['bad']} bad")
        for item in ch["items"][:10]:
            print(f"  {item_where(item)}: {item['reason']}")
    if c["failed"] and c["failed"] == sum(c.values()):  # nothing converted, copied or done before
        raise nothing_done(c["failed"],
                           args.report or "the lines above (--report FILE keeps them all)")
    # as `data check`: bad videos are exit 1, so `prepare && pretrain` stops (their rows are kept)
    bad = c["failed"] or (ch is not None and found_problems(ch))
    return 1 if bad and not args.allow_bad else 0


TOOLS = ("check", "prepare")


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    usage = ("usage: tgmae data check --format F --root DIR ANNOTATIONS [--out report.json] [--workers N]\n"
             "       tgmae data prepare --format F --root DIR ANNOTATIONS --out DIR [--short-side 320]")
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(f"{usage}\n\ntools:\n  check    {check.__doc__.splitlines()[0]}\n"
              f"  prepare  {prepare.__doc__.splitlines()[0]}\n\n"
              "`tgmae data TOOL --help` shows its arguments.")
        return 0
    if not argv or argv[0] not in TOOLS:
        print(usage if not argv else f"tgmae data: unknown tool {argv[0]!r} (expected: check, prepare)\n{usage}",
              file=sys.stderr)
        return 2
    if argv[0] == "prepare":
        return prepare_main(argv[1:])
    args = build_parser().parse_args(argv[1:])
    if args.out:  # before checking every video, not after
        read = prepare.files_a_check_reads(args.format, args.root, args.annotations, args.split, args.subset)
        prepare.refuse_prepared_set_file(args.out, "--out")  # any prepared set's files, not only the one checked
        check_report_out(args.out, args.root, args.annotations, args.overwrite, inputs=read)
        check_writable(args.out, keep_new_folders=False)
    report = run_check(args.format, args.root, args.annotations, split=args.split, subset=args.subset,
                       min_frames=args.min_frames, frame_stride=args.frame_stride, workers=max(1, args.workers),
                       progress=not args.no_progress)
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
    c = report["counts"]
    lists = report["lists"]
    read = ("; lists: " + ", ".join(f"{x['subset']} {Path(x['file']).name} ({x['records']}"
                                    + (f", {x['checked_before']} checked above" if x.get("checked_before") else "")
                                    + ")" for x in lists)
            if len(lists) > 1 else "")  # what a run reads besides the list given
    print(f"{count(report['checked'], 'video')} checked: {report['ok']} ok, {report['bad']} bad "
          f"({', '.join(f'{k} {v}' for k, v in c.items() if v) or 'none'}); "
          f"{report['bad_rows']} bad annotation rows{read}" + (f"; report: {args.out}" if args.out else ""))
    for item in report["items"][:10]:
        print(f"  {item_where(item)}: {item['reason']}")  # the reason names the kind; the id, which row
    for row in report["rows"][:10]:
        print(f"  bad row: {row['file']}:{row['line']}: {row['reason']}")
    for x in report["lists"]:
        if not x["records"]:
            print(f"  empty: {x['file']} lists no videos ({x['subset']})")  # the file read, not its folder
    for x in report["not_found"]:  # the list given is checked; a run would stop at this one
        print(f"  not checked: {x['file']} does not exist (the {x['subset']} list a run reads beside this train "
              "list unless data.val_annotations names another)")
    _print_shorter(report)
    return 1 if found_problems(report) and not args.allow_bad else 0


def _print_shorter(report: dict) -> None:
    """The readable videos shorter than a clip's span (`run_check`'s shorter_than_clip), first ten."""
    short = report["shorter_than_clip"]
    if short:
        print(f"{len(short)} video{'s' if len(short) > 1 else ''} shorter than a clip of {report['clip_span']} frames "
              f"(--min-frames {report['min_frames']}, --frame-stride {report['frame_stride']}): a run reads "
              f"{'them' if len(short) > 1 else 'it'} with a smaller stride (not counted as bad)")
    for item in short[:10]:
        print(f"  {item_where(item)}: {item['num_frames']} frames")
