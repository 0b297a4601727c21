"""`tgmae config show [-c FILE] [--recipe finetune|probe] [section.key=value ...]`.

Prints the resolved run configuration (defaults < recipe < YAML file < overrides, exactly as the
training commands resolve it) as YAML with each field's one-line help as a comment, so every key
is discoverable from the command line and the output is itself a valid `-c` file. The help is the
trailing comment of the field's line in `tgmae/config.py` (the section's docstring heads it).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
from functools import lru_cache
from typing import Any, Sequence

import yaml

from tgmae.commands.args import Parser, add_config_option
from tgmae import config as config_module


@lru_cache(maxsize=None)
def field_help() -> dict[tuple[str, str], str]:
    """{(dataclass name, field name): the trailing `# ...` comment of its line in config.py, else the
    comment lines right above it}."""
    source = inspect.getsource(config_module)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}

    def help_of(stmt: ast.AnnAssign) -> str:
        if comments.get(stmt.end_lineno):
            return comments[stmt.end_lineno]
        above, line = [], stmt.lineno - 1  # else the comment lines right above the field
        while line in comments and source.splitlines()[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        return " ".join(above)

    return {(node.name, stmt.target.id): help_of(stmt)
            for node in ast.parse(source).body if isinstance(node, ast.ClassDef)
            for stmt in node.body if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


def _scalar(value: Any) -> str:
    """One YAML flow value (null, true, 0.0001, [0.9, 0.95], 'text')."""
    plain = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(plain, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def render(cfg: Any) -> str:
    """A resolved RunConfig -> commented YAML (section docstring, then `key: value  # help`)."""
    helps = field_help()
    out: list[str] = []
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        doc = (inspect.getdoc(type(sub)) or "").splitlines()
        out.append(f"{section.name}:" + (f"  # {doc[0]}" if doc and doc[0] else ""))
        for f in dataclasses.fields(sub):
            text = helps.get((type(sub).__name__, f.name), "")
            out.append(f"  {f.name}: {_scalar(getattr(sub, f.name))}" + (f"  # {text}" if text else ""))
    return "\n".join(out) + "\n"


TOOLS = ("show",)


def main(argv: Sequence[str]) -> int:
    parser = Parser(prog="tgmae config", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True, metavar="show")
    show = sub.add_parser("show", help="print the resolved config with each field's help",
                          description=__doc__.split("\n\n")[1])
    add_config_option(show, "YAML config file (sections as in tgmae.config)")
    show.add_argument("--recipe", choices=("finetune", "probe"),
                      help="apply the protocol defaults `tgmae finetune` / `tgmae probe` use")
    show.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4")
    args = parser.parse_args(list(argv))
    config_module.refuse_repeated_overrides(args.overrides)
    base = None
    if args.recipe:
        from tgmae.evaluate.recipes import FINETUNE_RECIPE, PROBE_RECIPE

        base = {"finetune": FINETUNE_RECIPE, "probe": PROBE_RECIPE}[args.recipe]
    if args.config:
        refuse_study_file(args.config)
    sys.stdout.write(render(config_module.load_config(args.config, args.overrides, base=base)))
    return 0


def refuse_study_file(path: str) -> None:
    """ConfigError naming `path` as a `tgmae study` config (its top-level keys are study keys, not
    a run's sections), which `config show` would report as an unknown key."""
    from tgmae.study.run import StudyConfig

    keys = set(config_module.read_config_file(path))
    runs = {f.name for f in dataclasses.fields(config_module.RunConfig)}
    study = {f.name for f in dataclasses.fields(StudyConfig)}
    if keys and not keys & runs and keys <= study:
        raise config_module.ConfigError(f"{path} is a `tgmae study` config (study keys: {', '.join(sorted(keys)[:4])}"
                                        f"{' ...' if len(keys) > 4 else ''}), not a run's: `tgmae study -c {path}` "
                                        "runs it; its cells' run settings are its pretrain / probe / finetune lists")
