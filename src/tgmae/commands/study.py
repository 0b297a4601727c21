"""`tgmae study [-c STUDY.yaml] [--quick] [key=value ...]`: the paper's comparison on the synthetic
set -> report.md/html, results.json (`tgmae.study.run`; what `make demo` runs)."""

from __future__ import annotations

from typing import Sequence

from tgmae.commands.args import Parser, add_config_option, parse_args, say


def main(argv: Sequence[str]) -> int:
    from tgmae.study.run import QUICK, load_study, run_study

    parser = Parser(prog="tgmae study", description=__doc__,
                    epilog="Without -c the defaults run: the same study as "
                                            "-c configs/study_synthetic.yaml (make demo).")
    add_config_option(parser, "study YAML (default: the built-in defaults, "
                              "= configs/study_synthetic.yaml)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI-sized: {QUICK['num_videos']} videos, {QUICK['clip_steps']} CLIP steps, the first "
                             "seed, 1-epoch phases, in OUT_DIR_quick (key=value overrides still win)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the study config")
    args = parse_args(parser, argv)
    out = run_study(load_study(args.config, args.overrides, args.quick), quick=args.quick)
    say(f"study report: {out / 'report.md'}")  # an ablation's: STUDY/variants/<variant>/
    return 0
