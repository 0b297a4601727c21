"""Command-line parsing shared by the commands: options in any order, `-c CONFIG.yaml` plus dotted
`section.key=value` overrides -> a validated `RunConfig` (a ConfigError names the key).
"""

from __future__ import annotations

import argparse
from typing import Sequence


def summary(doc: str | None) -> str | None:
    """A docstring's first paragraph as one line: what `--help` says a command does (its first
    line alone may end mid-sentence)."""
    return " ".join(doc.split("\n\n")[0].split()) if doc else doc


class Parser(argparse.ArgumentParser):
    """Every command's argument parser; `description` may be a whole docstring (`summary`). A usage
    error (an unknown flag, a missing argument) is the same on every torchrun rank, since each
    reads one command line: rank 0 alone prints it, as `tgmae.cli` does for config errors; each
    rank exits 2."""

    def __init__(self, *args, description: str | None = None, **kwargs) -> None:
        super().__init__(*args, description=summary(description), **kwargs)

    def error(self, message: str):  # type: ignore[override]
        from tgmae.lifetime import other_launched_rank, wait_for_rank0

        if other_launched_rank():
            wait_for_rank0()  # torchrun stops this rank here: rank 0 made the same mistake
        super().error(message)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser`'s arguments from `argv` in any order: options may come before, between or after
    the positionals (`CKPT -c cfg.yaml data.image_size=64` = `-c cfg.yaml CKPT data.image_size=64`).
    Every command with a variable-length positional (overrides, run folders) parses through here;
    a key given twice among the overrides is a ConfigError naming it."""
    from tgmae.config import refuse_repeated_overrides

    args = parser.parse_intermixed_args(list(argv))
    refuse_repeated_overrides(getattr(args, "overrides", None) or ())
    return args


def say(text: str) -> None:
    """Print a command's closing lines once: under torchrun, rank 0 alone (every rank ends a run
    with the same results). Only for lines after which the command returns 0: a stop from here on
    leaves its exit code 0 (`lifetime.results_said`). Stops are held across the print and the mark
    (`lifetime.stops_deferred`), so one landing inside the print, its line already out, is raised
    after the mark: a stop after the results, not "rerun to go on", exit 143 (re-trial 31A M1)."""
    from tgmae.lifetime import other_launched_rank, results_said, stops_deferred

    with stops_deferred():
        if not other_launched_rank():
            print(text)
        results_said()


class ConfigFile(argparse.Action):
    """`-c/--config FILE`. Given twice, argparse would keep the last silently: refused naming both
    (ConfigError, exit 2)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from tgmae.config import ConfigError

        first = getattr(namespace, "_config_given", None)
        if first is not None:
            raise ConfigError(f"-c/--config given twice ({first}, {values}); give one file "
                              "(and section.key=value overrides over it)")
        namespace._config_given = values
        setattr(namespace, self.dest, values)


def add_config_option(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """The commands' `-c/--config` (`ConfigFile`)."""
    parser.add_argument("-c", "--config", action=ConfigFile, default=default, help=help)


def load_run_config(prog: str, config: str | None, overrides: Sequence[str], base: dict | None = None):
    """(RunConfig from `-c` file + overrides over `base`, a recipe; the dotted keys the file and the
    overrides set, as `parse_run_args`' `given`) for a command with its own parser. Raises
    ConfigError (a UserError: `tgmae.cli` prints it as `tgmae PROG: config error: ...`, exit 2)."""
    from tgmae.config import load_config_and_keys

    return load_config_and_keys(config, list(overrides), base=base)  # copies `base`: a shared recipe stays as written


def parse_run_args(prog: str, argv: Sequence[str], description: str = "", base: dict | None = None):
    """Common shape of training commands: `-c CONFIG.yaml` and `section.key=value` overrides, in
    any order, over `base` (a protocol's recipe). Returns (RunConfig, argparse.Namespace); the
    namespace's `given` holds the dotted keys the -c file and the overrides set (not the recipe's:
    `config.load_config_and_keys`), for a command that fills the others from elsewhere. Config
    errors exit 2 with the message (`tgmae.cli`: under torchrun, rank 0's)."""
    from tgmae.config import load_config_and_keys

    parser = Parser(prog=f"tgmae {prog}", description=description)
    add_config_option(parser, "YAML config file (sections as in tgmae.config)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4")
    args = parse_args(parser, argv)
    cfg, args.given = load_config_and_keys(args.config, list(args.overrides), base=base)  # copies `base`
    return cfg, args
