"""The containers weights live in (safetensors, weights-only torch pickles, transformers
directories read without transformers) and the paths users give for them (`resolve_checkpoint`).
One `CheckpointError` for all of them, naming the file and the keys.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tgmae.atomic import atomic_path, remove_stale_temps
from tgmae.errors import UserError
from tgmae.locks import LATEST  # noqa: F401  (a training run's pointer file: its newest step folder's name)

TRAIN_FORMAT = "tgmae-train"  # model.safetensors of a training checkpoint (`step_N/`), config in `tgmae_config`
_LIST_LIMIT = 8  # key names an error message lists


class CheckpointError(ValueError, UserError):
    """Weights on disk cannot be read, do not fit the model, or do not match the run that resumes
    them; the message names the file and the keys."""


def checkpoint_not_found(path: str | os.PathLike) -> CheckpointError:
    """"checkpoint not found: PATH", saying so when PATH reads as a hub id (`org/name`): weights
    are read from local files and folders only (a hub model: download it, then pass its folder)."""
    from tgmae.hub import looks_like_path

    name = str(path)
    if looks_like_path(name) or not name or Path(name).suffix in (".safetensors", ".pth", ".pt", ".bin"):
        return CheckpointError(f"checkpoint not found: {name}")
    return CheckpointError(f"checkpoint not found: {name} (a hub id? weights are read from local files and folders "
                           "only: `huggingface-cli download ORG/NAME --local-dir DIR`, then pass DIR)")


def require_checkpoint(path: str | os.PathLike) -> Path:
    """`path` as a Path when anything is there, else `checkpoint_not_found`. Writers that compare a
    folder's earlier results with this run's settings call it first: a mistyped `model.pretrained`
    is "checkpoint not found", not "results of other settings" (re-trial 26B M3)."""
    p = Path(path)
    if not p.exists():
        raise checkpoint_not_found(p)
    return p


def require_pretrained(path: str, what: str) -> Path:
    """`require_checkpoint(path)` for a command that needs `model.pretrained`: ConfigError
    `model.pretrained must name WHAT` when it is empty."""
    from tgmae.config import ConfigError

    if not path:
        raise ConfigError(f"model.pretrained must name {what}")
    return require_checkpoint(path)


def key_names(keys: Sequence[str]) -> str:
    """Sorted key names for an error message, at most 8 and a count of the rest."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return ", ".join(keys[:_LIST_LIMIT]) + more


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str = "this model",
                extra_unexpected: Sequence[str] = ()) -> nn.Module:
    """`module.load_state_dict(state)` once every key and shape fits, tensors cast to the module's
    dtypes. Else CheckpointError `SOURCE does not fit WHAT: missing keys: [...]; unexpected keys:
    [...]` (`extra_unexpected`: names a layout conversion could not place) or `... shape mismatch`."""
    own = check_fits(module, state, source, what, extra_unexpected)
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return module


