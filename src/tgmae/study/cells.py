"""What makes a study cell: the study's maskings and phase defaults (configs/study_phases.yaml), its
reference rows, and the pretraining overrides that make a run one (masking, objective) cell rather
than another (`pretrain_cell_overrides`). `tgmae.study.run` builds every cell's runs from them;
`tgmae.study.report` lets two cells' runs differ in those settings and no others (`cell_defined_keys`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tgmae.config import ConfigError, parse_override, read_yaml

# The study's maskings (name -> RunConfig overrides) and each phase's default overrides, with the why
# of each value: configs/study_phases.yaml.
PHASES_FILE = Path(__file__).resolve().parents[3] / "configs" / "study_phases.yaml"


def load_phases(path: Path = PHASES_FILE) -> dict[str, Any]:
    """{"maskings": {name: [override, ...]}, "pretrain" / "probe" / "finetune": [override, ...]}
    from `path`. ConfigError names the file and the entry that is not a list of strings."""
    phases = read_yaml(path)
    lists = [("pretrain", phases.get("pretrain")), ("probe", phases.get("probe")), ("finetune", phases.get("finetune"))]
    lists += [(f"maskings.{k}", v) for k, v in (phases.get("maskings") or {}).items()]
    for key, value in lists:
        if not (isinstance(value, list) and all(isinstance(o, str) for o in value)):
            raise ConfigError(f"{path}: {key} must be a list of section.key=value overrides")
    return phases


PHASES = load_phases()
MASKINGS: dict[str, list[str]] = PHASES["maskings"]
# reference rows: name -> the objective its records carry
REFERENCES = {"none": "none", "scratch": "supervised"}
# finetuning keys the "scratch" reference sets its own way (`run.run_configs`): no pretrained weights,
# a whole cell's budget of epochs
SCRATCH_FINETUNE = ("model.pretrained", "train.epochs")


def pretrain_cell_overrides(masking: str, objective: str, mask_cache: str | Path) -> list[str]:
    """The pretraining overrides that make a run the (masking, objective) cell: the masking's MASKINGS
    entry (a reference row: tube's, which only sets the geometry), TGM's similarity cache `mask_cache`,
    the objective (a reference row: mae). `run.run_configs` puts them after the phase defaults and
    before study.pretrain."""
    reference = masking in REFERENCES
    out = list(MASKINGS["tube" if reference else masking])
    if masking.startswith("tgm"):
        out.append(f"masking.cache_dir={mask_cache}")
    return out + [f"contrastive.objective={'mae' if reference else objective}"]


def cell_settings(masking: str, objective: str) -> dict[str, Any]:
    """{"<phase> <dotted key>": value} a run is given for being the (masking, objective) cell
    (`pretrain_cell_overrides`, the "scratch" reference's SCRATCH_FINETUNE), keyed as
    `report.run_settings` keys a run's settings."""
    out: dict[str, Any] = {}
    for override in pretrain_cell_overrides(masking, objective, "<study>/similarity_cache"):
        key, value = parse_override(override)
        out["pretrain " + ".".join(key)] = value
    if masking == "scratch":
        out.update({f"finetune {k}": "scratch" for k in SCRATCH_FINETUNE})
    return out


def cell_defined_keys(a: tuple[str, str], b: tuple[str, str]) -> set[str]:
    """The settings (`cell_settings` keys) in which runs of the (masking, objective) cells `a` and `b`
    may differ: those the two cells are given other values of, or one of them only (re-trial 31A S1: cells of two recipes side by side).
    tube vs mgm: masking.name and mgm's motion vectors, not masking.ratio (0.75 in both); one cell
    with itself: none."""
    sa, sb = cell_settings(*a), cell_settings(*b)
    return {k for k in set(sa) | set(sb) if k not in sa or k not in sb or sa[k] != sb[k]}
