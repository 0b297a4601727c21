"""The model card (README.md) `tgmae export-hf` writes beside an exported model.

It states what the run was (masking, objective, data, steps; read from the run folder's
`config.yaml` and `metrics.jsonl` when the checkpoint sits in one), its results when the run has
them (`test_results.json`, `finetune_results.json`, `probe_results.json`, the last logged
loss), the architecture, and how to load the folder in transformers and back into tgmae.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

from tgmae.config import ConfigError
from tgmae.models.arch import VideoMAEArch
from tgmae.weights.files import CheckpointError, resolve_checkpoint
from tgmae.weights.official import ASSUMED_HF_KEY, OFFICIAL_OPTIONS

log = logging.getLogger(__name__)

# a run's result files and how the card labels their numbers (every row says where it comes from)
RESULT_LABELS = {"test_results.json": "test (multi-view)", "finetune_results.json": "finetune (validation)",
                 "probe_results.json": "linear probe (validation)"}


@dataclass
class RunInfo:
    """What a run folder says about the checkpoint: config (a RunConfig or None), steps, results."""

    run_dir: Optional[Path] = None
    config: Any = None
    steps: Optional[int] = None
    results: dict[str, Any] = field(default_factory=dict)
    last_loss: Optional[float] = None
    note: str = ""  # why the config could not be read, or (run_dir None) why the folder is not its run
    # settings changed mid-run (checkpoint.resume=ignore_config): config_changes.jsonl records
    changes: list[dict] = field(default_factory=list)


def find_run_dir(checkpoint: str | Path) -> Optional[Path]:
    """The run folder of a checkpoint (`run_of`), None when it has none or is not that run's."""
    return run_of(checkpoint)[0]


def run_of(checkpoint: str | Path) -> tuple[Optional[Path], str]:
    """(the run folder of a checkpoint, ""): the folder itself, the file's folder, or the run above a
    `checkpoints/step_N/` checkpoint (also named as `checkpoints/latest` or `checkpoints/`:
    `files.resolve_checkpoint`) - whichever holds a `config.yaml` - when the checkpoint is that run's
    (`foreign_to_run`); (None, why not) for weights made by another run, such as a model file copied
    into another run's folder; (None, "") beside no config.yaml. The one rule of every reader of a
    checkpoint's run (figures, the card, its data settings, its training videos, convert, probe,
    evaluate): re-trial 32A S2, another run's file was drawn under the folder's masking and titled
    `final`; re-trial 33B S1, one of the same settings too."""
    p = _resolved(checkpoint)
    base = p if p.is_dir() else p.parent
    candidates = [base, base.parent.parent] if base.parent.name == "checkpoints" else [base]
    run = next((c for c in candidates if (c / "config.yaml").is_file()), None)
    why = foreign_to_run(checkpoint, run) if run is not None else ""
    return (None, why) if why else (run, "")


def foreign_to_run(checkpoint: str | Path, run: Path) -> str:
    """Why `checkpoint` is not the model of the run in folder `run` ("" when nothing says so). Its
    recorded run id (`recorded_run_id`) decides when it has one: the folder's (`run_ids`: its own, or
    one of the runs its folder was copied or moved from) is the run's, any other (or a folder without one, whose run saved nothing since ids were
    recorded) is not (re-trial 33B S1: a copy of the same settings was titled `final` and carded
    as the folder's run). Weights recording none (made before ids were recorded) are compared by
    settings (`foreign_by_settings`)."""
    made_by, where = recorded_run_id(checkpoint)
    if made_by is None:
        return foreign_by_settings(checkpoint, run)
    if is_runs(run, made_by, checkpoint):  # its own, or of the run its folder was copied from (re-trial 34A S2)
        return ""
    own = folder_run_id(run)
    return (f"{where} is not the model of the run in {run} (it records run id {made_by}, the run's "
            f"{'is ' + own if own else 'folder records none'}: made by another run): its own recorded settings are used")