def check_fits(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str = "this model",
               extra_unexpected: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """`load_strict`'s checks alone (keys, then global shapes); returns `module.state_dict()`."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own] + list(extra_unexpected)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {what}: missing keys: [{key_names(missing)}]; "
                              f"unexpected keys: [{key_names(unexpected)}]")
    bad = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{source} does not fit {what}: shape mismatch: {key_names(bad)}")
    return own


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on CPU, string metadata) of one safetensors file; CheckpointError when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types for bad headers / data
        raise CheckpointError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of one safetensors file, its tensors left unread (its header only);
    CheckpointError when unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers / data
        raise CheckpointError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str]) -> Path:
    """Write a state dict + string metadata as one safetensors file, atomically. It is saved in a
    temp folder of its own (`atomic_path(own_folder=True)`: safetensors writes a temp of its own
    beside its target), which a killed write leaves for the next write here to remove. A write
    the disk refuses is an OutputError naming `path`."""
    from safetensors.torch import save_file

    p = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    remove_stale_temps(p.parent)  # of writes killed before their rename
    with atomic_path(p, own_folder=True) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata))
    return p


class PickledArgs:
    """What an `argparse.Namespace` in a pickle (the `args` entry of VideoMAE's training
    checkpoints) is read as: plain attributes, nothing called."""


def read_torch(path: Path) -> Any:
    """torch.load with weights_only=True; an `argparse.Namespace` is read as `PickledArgs`."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save: zip, or legacy pickle
        raise CheckpointError(
            f"{path}: not a checkpoint (neither a torch .pth, a tgmae .safetensors file nor a Hugging Face "
            "model directory)")
    try:
        with allow([(PickledArgs, "argparse.Namespace")]) if allow else contextlib.nullcontext():
            # zip format: tensors mapped, not copied, so reading a 4 GB ViT-g .pth costs the pickle,
            # not the bytes (a conversion reads it once and passes the object along)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=magic.startswith(b"PK"))
    except Exception as e:  # pickle / zip errors, or objects weights_only refuses
        raise CheckpointError(
            f"cannot read {path} as a torch checkpoint ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); expected a "
            "VideoMAE .pth, a tgmae .safetensors file or a Hugging Face model directory"
        ) from None


def unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A loaded .pth object -> its state dict (under `model` / `module` / `state_dict` or bare)."""
    if isinstance(obj, Mapping):
        for key in ("model", "module", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return dict(tensors)
    raise CheckpointError(f"{path}: no state dict found (looked under 'model', 'module', 'state_dict')")


def hf_directory_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a transformers `save_pretrained` directory, under HF names."""
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        return read_safetensors(path / "model.safetensors")[0]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(path / shard)[0])
        return state
    if (path / "pytorch_model.bin").is_file():
        return unwrap_state(read_torch(path / "pytorch_model.bin"), path)
    raise CheckpointError(f"{path}: HF directory without model.safetensors or pytorch_model.bin")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The file or folder to read for a checkpoint path as a user gives it: `latest` (or the
    `checkpoints/` folder holding it) -> the step folder it names; a step folder -> its
    model.safetensors; any other path as given. CheckpointError when `latest` names no folder."""
    p = Path(path)
    if p.is_dir() and not (p / "config.json").is_file() and (p / LATEST).is_file():
        p = p / LATEST
    if p.is_file() and p.name == LATEST and p.stat().st_size < 4096:
        name = p.read_text(errors="replace").strip()
        if not name or "/" in name or not (p.parent / name).is_dir():
            raise CheckpointError(f"{p} names {name!r}, which is not a checkpoint folder next to it")
        p = p.parent / name
    if p.is_dir() and (p / "model.safetensors").is_file() and (p / "state.pt").is_file():
        p = p / "model.safetensors"
    return p


RUN_WEIGHTS = ("classifier.safetensors", "model.safetensors")  # a run folder's final weights, in the order read


def resolve_weights(path: str | os.PathLike) -> Path:
    """The path to read for weights as a user gives them, one rule for every command that takes
    weights (finetune, probe, extract, convert, pretrain's model.pretrained): `resolve_checkpoint`'s
    path; for a tgmae run folder (a folder without a transformers config.json) its final weights
    (`RUN_WEIGHTS`: a finetune run's classifier, else model.safetensors), else (a run still
    training) the model.safetensors of the step its checkpoints/latest names. A folder holding none
    of these is returned as is (its reader names it). CheckpointError when `latest` names no folder."""
    p = resolve_checkpoint(path)
    if not p.is_dir() or (p / "config.json").is_file():
        return p
    for name in RUN_WEIGHTS:
        if (p / name).is_file():
            return p / name
    if (p / "checkpoints" / LATEST).is_file():
        step = resolve_checkpoint(p / "checkpoints" / LATEST)
        return step / "model.safetensors" if step.is_dir() else step
    return p

def refuse_unfinished_run(path: str | os.PathLike, verb: str) -> None:
    """CheckpointError for a tgmae run folder without its final weights (`RUN_WEIGHTS`: a run killed
    or still training), naming the step its checkpoints/latest names and that path, which `verb`s
    that step knowingly. Commands that write a portable model (convert, export-hf) refuse such a run,
    whose folder would read as its finished model; every other path passes."""
    p = Path(path)
    latest = p / "checkpoints" / LATEST
    if not p.is_dir() or (p / "config.json").is_file() or any((p / n).is_file() for n in RUN_WEIGHTS):
        return
    if latest.is_file():
        step = resolve_checkpoint(latest)
        folder = step if step.is_dir() else step.parent  # a step folder's model.safetensors -> the folder
        number = folder.name.rpartition("_")[2]
        at = f"step {int(number)}, {folder}" if number.isdigit() else str(folder)
        raise CheckpointError(f"{path}: an unfinished run (no {' or '.join(RUN_WEIGHTS)}; its newest checkpoint is "
                              f"{at}); to {verb} that step pass {latest}")


def looks_like_safetensors(p: Path) -> bool:
    """By the header, whatever the suffix: 8 bytes of length, then the JSON header's `{`."""
    with open(p, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def detect_format(path: str | os.PathLike) -> str:
    """'tgmae', 'hf' or 'official' for a checkpoint path (by its container, not its keys; training
    layout paths are followed first, `resolve_checkpoint`)."""
    p = resolve_checkpoint(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf"
        for name in ("classifier.safetensors", "model.safetensors"):  # a tgmae run folder: name its weights
            if (p / name).is_file():
                raise CheckpointError(f"{p} is a tgmae run folder, not a Hugging Face model: pass {p / name}")
        raise CheckpointError(f"{p}: a directory without config.json is not a Hugging Face model")
    if not p.is_file():
        raise checkpoint_not_found(p)
    return "tgmae" if p.suffix == ".safetensors" or looks_like_safetensors(p) else "official"
