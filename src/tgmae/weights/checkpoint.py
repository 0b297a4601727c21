"""Atomic training checkpoints under `<output_dir>/checkpoints/`:

    step_00000120/model.safetensors   model weights (metadata: resolved run config as JSON)
    step_00000120/state.pt            optimizer, grad scaler, position, RNG, config, extra (plain
                                      containers, loaded with `torch.load(weights_only=True)`)
    latest                            name of the newest complete checkpoint

A step folder is written under a temp name and renamed into place before `latest` moves: a kill
leaves the previous checkpoint usable. A step written again replaces its folder with a complete
copy there at every moment (`_move_into_place`); a copy a kill left only in a temp folder is put
back (`clean_temps`), and a `latest` naming an incomplete folder resumes the newest complete one.
The files are the same under every train.strategy (FSDP gathers full state dicts,
`train_states`, and scatters them back on resume).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tgmae.atomic import atomic_write_text, open_mode, remove_stale_temps, stale_temp, temp_path, write_failure
from tgmae.config import ANNOTATION_KEYS, LOCAL_PATH_KEYS, MODEL_PATH_KEYS, recorded_paths, same_path_setting
from tgmae.distributed import distributed_ready, is_fsdp, rank_world
from tgmae.weights.files import (LATEST, TRAIN_FORMAT, CheckpointError, check_fits, load_strict, load_weights_only,
                                 torch_error)
from tgmae.weights.model_card import STEP_FOLDER, run_id_note

log = logging.getLogger("tgmae")

# Keys that may differ between a checkpoint's stored config and the config that resumes it: they
# change how a run is logged, fed, placed or checkpointed, or how long it goes on (train.epochs /
# train.max_steps extend it), never what the steps already taken computed. A key ending in "."
# covers its whole section. Anything else that differs makes the resume a CheckpointError.
RESUMABLE_KEYS = (
    "log.", "checkpoint.", "train.epochs", "train.max_steps", "train.output_dir", "train.log_every", "train.eval_every",
    "train.device", "train.compile", "train.strategy", "data.num_workers", "data.decoder_threads", "data.max_load_retries",
    "train.grad_checkpoint",  # recomputes the blocks' activations: less memory, the same loss and gradients
    "eval.feature_cache", "eval.strict",  # strict: the same numbers, or a refusal
    "data.cache", "data.cache_dir",  # the decoded-clip cache gives the video path's samples bit for bit
)
IGNORE_CONFIG = "ignore_config"  # checkpoint.resume value: resume the latest checkpoint whatever differs


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"section.key": value} of a nested config dict (`config.yaml`'s sections)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(stored: dict, new: dict, defaults: Optional[dict] = None, unused: Sequence[str] = (),
                       copies: Optional[Mapping[str, str]] = None) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, new value) for every training-relevant key that differs.

    Keys in RESUMABLE_KEYS and `unused` (keys this kind of run never reads, or may change as
    train.epochs) are left out. A key the stored config lacks (written before the key existed)
    counts as its value in `defaults` (the nested dict of the default config). copies {key: the
    user's key it is copied from} (e.g. optim.lr from eval.attentive_lr): a copy is left out when
    its source differs too, so the change is named once, by the user's key. Path keys differ only
    when they name other files (`config.same_path_setting`: `A`, `./A` and /abs/A are one folder;
    re-trial 31A M4)."""
    old = {**flatten(defaults or {}), **flatten(stored)}
    cur = flatten(new)
    out = []
    for key in sorted(set(old) | set(cur)):
        if key in unused or any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
            continue
        a, b = old.get(key, "<absent>"), cur.get(key, "<absent>")
        if a != b and not _same_path(key, a, b, old.get("data.root", ""), cur.get("data.root", "")):
            out.append((key, a, b))
    changed = {key for key, _, _ in out}
    return [d for d in out if (copies or {}).get(d[0]) not in changed]