def foreign_by_settings(checkpoint: str | Path, run: Path) -> str:
    """`foreign_to_run` of weights recording no run id: the settings they record (`recorded_settings`:
    data and masking) differ from the run's config.yaml in a key that config_changes.jsonl does not
    say changed mid-run (where a step checkpoint of before the change records the old value).
    Weights recording none, or a config.yaml that does not read, say nothing: they count as the
    run's (re-trial 32A S2)."""
    cfg = run_config(run)[0]
    if cfg is None:
        return ""
    changed = {k for c in _json_lines(run / "config_changes.jsonl") for k in c.get("changes", {})}
    differ, where = [], ""
    for section in RECORDED:
        recorded, file, _ = _recorded(checkpoint, section)  # unchecked: a bad value is not the run's either
        own = section_settings(section, getattr(cfg, section))
        said = [f"{section}.{k} {v!r} (the run's {own[k]!r})" for k, v in recorded.items()
                if k in own and own[k] != v and f"{section}.{k}" not in changed]
        differ, where = differ + said, where or (file if said else "")
    if not differ:
        return ""
    return (f"{where} is not the model of the run in {run} (it records {', '.join(differ[:4])}"
            f"{' ...' if len(differ) > 4 else ''}, not its config.yaml's): its own recorded settings are used")


# a run's id: random, written once into its folder when the run starts (kept on resume), and
# recorded by every weights file the run saves, and by convert / export-hf copies of them ("made
# from run X"): what proves a file in a run folder is that run's (`foreign_to_run`, re-trial 33B S1).
# The file: the id on its first line, then the folder it was made for and the ids of the runs the
# folder was copied or moved from (`own_run_id`, re-trial 34A S2)
RUN_ID_FILE = "run_id"  # in the run folder
RUN_ID_META = "run_id"  # our safetensors files' metadata (models, step checkpoints, encoders, classifiers)
EXPORT_RUN_ID_KEY = "tgmae_run_id"  # export-hf's config.json entry
RUN_FOLDER_LINE, ANCESTOR_LINE = "folder: ", "copied from run: "  # RUN_ID_FILE's later lines
COPIED_AT = " at step "  # an ancestor line's end: the newest step its folder held when copied
STEP_FOLDER = re.compile(r"step_(\d{8})")  # a step checkpoint's folder name (`checkpoint.save_checkpoint`)


def _run_id_file(run: str | Path) -> tuple[list[str], Optional[str]]:
    """(the ids RUN_ID_FILE in folder `run` lists: the run's first, then its ancestry; the absolute
    folder it was made for, None when it names none: written before folders were recorded);
    ([], None) for a folder without one, an unreadable one or one whose first line is empty."""
    try:
        lines = (Path(run) / RUN_ID_FILE).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return [], None
    if not lines or not lines[0].strip():
        return [], None
    later = [line.strip() for line in lines[1:]]
    ancestry = [line.removeprefix(ANCESTOR_LINE).split(COPIED_AT)[0] for line in later if line.startswith(ANCESTOR_LINE)]
    folder = next((line.removeprefix(RUN_FOLDER_LINE) for line in later if line.startswith(RUN_FOLDER_LINE)), None)
    return [lines[0].strip(), *ancestry], folder


def _copied_at(run: str | Path) -> dict[str, int]:
    """{ancestor id: the newest step its run had when folder `run` was copied from it} of the
    ancestor lines of `run`'s RUN_ID_FILE that say it (`own_run_id`)."""
    try:
        lines = (Path(run) / RUN_ID_FILE).read_text().splitlines()[1:]
    except (OSError, UnicodeDecodeError):
        return {}
    found = (line.strip().removeprefix(ANCESTOR_LINE).split(COPIED_AT) for line in lines
             if line.strip().startswith(ANCESTOR_LINE) and COPIED_AT in line)
    return {i: int(n) for i, n in found if n.isdigit()}


def _step_of(checkpoint: str | Path) -> Optional[int]:
    """The step of a step checkpoint (its folder `step_<8 digits>`, or a file in it); None otherwise."""
    p = Path(checkpoint)
    for part in (p.name, p.parent.name):
        m = STEP_FOLDER.fullmatch(part)
        if m:
            return int(m.group(1))
    return None


def _newest_step(run: str | Path) -> int:
    """The newest step folder's step in run folder `run`'s checkpoints/ (0 for none)."""
    folder = Path(run) / "checkpoints"
    steps = [_step_of(p) for p in folder.iterdir()] if folder.is_dir() else []
    return max((s for s in steps if s is not None), default=0)


