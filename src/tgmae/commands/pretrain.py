"""`tgmae pretrain -c CONFIG.yaml [section.key=value ...]`: VideoMAE / TGM pretraining
(`tgmae.train.pretrain`); under `torchrun` the same command runs data-parallel."""

from __future__ import annotations

from typing import Sequence

from tgmae.commands.args import parse_run_args, say


def main(argv: Sequence[str]) -> int:
    from tgmae.train.pretrain import pretrain

    cfg, _ = parse_run_args("pretrain", argv, description=__doc__)
    say(f"run directory: {pretrain(cfg)}")
    return 0