def _same_path(key: str, a: Any, b: Any, root_a: Any, root_b: Any) -> bool:
    """Whether a path key's stored `a` and new `b` name one file (`same_path_setting`); False for
    other keys. A relative stored value (a run recorded before paths were resolved) is read from
    the current folder, as the run's videos are (their check, `video_changes`, tells other files)."""
    if key not in LOCAL_PATH_KEYS + MODEL_PATH_KEYS or "<absent>" in (a, b):
        return False
    if key not in ANNOTATION_KEYS:
        root_a = root_b = ""
    return same_path_setting(key, a, b, str(root_a or ""), str(root_b or ""))


def another_run_hint(output_dir: str) -> str:
    return (f"train.output_dir={output_dir!r} may hold a run of another kind (pretrain, probe, finetune) "
            "or model: give this command its own train.output_dir")


RUN_KINDS = {"probe": "linear / k-NN probe", "attentive_probe": "attentive probe"}  # task name -> in messages


def check_run_kind(source: Path, stored: Optional[str], task: str, output_dir: str, fits: bool = True) -> None:
    """Refuse to resume a checkpoint written by another kind of run (`tgmae probe` into a
    `tgmae pretrain` folder): CheckpointError naming both kinds and the way out (a new
    train.output_dir). `stored` is the checkpoint's task name (None: written before it was kept;
    then weights that do not fit the task's model (`fits`) tell)."""
    a = lambda kind: "an" if kind[:1] in "aeiou" else "a"  # noqa: E731  # "an attentive probe run"
    # both kinds are `tgmae probe`: named by what they fit, not "an attentive_probe run, not a probe run"
    stored, task = (RUN_KINDS.get(k, k) if k else k for k in (stored, task))
    # a checkpoint.resume path outside the run folder is the user's choice of checkpoint, not the folder's content
    own = not output_dir or Path(source).resolve().is_relative_to(Path(output_dir).resolve())
    where, fix = ((f"train.output_dir={output_dir!r} holds", f"give this {task} run its own train.output_dir") if own else
                  ("checkpoint.resume names", f"name {a(task)} {task} run's checkpoint in checkpoint.resume"))
    if stored and stored != task:
        raise CheckpointError(f"{where} {a(stored)} {stored} run ({source}), not {a(task)} {task} run: {fix}")
    if not stored and not fits:
        raise CheckpointError(f"{where} a run whose weights ({source}) do not fit {a(task)} {task} model "
                              f"(another kind of run, or another model): {fix}")


def check_resume_config(source: Path, stored: dict, new: dict, defaults: Optional[dict] = None,
                        output_dir: str = "", unused: Sequence[str] = (),
                        copies: Optional[Mapping[str, str]] = None) -> list[tuple[str, Any, Any]]:
    """Refuse to resume `source` under settings it was not trained with.

    Raises CheckpointError listing each differing key (`key: old -> new`, one per line) and the
    ways out: a new train.output_dir, or checkpoint.resume=ignore_config. Returns the differences
    (empty when the configs agree on every training-relevant key; `unused`, `copies` as
    `config_differences`)."""
    diffs = config_differences(stored, new, defaults, unused, copies)
    if diffs and new.get("checkpoint", {}).get("resume") != IGNORE_CONFIG:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in diffs)
        raise CheckpointError(
            f"cannot resume {source}: it was trained with other settings ({len(diffs)} key"
            f"{'s differ' if len(diffs) > 1 else ' differs'}, checkpoint -> this command):\n{lines}\n"
            f"Start a new run with another train.output_dir (now {output_dir!r}), or continue this one "
            f"under the new settings with checkpoint.resume={IGNORE_CONFIG}."
        )
    return diffs