def is_runs(run: str | Path, made_by: str, checkpoint: str | Path) -> bool:
    """Whether weights recording run id `made_by` at `checkpoint` are the run's in folder `run`: its
    own id, or one its folder was copied or moved from (`run_ids`), where a step checkpoint of that
    run counts only up to the step the copy was taken at (re-trial 34B S1: the original's later step
    moved into the copy resumed there as the copy's), and a file of that run recording no step (a
    model file: the original's final weights put into the copy were carded as the copy's, re-trial
    35A S1) is not the copy's: the copy's own model file records its own id once it trains. An
    ancestor recorded without a step (before it was recorded) keeps all its files the run's."""
    ids = run_ids(run)
    if made_by not in ids:
        return False
    bound, step = _copied_at(run).get(made_by), _step_of(checkpoint)
    return made_by == ids[0] or bound is None or (step is not None and step <= bound)


def folder_run_id(run: str | Path) -> Optional[str]:
    """The id of the run in folder `run` (its `RUN_ID_FILE`'s first line); None for a folder without
    one (a run started before ids were written) or an unreadable one."""
    ids = _run_id_file(run)[0]
    return ids[0] if ids else None


def run_ids(run: str | Path) -> list[str]:
    """The ids whose files are the run's in folder `run`: its own (`folder_run_id`) and those of the
    runs its folder was copied or moved from (`own_run_id`): a copy holds the original's checkpoints
    legitimately, and a moved run resumes its own steps (re-trial 34A S2). [] for a folder without one."""
    return _run_id_file(run)[0]


def own_run_id(run: str | Path) -> str:
    """The id of the run in folder `run`, written there first when it has none (a new run, or one
    started before ids were written, resumed) or when its `RUN_ID_FILE` was made for another folder:
    a copy (`cp -a`) or a move, whose training is not the original's (re-trial 34A S2: a copy's
    further-trained model recorded the original's id and was carded as its run). Such a folder gets
    a new random hex id, the file keeping the old ones as its ancestry (`run_ids`). A file naming no
    folder (written before folders were recorded) is taken as this folder's, and now names it. Main
    rank only; the run folder's lock keeps two writers out."""
    import uuid

    from tgmae.atomic import atomic_write_text

    ids, made_for = _run_id_file(run)
    here = str(Path(run).resolve())
    if ids and made_for == here:
        return ids[0]
    bounds = _copied_at(run)
    if not ids or made_for is not None:  # none yet, or a copy / move of another folder's run: a new run
        if ids:  # its steps so far are the run it was copied from
            bounds.setdefault(ids[0], _newest_step(run))
        ids = [uuid.uuid4().hex, *ids]
    Path(run).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run) / RUN_ID_FILE, "".join(
        [f"{ids[0]}\n{RUN_FOLDER_LINE}{here}\n",
         *(f"{ANCESTOR_LINE}{i}" + (f"{COPIED_AT}{bounds[i]}" if i in bounds else "") + "\n" for i in ids[1:])]))
    return ids[0]


def run_id_note(run_id: Optional[str]) -> dict[str, str]:
    """The metadata our file records for `run_id` (`RUN_ID_META`); {} for none (not known)."""
    return {RUN_ID_META: run_id} if run_id else {}


def recorded_run_id(checkpoint: str | Path) -> tuple[Optional[str], str]:
    """(the run id recorded with the weights, the file recording it): our file's metadata
    `RUN_ID_META` (a step checkpoint's too), an export-hf folder's config.json `EXPORT_RUN_ID_KEY`;
    (None, "") for weights recording none (made before ids were recorded, outside a run, an
    official or transformers checkpoint)."""
    entries, where, export = _stored(checkpoint)
    said = entries.get(EXPORT_RUN_ID_KEY if export else RUN_ID_META)
    return (said, where) if isinstance(said, str) and said else (None, "")


def _resolved(checkpoint: str | Path) -> Path:
    """The path a loader reads for `checkpoint` (`checkpoints/latest` -> its step folder's
    model.safetensors); the path as given when it names no training checkpoint."""
    try:
        return resolve_checkpoint(checkpoint)
    except (CheckpointError, OSError):
        return Path(checkpoint)


def checkpoint_step(checkpoint: str | Path) -> Optional[int]:
    """N of a `checkpoints/step_N/` checkpoint (the folder, a file in it, or `checkpoints/latest`
    naming it), else None."""
    p = _resolved(checkpoint)
    for part in (p, p.parent):
        m = re.fullmatch(r"step_(\d+)", part.name)
        if m and part.parent.name == "checkpoints":
            return int(m.group(1))
    return None


