"""`tgmae report RUN_OR_STUDY_DIR... [--out DIR]`: the results table, findings and figures from
finished study runs (`tgmae.study.report`), as report.md and report.html (one report: the HTML is
rendered from the Markdown) and results.json."""

from __future__ import annotations

from typing import Sequence

from tgmae.commands.args import Parser, parse_args


def main(argv: Sequence[str]) -> int:
    from tgmae.study.report import report_runs

    parser = Parser(prog="tgmae report", description=__doc__)
    parser.add_argument("runs", nargs="+", help="finished run directories or study folders")
    parser.add_argument("--out", default="report", help="folder for report.md / .html / results.json")
    parser.add_argument("--overwrite", action="store_true", help="replace a report of other runs in --out")
    args = parse_args(parser, argv)
    report_runs(args.runs, args.out, overwrite=args.overwrite)
    return 0
