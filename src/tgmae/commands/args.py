"""Command-line parsing shared by the commands: options in any order, `-c CONFIG.yaml` plus dotted
`section.key=value` overrides -> a validated `RunConfig` (a ConfigError names the key).
"""

from __future__ import annotations

import argparse
import copy
from typing import Sequence


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser`'s arguments from `argv` in any order: options may come before, between or after
    the positionals (`CKPT -c cfg.yaml data.image_size=64` = `-c cfg.yaml CKPT data.image_size=64`).
    Every command with a variable-length positional (overrides, run folders) parses through here;
    a key given twice among the overrides is a ConfigError naming it."""
    from tgmae.config import refuse_repeated_overrides

    refuse_repeated_config_files(argv)
    args = parser.parse_intermixed_args(list(argv))
    refuse_repeated_overrides(getattr(args, "overrides", None) or ())
    return args


def refuse_repeated_config_files(argv: Sequence[str]) -> None:
    """`-c A.yaml -c B.yaml`: argparse keeps B silently; refused naming both (ConfigError, exit 2)."""
    from tgmae.config import ConfigError

    files, argv = [], list(argv)
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config"):
            files.append(argv[i + 1] if i + 1 < len(argv) else "")
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("-c") and not arg.startswith("--") and len(arg) > 2:
            files.append(arg[2:])
    if len(files) > 1:
        raise ConfigError(f"-c/--config given {len(files)} times ({', '.join(files)}); give one file "
                          "(and section.key=value overrides over it)")


def load_run_config(prog: str, config: str | None, overrides: Sequence[str], base: dict | None = None):
    """RunConfig from `-c` file + overrides (over `base`, a recipe). Raises ConfigError (a UserError:
    `tgmae.cli` prints it as `tgmae PROG: config error: ...`, exit 2)."""
    from tgmae.config import load_config

    return load_config(config, list(overrides), base=copy.deepcopy(base))  # a shared recipe stays as written


def parse_run_args(prog: str, argv: Sequence[str], description: str = "", base: dict | None = None):
    """Common shape of training commands: `-c CONFIG.yaml` and `section.key=value` overrides, in
    any order, over `base` (a protocol's recipe). Returns (RunConfig, argparse.Namespace). Config
    errors exit 2 with the message, printed by torchrun's rank 0 alone (`errors.every_rank`:
    each rank reads the same command line and file)."""
    from tgmae.errors import UserError, every_rank

    parser = argparse.ArgumentParser(prog=f"tgmae {prog}", description=description)
    parser.add_argument("-c", "--config", help="YAML config file (sections as in tgmae.config)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4")
    try:
        args = parse_args(parser, argv)
        return load_run_config(prog, args.config, args.overrides, base), args
    except UserError as e:
        raise every_rank(e)
