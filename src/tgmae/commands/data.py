"""`tgmae data check --format F --root DIR ANNOTATIONS [--out report.json] [--workers N]`: the
dataset tools (`tgmae.data.check.run_check`). Unreadable annotations are an `AnnotationError` (exit 2)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from tgmae.config import DATASET_FORMATS
from tgmae.data import check
from tgmae.atomic import atomic_write_text, check_writable
from tgmae.data.check import found_problems, run_check


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tgmae data check", description=check.__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=DATASET_FORMATS, help="annotation layout")
    p.add_argument("--root", required=True, help="folder the annotation paths are relative to")
    p.add_argument("annotations", help="annotation file, or the folder of split files")
    p.add_argument("--split", type=int, default=1, help="UCF101 / HMDB51 split number")
    p.add_argument("--subset", default="train", help="train | val | test (split-file formats)")
    p.add_argument("--min-frames", type=int, default=16, help="shorter clips are reported (data.num_frames)")
    p.add_argument("--out", default="", help="write the JSON report here")
    p.add_argument("--workers", type=int, default=1, help="processes checking videos in parallel")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-bad", action="store_true",
                   help="exit 0 even when bad videos or rows are found (default: exit 1)")
    return p


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    usage = "usage: tgmae data check --format F --root DIR ANNOTATIONS [--out report.json] [--workers N]"
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(f"{usage}\n\ntools:\n  check  {check.__doc__.splitlines()[0]}\n\n"
              "`tgmae data check --help` shows its arguments.")
        return 0
    if not argv or argv[0] != "check":
        print(usage if not argv else f"tgmae data: unknown tool {argv[0]!r} (expected: check)\n{usage}",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    if args.out:  # before checking every video, not after
        check_writable(args.out)
    report = run_check(args.format, args.root, args.annotations, split=args.split, subset=args.subset,
                       min_frames=args.min_frames, workers=max(1, args.workers), progress=not args.no_progress)
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2))
    c = report["counts"]
    print(f"{report['checked']} videos checked: {report['ok']} ok, {report['bad']} bad "
          f"({', '.join(f'{k} {v}' for k, v in c.items() if v) or 'none'}); "
          f"{report['bad_rows']} bad annotation rows" + (f"; report: {args.out}" if args.out else ""))
    for item in report["items"][:10]:
        print(f"  {item['path']}: {item['reason']}")  # the reason names the kind
    for row in report["rows"][:10]:
        print(f"  bad row: {row['file']}:{row['line']}: {row['reason']}")
    if report["empty"]:
        print(f"  empty: {args.annotations} lists no videos")
    return 1 if found_problems(report) and not args.allow_bad else 0