@dataclass
class TrainPosition:
    """Where training stands: optimizer steps done, epoch, micro-batches consumed in the epoch."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()  # a list, not a tuple: weights_only loads it
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": (version, list(internal), gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def rank_rng_states() -> Optional[list[dict[str, Any]]]:
    """Every process's `rng_state()` in rank order on the main rank, None on the others (a
    collective under torch.distributed); [this process's] in one process. Each rank draws
    drop-path, mixup and dual masks from its own stream (seeded train.seed + rank)."""
    state = rng_state()
    if not distributed_ready():
        return [state]
    import torch.distributed as tdist

    rank, world = rank_world()
    states: Optional[list] = [None] * world if rank == 0 else None
    tdist.gather_object(state, states, dst=0)
    return states


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable; a file system that cannot fsync a folder is left as is."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsdp_options(**kwargs: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The optimizer's parameters as names, in the order `optimizer.state_dict()` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _rekey(state: dict, old_to_new: dict) -> dict:
    """An optimizer state dict with its parameter keys (state keys, groups' `params`) mapped."""
    return {"state": {old_to_new[k]: v for k, v in state["state"].items()},
            "param_groups": [{**g, "params": [old_to_new[k] for k in g["params"]]} for g in state["param_groups"]]}


def train_states(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) as a checkpoint stores them: full tensors, the
    optimizer's in torch's layout (state by parameter index). Under FSDP a collective that every
    rank calls (torch.distributed.checkpoint.state_dict, full_state_dict + cpu_offload): the main
    rank gets the full dicts, the others empty ones. Otherwise the modules' own state dicts."""
    if not is_fsdp(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_state = get_model_state_dict(model, options=_fsdp_options(cpu_offload=True))
    optim_state = get_optimizer_state_dict(model, optimizer, options=_fsdp_options(cpu_offload=True))
    if not model_state:  # not the main rank
        return {}, {}
    order = _param_names(model, optimizer)
    return model_state, _rekey(optim_state, {n: i for i, n in enumerate(order)})


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """A checkpoint's optimizer state (torch's layout) into `optimizer`; under FSDP each rank keeps
    its shard of the full tensors (every rank passes the whole state)."""
    if not is_fsdp(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    order = _param_names(model, optimizer)
    set_optimizer_state_dict(model, optimizer, _rekey(state, dict(enumerate(order))), options=_fsdp_options())
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        # the hyperparameters as saved (torch.distributed.checkpoint turns AdamW's betas tuple into
        # a list), so the next checkpoint's groups equal this one's under either strategy
        group.update({k: v for k, v in saved.items() if k != "params"})


def full_model(model: torch.nn.Module, plain: torch.nn.Module) -> torch.nn.Module:
    """`plain` (a fresh unsharded copy of `model`'s architecture) with `model`'s full weights:
    under FSDP a collective that every rank calls (each gets the whole model); else `model`."""
    if not is_fsdp(model):
        return model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    plain.load_state_dict(get_model_state_dict(model, options=_fsdp_options()))
    return plain


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler],
    position: TrainPosition,
    config: dict,
    keep_last: int = 2,
    extra: Optional[dict] = None,
    states: Optional[tuple[dict, dict]] = None,
    rngs: Optional[list[dict]] = None,
    run_id: Optional[str] = None,
) -> Path:
    """Write `directory/step_<8-digit step>` atomically, point `latest` at it, prune old ones.
    `states`: the (model, optimizer) state dicts `train_states` gathered (a sharded model's);
    default the modules' own. `rngs`: each rank's RNG state in rank order (`rank_rng_states`);
    default this process's. `run_id`: the run's (`model_card.own_run_id`), recorded in its
    model.safetensors (re-trial 33B S1). The checkpoint is built in a temp folder that a failed write
    removes; temp folders of killed writers are removed first (`clean_temps`)."""
    model_state, optim_state = states if states is not None else (model.state_dict(), optimizer.state_dict())
    directory.mkdir(parents=True, exist_ok=True)
    clean_temps(directory)
    name = f"step_{position.step:08d}"
    tmp = temp_path(directory / name)
    tmp.mkdir()
    try:
        # its path keys resolved: the files it read, wherever it is read from (re-trial 31A S4)
        _write_checkpoint_folder(tmp, model_state, optim_state, scaler, position, recorded_paths(config), extra,
                                 rngs or [rng_state()], run_id)
    except BaseException as e:
        # a full disk: torch / safetensors raise RuntimeErrors naming no file, told by the free
        # space, so decided while the half checkpoint still fills the disk (before its removal)
        failure = write_failure(e, directory / name) if isinstance(e, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not stay full of a half checkpoint
        if failure is None:
            raise
        raise failure from e
    open_mode(tmp)  # safetensors creates 0600: the mode open() gives, as every file of a run
    final = directory / name
    _move_into_place(tmp, final)
    _fsync_dir(directory)
    atomic_write_text(directory / LATEST, name + "\n", fsync=True)
    _fsync_dir(directory)
    _prune(directory, keep_last, keep=name)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the checkpoint folder `tmp` (written in full) to `final`. A step written again (a resume
    ending the epoch its checkpoint had finished) has a complete copy at every moment: the old folder
    is renamed aside, the new one in, then the old one removed. A stop (KeyboardInterrupt) before the
    new one is in puts the old one back; a kill leaves both copies as temps for `clean_temps`."""
    if not final.exists():
        os.replace(tmp, final)
        return
    aside = temp_path(final)
    try:
        os.replace(final, aside)
        os.replace(tmp, final)
    except BaseException:
        if aside.exists() and not final.exists():
            os.replace(aside, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def clean_temps(directory: Path) -> None:
    """Remove the temps of ended writers from a run's checkpoints/ folder (`remove_stale_temps`),
    after putting back the step `latest` names when a kill while it was written again left it gone
    or incomplete and such a temp holds a complete copy of it (the old one renamed aside or the new
    one: both were written in full before the step's folder was touched). The newest copy goes in."""
    pointer = directory / LATEST
    name = pointer.read_text().strip() if pointer.is_file() and not pointer.is_symlink() else ""
    final = directory / name
    if STEP_FOLDER.fullmatch(name) and not _complete(final):
        copies = [p for p in directory.glob(f".{name}.*") if stale_temp(p.name) and _readable(p)]
        if copies:
            copy = max(copies, key=lambda p: (p / "state.pt").stat().st_mtime_ns)
            shutil.rmtree(final, ignore_errors=True)  # what the kill left of it
            os.replace(copy, final)
            _fsync_dir(directory)
            log.warning("%s: put back from %s, the complete copy a killed checkpoint write left", final, copy.name)
    remove_stale_temps(directory)


def _write_checkpoint_folder(tmp: Path, model_state: dict[str, torch.Tensor], optim_state: dict,
                             scaler: Optional[torch.amp.GradScaler], position: TrainPosition, config: dict,
                             extra: Optional[dict], rngs: list[dict], run_id: Optional[str] = None) -> None:
    """model.safetensors and state.pt of a checkpoint into `tmp`, fsynced. state.pt keeps rank 0's
    RNG state as "rng" (all a checkpoint held before) and every rank's as "rank_rngs"."""
    # detached contiguous copies: safetensors refuses views and shared storage
    save_file({k: v.detach().contiguous().clone() for k, v in model_state.items()}, str(tmp / "model.safetensors"),
              metadata={"tgmae_config": json.dumps(config), "format": TRAIN_FORMAT, **run_id_note(run_id)})
    state = {
        "optimizer": optim_state,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "position": {"step": position.step, "epoch": position.epoch,
                     "batches_in_epoch": position.batches_in_epoch},
        "rng": rngs[0],
        "rank_rngs": rngs,
        "config_json": json.dumps(config),
        "extra_json": json.dumps(extra or {}),
    }
    torch.save(state, tmp / "state.pt")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _prune(directory: Path, keep_last: int, keep: str) -> None:
    done = sorted(p for p in directory.glob("step_*") if p.is_dir())
    for old in done[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)




def _complete(folder: Path) -> bool:
    """Whether a step folder holds both files of a checkpoint (a folder renamed into place does)."""
    return not missing_files(folder)


def _readable(folder: Path) -> bool:
    """Whether a folder holds a checkpoint's two files and its state.pt reads (not cut short by a kill)."""
    try:
        return _complete(folder) and isinstance(_read_state(folder / "state.pt", mmap=True), dict)
    except CheckpointError:
        return False


def missing_files(folder: Path) -> list[str]:
    """The checkpoint files a step folder lacks (empty for a complete one)."""
    return [f for f in ("model.safetensors", "state.pt") if not (folder / f).is_file()]


def step_folders(directory: Path) -> list[Path]:
    """The step folders (`step_<8 digits>`) in a run's checkpoints/ folder, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if STEP_FOLDER.fullmatch(p.name) and p.is_dir())


def newest_complete(directory: Path) -> Optional[Path]:
    """The newest step folder holding both checkpoint files (`_complete`), else None."""
    return next((p for p in reversed(step_folders(directory)) if _complete(p)), None)


def find_latest(directory: Path) -> Optional[Path]:
    """The checkpoint `latest` names; without a `latest` file, or when it names a folder lacking a file
    (a kill while the step was written again, before `clean_temps` put a copy back), the newest
    complete step folder (`newest_complete`: a kill between a step folder's rename and the write of
    `latest` leaves one); None when the run has none. A `latest` symlink is followed to a step
    folder of `directory`.
    CheckpointError naming `latest` when it names a folder that is not there (or, a symlink, one
    outside `directory`) or is not a file."""
    pointer = directory / LATEST
    if pointer.is_symlink():
        target = Path(os.path.realpath(pointer))
        if target.parent == Path(os.path.realpath(directory)) and target.is_dir():
            return directory / target.name
        raise CheckpointError(f"{pointer} is a symlink to {os.readlink(pointer)}, not a step folder of {directory}: "
                              "write a step folder's name into it, or remove it to resume the newest complete one")
    if os.path.lexists(pointer) and not pointer.is_file():
        raise CheckpointError(f"{pointer} is not a file (a run writes its newest step folder's name there): "
                              "remove it to resume the newest complete step folder")
    if not pointer.is_file():
        return newest_complete(directory)
    path = directory / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path if _complete(path) else newest_complete(directory) or path


@dataclass
class LoadedCheckpoint:
    path: Path
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict
    scaler_state: dict
    position: TrainPosition
    rngs: list[dict]  # each rank's RNG state in rank order; rank 0's only in a checkpoint written before
    config: dict
    extra: dict


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint directory; any damage is a CheckpointError naming the file."""
    path = Path(path)
    weights, state_file = path / "model.safetensors", path / "state.pt"
    for f in (weights, state_file):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {f.name} is missing")
    try:
        model_state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights {weights} are corrupted or unreadable: {e}") from None
    state = _read_state(state_file)
    try:
        pos = state["position"]
        return LoadedCheckpoint(
            path=path,
            model_state=model_state,
            optimizer_state=state["optimizer"],
            scaler_state=state["scaler"],
            position=TrainPosition(int(pos["step"]), int(pos["epoch"]), int(pos["batches_in_epoch"])),
            rngs=list(state.get("rank_rngs") or [state["rng"]]),
            config=json.loads(state["config_json"]),
            extra=json.loads(state.get("extra_json", "{}")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint state {state_file} lacks a field: {e}") from None


def _read_state(state_file: Path, mmap: bool = False) -> dict:
    """state.pt's record (`mmap`: its tensors mapped, not read); damage, or pickled objects other than
    tensors and plain containers (`files.load_weights_only`), is a CheckpointError naming it."""
    try:
        return load_weights_only(state_file, mmap=mmap)
    except CheckpointError:
        raise
    except Exception as e:  # torch raises several types for truncated/garbled pickles
        raise CheckpointError(f"checkpoint state {state_file} is corrupted or unreadable ({torch_error(e)})") from None


def read_extra(path: Path) -> dict:
    """A checkpoint's `extra` record (what `save_checkpoint(extra=)` kept) without reading its weights
    or optimizer state: for choices made before the model is built (the run's precision). A missing
    or damaged state.pt is a CheckpointError naming it, as `load_checkpoint`'s."""
    state_file = Path(path) / "state.pt"
    if not state_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: state.pt is missing")
    state = _read_state(state_file, mmap=True)  # its CheckpointError (a ValueError) as it says it
    try:
        return dict(json.loads(state.get("extra_json", "{}")))
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint state {state_file} lacks a field: {e}") from None


def load_model_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A run checkpoint's weights into the run's model (`files.load_strict`: an error names the keys);
    under FSDP each rank keeps its shard of the full tensors (every rank passes the whole state)."""
    if not is_fsdp(model):
        load_strict(model, state, source)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    own = check_fits(model, state, source)
    set_model_state_dict(model, {k: v.to(own[k].dtype) for k, v in state.items()}, options=_fsdp_options(strict=True))
