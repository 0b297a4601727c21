"""`tgmae demo-pretrain` (what `make demo-pretrain` runs): synthetic set -> tiny pretraining -> figures
(`tgmae.train.demo_pretrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tgmae.commands.args import Parser, add_config_option, parse_args


def main(argv: Sequence[str]) -> int:
    from tgmae.train.demo_pretrain import DEFAULT_CONFIG, demo_pretrain

    parser = Parser(prog="tgmae demo-pretrain", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="folder for the data set and the run")
    parser.add_argument("--num-videos", type=int, default=None,
                        help="synthetic videos to generate (default 240; 32 with --quick)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: few videos, few steps")
    add_config_option(parser, "pretraining config", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="dotted config overrides")
    args = parse_args(parser, argv)
    demo_pretrain(Path(args.out), args.num_videos, args.quick, args.config, args.overrides)
    return 0