def _json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines log (metrics.jsonl, config_changes.jsonl); a torn line is left
    out, a missing file has none."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def run_config(run: Path) -> tuple[Any, str]:
    """(the RunConfig in the run folder's config.yaml, ""), or (None, why it could not be read):
    the one reader of a run's saved settings (the card, figures, the test-on-training-videos check)."""
    import yaml

    from tgmae.config import ConfigError, RunConfig, from_dict

    try:
        cfg = from_dict(RunConfig, yaml.safe_load((run / "config.yaml").read_text()))
    except (ConfigError, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        return None, f"{run / 'config.yaml'} could not be read ({e})"
    _say_relative_paths(run, cfg)
    return cfg, ""


_SAID_RELATIVE: set[Path] = set()  # run folders whose relative paths were said: once per command


def _say_relative_paths(run: Path, cfg: Any) -> None:
    """Log once per run folder that its config.yaml records relative data paths (a run started
    before they were recorded resolved: `config.recorded_paths`), which a figure or export reads
    against the current folder, not knowing the folder the run started in (re-trial 31A S4)."""
    from tgmae.config import relative_paths

    relative = relative_paths(cfg)
    if relative and run.resolve() not in _SAID_RELATIVE:
        _SAID_RELATIVE.add(run.resolve())
        log.warning("%s records %s relative to the folder the run started in, which it does not record: read "
                    "from the current folder %s (give -c or data.root=... if that is another folder)",
                    run / "config.yaml", ", ".join(relative), Path.cwd())


# what weights record of the run that trained them, by config section: {key: value} as one JSON object
# in our file's metadata and in an export's config.json (transformers ignores the key), read where no
# run folder holds the config.yaml: the clip settings (re-trial 24B S3) and the masking a pretraining
# model was trained under (re-trial 30B S3: a copied file was drawn under the default tube 0.9)
RUN_DATA_KEYS = ("num_frames", "image_size", "frame_stride", "mean", "std", "sampling")
DATA_META = "data"  # our files' metadata (classifier, pretraining, encoder) of them
EXPORT_DATA_KEY = "tgmae_data"  # export-hf's config.json entry of them
# masking.* that decide the masks; not cache_dir / clip_model, paths of the machine it trained on
# (a figure of the file takes them from -c or an override)
RUN_MASK_KEYS = ("name", "ratio", "select", "tubelet_frame", "motion_source", "caption", "mode", "dense_size",
                 "decoder_ratio", "decoder_mask")
MASK_META = "masking"  # our pretraining files' metadata of them
EXPORT_MASK_KEY = "tgmae_masking"  # export-hf --pretraining's config.json entry of them
# section -> (its recorded keys, our file's metadata key, an export's config.json key)
RECORDED = {"data": (RUN_DATA_KEYS, DATA_META, EXPORT_DATA_KEY), "masking": (RUN_MASK_KEYS, MASK_META, EXPORT_MASK_KEY)}


def section_settings(section: str, values: Any) -> dict[str, Any]:
    """{recorded keys: value} of a config `section` (`RECORDED`: "data" of a `DataConfig`, "masking"
    of a `MaskingConfig`), tuples as lists, as JSON holds them."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k in RECORDED[section][0] for v in [getattr(values, k)]}


def recorded_note(section: str, settings: dict[str, Any]) -> dict[str, str]:
    """The metadata our file records for the `section` `settings` (`RECORDED`); {} for none (not known)."""
    return {RECORDED[section][1]: json.dumps(settings)} if settings else {}


def recorded_settings(checkpoint: str | Path, section: str = "data",
                      replaced: Optional[Collection[str]] = None) -> tuple[dict[str, Any], str]:
    """({recorded keys of `section`: value} recorded with the weights, the file recording them): an
    export-hf folder's config.json entry, our safetensors file's metadata (`RECORDED`; a training
    checkpoint's: its stored config's section); ({}, "") for weights that record none (an official
    .pth, another folder, a file written before they were recorded, or outside a run). replaced:
    the keys of the section (`name`, not `masking.name`) the caller's overrides set, left out;
    None: the caller takes no overrides.
    Raises RecordedSettingsError naming the file and its key for a value the section refuses
    (re-trial 32A M2: an export's `tgmae_masking.name` 'tubee' was said as the user's masking.name)."""
    settings, where, label = _recorded(checkpoint, section)
    settings = {k: v for k, v in settings.items() if k not in (replaced or ())}
    check_recorded(section, settings, f"{where}: {label}", replaced is not None)
    return (settings, where) if settings else ({}, "")


def _recorded(checkpoint: str | Path, section: str) -> tuple[dict[str, Any], str, str]:
    """(the `section` settings the weights record, unchecked, the file, the entry holding them:
    `tgmae_masking`, `metadata masking`, `metadata tgmae_config.masking`); ({}, "", "") for none."""
    keys, meta_key, export_key = RECORDED[section]
    entries, where, export = _stored(checkpoint)
    try:
        if export:
            label, recorded = export_key, entries.get(export_key)
        else:
            label = f"metadata {meta_key}" if meta_key in entries else f"metadata tgmae_config.{section}"
            recorded = (json.loads(entries[meta_key]) if meta_key in entries
                        else json.loads(entries.get("tgmae_config") or "{}").get(section))
    except (ValueError, AttributeError, TypeError):
        return {}, "", ""
    settings = {k: v for k, v in recorded.items() if k in keys} if isinstance(recorded, dict) else {}
    return (settings, where, label) if settings else ({}, "", "")


def _stored(checkpoint: str | Path) -> tuple[dict[str, Any], str, bool]:
    """(what the weights store beside them, the file, whether it is an export's config.json): an
    export-hf folder's config.json object, our safetensors file's metadata (strings); ({}, "",
    False) for a file that holds neither or does not read."""
    from tgmae.weights.files import looks_like_safetensors, read_safetensors_metadata

    p = _resolved(checkpoint)
    try:
        if p.is_dir():
            entries = json.loads((p / "config.json").read_text())
            return (entries, str(p / "config.json"), True) if isinstance(entries, dict) else ({}, "", False)
        if p.is_file() and looks_like_safetensors(p):
            return dict(read_safetensors_metadata(p)), str(p), False
    except (OSError, ValueError, CheckpointError):
        pass
    return {}, "", False


class RecordedSettingsError(ConfigError):
    """A setting recorded with weights (`recorded_settings`) that its config section refuses; the
    message names the file and its entry's key, not the user's key of that name."""


def check_recorded(section: str, settings: dict[str, Any], where: str, overridable: bool = False) -> None:
    """RecordedSettingsError `where.KEY=VALUE: why` (where: "FILE: ENTRY") when config `section` refuses
    the recorded `settings` (the others at their defaults), KEY the one its error names first.
    overridable: the caller's override `section.KEY=...` replaces a recorded value (said as the way out)."""
    from tgmae.config import DataConfig, MaskingConfig, from_dict

    try:
        from_dict({"data": DataConfig, "masking": MaskingConfig}[section], settings, prefix=section)
    except ConfigError as e:
        said = str(e)
        k = next((k for k in settings if said.startswith(f"{section}.{k}=") and ": " in said), None)
        what = f"{where}.{k}={settings[k]!r}: {said.split(': ', 1)[1]}" if k else f"{where} {json.dumps(settings)}: {said}"
        way = f"; the override {section}.{k or 'KEY'}=VALUE replaces it" if overridable else ""
        raise RecordedSettingsError(f"{what} (recorded as the {section} its weights were trained with{way})") from None


def known_settings(checkpoint: str | Path, section: str = "data",
                   replaced: Optional[Collection[str]] = None) -> tuple[dict[str, Any], str]:
    """(the `section` settings the checkpoint's model was trained with, where they are read): its run
    folder's config.yaml, else what is recorded with its weights (`recorded_settings`); ({}, "")
    when neither says."""
    run = read_run(checkpoint)
    if run.config is not None:
        return section_settings(section, getattr(run.config, section)), str(run.run_dir / "config.yaml")
    return recorded_settings(checkpoint, section, replaced)


def read_run(checkpoint: str | Path) -> RunInfo:
    """RunInfo of the checkpoint's run folder (`run_of`; empty when it has none, with `note` saying
    why when the folder beside it holds another run's config.yaml). For a step checkpoint
    only the records up to its step count, and the run's result files (which belong to its
    final model) are left out."""
    run, why = run_of(checkpoint)
    if run is None:  # why: the folder's run is another one's (`foreign_to_run`)
        return RunInfo(note=why)
    info = RunInfo(run_dir=run)
    info.config, info.note = run_config(run)
    info.changes = _json_lines(run / "config_changes.jsonl")
    at = checkpoint_step(checkpoint)
    records = [r for r in _json_lines(run / "metrics.jsonl") if at is None or r.get("step", 0) <= at]
    steps = [int(r["step"]) for r in records if "step" in r]
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    info.steps = max(steps) if steps else None
    info.last_loss = float(losses[-1]) if losses else None
    if at is not None:
        info.steps = at
        info.changes = [c for c in info.changes if c.get("step", 0) < at]
        return info
    for name, label in RESULT_LABELS.items():
        if (run / name).is_file():
            data = json.loads((run / name).read_text())
            info.results.update({f"{label}: {k}": v for k, v in data.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return info


def _shown(path: str | Path) -> str:
    """A path as the card shows it: relative as given, an absolute one by its last parts only (a
    card travels with the model; the exporter's local folders mean nothing elsewhere)."""
    p = Path(path)
    return str(Path(*p.parts[-2:])) if p.is_absolute() else str(p)


def _run_rows(run: RunInfo, kind: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    cfg = run.config
    if cfg is None and run.note and run.run_dir is None:  # another run's folder (`run_of`): no local paths
        return [("run", "its weights record another run's id or other settings than the run folder they were in "
                        "(`run_of`): not that run's model; settings unknown but those recorded with them")]
    if cfg is None:
        return [("run", run.note or "no run folder beside the checkpoint: settings unknown")]
    d = cfg.data
    if kind != "classifier":
        rows.append(("masking", f"{cfg.masking.name}, ratio {cfg.masking.ratio}"))
        rows.append(("objective", cfg.contrastive.objective
                     + (f" (InfoNCE weight {cfg.contrastive.weight})" if cfg.contrastive.objective != "mae" else "")))
    else:
        rows.append(("finetuned from", f"`{_shown(cfg.model.pretrained)}`" if cfg.model.pretrained
                     else "random initialization"))
        pre = read_run(cfg.model.pretrained).config if cfg.model.pretrained and Path(cfg.model.pretrained).exists() else None
        if pre is not None:  # the pretraining run's settings, when its folder is still there
            rows.append(("pretraining", f"masking {pre.masking.name}, ratio {pre.masking.ratio}; objective "
                                        f"{pre.contrastive.objective}"))
    ann = d.train_annotations or "(none)"
    rows.append(("data", f"{d.format} annotations `{_shown(ann)}` under `{_shown(d.root or '.')}`"))
    rows.append(("clips", f"{d.num_frames} frames, stride {d.frame_stride} ({d.sampling}), {d.image_size} px"))
    if cfg.captions.file:
        rows.append(("captions", f"`{_shown(cfg.captions.file)}`"))
    steps = f"{run.steps} optimizer steps" if run.steps is not None else "unknown"
    rows.append(("training", f"{steps}; batch {cfg.train.batch_size} x accum {cfg.train.accum_steps}, "
                             f"{cfg.train.epochs} epoch(s) planned, precision {cfg.train.precision}"))
    rows.append(("run folder", f"`{_shown(run.run_dir)}`"))
    if run.changes:  # checkpoint.resume=ignore_config: the rows above are the last settings only
        said = "; ".join(f"at step {c.get('step')}: " + ", ".join(f"{k} {v[0]!r} -> {v[1]!r}"
                                                                 for k, v in c.get("changes", {}).items())
                         for c in run.changes)
        rows.append(("settings changed during the run",
                     f"{said} (the rows above are the last settings; see the run's config_changes.jsonl)"))
    return rows


def _title(kind: str, run: RunInfo) -> str:
    what = {"classifier": "VideoMAE video classifier", "encoder": "VideoMAE video encoder",
            "pretraining": "VideoMAE pretraining model (encoder + decoder)"}[kind]
    cfg = run.config
    if cfg is not None and kind != "classifier":
        what += f", {cfg.masking.name} masking, objective {cfg.contrastive.objective}"
    return what + " (tgmae)"


def _assumed_line(arch: VideoMAEArch, assumed: Sequence[str]) -> str:
    """The card's warning that the `assumed` fields' values are a guess (`render_card`)."""
    said = ", ".join(f"`{k}` = {getattr(arch, k)}" for k in assumed)
    return (f"**Assumed, not known:** {said}. The official VideoMAE checkpoint this model was converted from "
            "does not state them and its weights do not prove them: they are the released models' values "
            f"(config.json `{ASSUMED_HF_KEY}`). If they are not the model's, convert that checkpoint again with "
            f"`tgmae convert` and {', '.join(f'`{OFFICIAL_OPTIONS[k]}`' for k in assumed)}.")


def render_card(*, kind: str, hf_class: str, arch: VideoMAEArch, checkpoint: str, run: RunInfo,
                mean: tuple[float, ...], std: tuple[float, ...], frame_stride: int,
                class_names: list[str], check: str, version: str, assumed: Sequence[str] = ()) -> str:
    """Markdown model card: front matter, the run, results, architecture (`assumed`: the arch fields
    a conversion assumed, `official.ASSUMED_META`, said as such), how to load."""
    tag = {"classifier": "video-classification", "encoder": "feature-extraction", "pretraining": "video-mae-pretraining"}[kind]
    pipeline = "pipeline_tag: video-classification\n" if kind == "classifier" else ""
    lines = ["---", "library_name: transformers", f"{pipeline}tags:", "- videomae", "- tgmae", f"- {tag}", "---", "",
             f"# {_title(kind, run)}", "",
             f"{hf_class} written by `tgmae export-hf` (tgmae {version}) from `{_shown(checkpoint)}`. {check}", "",
             "## The run", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _run_rows(run, kind)]
    lines += ["", "## Results", ""]
    results = dict(run.results)
    if run.last_loss is not None:
        results.setdefault("last logged training loss", run.last_loss)
    if results:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()]
    else:
        lines.append("The run folder holds no results.")
    lines += ["", "## Architecture", "",
              f"ViT encoder {arch.embed_dim} wide, {arch.depth} blocks, {arch.num_heads} heads; patch "
              f"{arch.tubelet_size}x{arch.patch_size}x{arch.patch_size}; input {arch.num_frames} frames at "
              f"{arch.image_size}x{arch.image_size}, normalized with mean {list(mean)} and std {list(std)}."]
    if kind == "pretraining":
        lines.append(f"Decoder {arch.decoder_dim} wide, {arch.decoder_depth} blocks; target: "
                     + ("per-patch normalized pixels." if arch.norm_pix_loss else "raw pixels."))
    if assumed:
        lines += ["", _assumed_line(arch, assumed)]
    if class_names:
        lines.append(f"Classes ({len(class_names)}): " + ", ".join(class_names[:50])
                     + (" ..." if len(class_names) > 50 else "") + ".")
    lines += ["", "## How to load", "", "```python"]
    load = {"classifier": "VideoMAEForVideoClassification", "encoder": "VideoMAEModel",
            "pretraining": "VideoMAEForPreTraining"}[kind]
    lines += [f"from transformers import AutoImageProcessor, {load}", "",
              'processor = AutoImageProcessor.from_pretrained("THIS_FOLDER")',
              f'model = {load}.from_pretrained("THIS_FOLDER").eval()',
              f"# frames: a list of {arch.num_frames} RGB uint8 arrays [H, W, 3], {frame_stride} frame(s) apart",
              'inputs = processor(frames, return_tensors="pt")  # pixel_values [1, T, C, H, W]']
    if kind == "classifier":
        lines += ["label = model.config.id2label[model(**inputs).logits.argmax(-1).item()]", "```", "",
                  "or, decoding the file with PyAV (the pipeline reads the first frames, "
                  "`frame_sampling_rate` apart):", "", "```python", "from transformers import pipeline", "",
                  'classify = pipeline("video-classification", model="THIS_FOLDER")',
                  f'classify("video.mp4", frame_sampling_rate={frame_stride})']
    elif kind == "pretraining":
        lines += ["# bool_masked_pos [1, num_tokens] bool, True = masked (the same count in every sample)",
                  "out = model(**inputs, bool_masked_pos=bool_masked_pos)  # out.loss, out.logits"]
    else:
        lines += ["features = model(**inputs).last_hidden_state  # [1, num_tokens, hidden]"]
    lines += ["```", "", "Back to a tgmae checkpoint, bit for bit: `tgmae convert THIS_FOLDER out.safetensors`.", ""]
    return "\n".join(lines)
