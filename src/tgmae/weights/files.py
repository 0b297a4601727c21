"""The containers weights live in (safetensors, weights-only torch pickles, transformers
directories read without transformers) and the paths users give for them (`resolve_checkpoint`).
One `CheckpointError` for all of them, naming the file and the keys.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, Sequence

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
    """torch.load with weights_only=True (`load_weights_only`); an `argparse.Namespace` is read as
    `PickledArgs`."""
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
            return load_weights_only(path, mmap=magic.startswith(b"PK"))
    except CheckpointError:
        raise
    except Exception as e:  # pickle / zip errors
        raise CheckpointError(
            f"cannot read {path} as a torch checkpoint ({torch_error(e)}); expected a VideoMAE .pth, a tgmae "
            ".safetensors file or a Hugging Face model directory"
        ) from None


_REFUSED = "Weights only load failed"  # how torch.load(weights_only=True) begins a refusal of what it holds
_TORCH_DOCS = "\n\nCheck the documentation"  # where torch's refusal turns to its docs link
_GLOBALS_SHOWN = 3  # refused globals a message names


def load_weights_only(path: Path, mmap: bool = False) -> Any:
    """torch.load(weights_only=True) onto the CPU (`mmap`: tensors mapped, not read): the one
    torch.load of a file a user names (a .pth to convert or start from, a run's state.pt). Only
    tensors and plain containers are built. A pickle holding anything else (a class, or a function
    such as os.system that a full unpickle would call) is a CheckpointError in one line naming the
    file and those globals (`_refused_globals`); torch's own text, advising `weights_only=False`
    (which no tgmae command offers), is not passed on (re-trial 31A M2). Other errors (a cut or
    garbled file) propagate for the caller to phrase."""
    try:
        with warnings.catch_warnings():  # a bare pickle's protocol: torch's note, not the user's concern
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch re-raises the unpickler's refusal as pickle.UnpicklingError
        if not str(e).startswith(_REFUSED):
            raise
        refusal = str(e)
    names = _refused_globals(path, refusal)
    if names:
        more = f" and {len(names) - _GLOBALS_SHOWN} more" if len(names) > _GLOBALS_SHOWN else ""
        raise CheckpointError(f"{path}: holds pickled objects other than tensors and plain containers "
                              f"({', '.join(names[:_GLOBALS_SHOWN])}{more}); tgmae reads weights only and does "
                              "not load them")
    raise CheckpointError(f"cannot read {path} as a torch checkpoint (its pickle holds what a weights-only read "
                          f"refuses: {_refusal_reason(refusal)[:200]})")


def _refused_globals(path: Path, refusal: str) -> list[str]:
    """The distinct globals a weights-only read refuses in `path`'s pickle, in order, read from its
    opcodes (`_pickled_globals`); else the one torch's `refusal` text names (a pickle the scan
    cannot parse); else []."""
    names: list[str] = []
    try:
        for name in _foreign_globals(path):
            if name not in names:
                names.append(name)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # a damaged file: what was found so far
        pass
    return names or re.findall(r"GLOBAL (\S+)", refusal)[:1]


def torch_error(e: BaseException) -> str:
    """`Type: first sentence` of an error torch.load raised for a damaged file, one line of at most
    300 characters (torch's messages run on over lines and sentences: re-trial 31A M2 showed one cut
    mid-word)."""
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {re.split(r'(?<=[.!?]) ', line, maxsplit=1)[0][:300]}"


def _refusal_reason(text: str) -> str:
    """torch's reason in a weights-only refusal (e.g. `Unsupported operand 149`), its advice left out."""
    body = text.split(_TORCH_DOCS)[0].rsplit("WeightsUnpickler error:", 1)[-1]
    lines = [s.strip() for s in body.splitlines() if s.strip() and "weights_only" not in s]
    return (lines[-1] if lines else "").removeprefix(_REFUSED + ".").strip()


def _foreign_globals(path: Path) -> Iterator[str]:
    """The globals a torch file's pickle names that a weights-only read does not allow, in order."""
    try:
        from torch import _weights_only_unpickler as wo  # private: what torch.load allows

        allowed = {*wo._get_allowed_globals(), *wo._get_user_allowed_globals()}
        allows = allowed.__contains__
    except (ImportError, AttributeError):
        allows = lambda name: name.startswith(("torch.", "collections.OrderedDict"))  # noqa: E731
    return (g for g in _pickled_globals(path) if not allows(g))


def _pickled_globals(path: Path) -> Iterator[str]:
    """`module.name` of each global the pickles of a torch file name (a zip's `data.pkl`, or the
    pickles of a legacy file one after another), read with `pickletools.genops`: opcodes parsed,
    nothing imported or called. A STACK_GLOBAL's two names are the strings pushed (or fetched
    from the memo) just before it, as Python's pickler writes them."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            streams = [io.BytesIO(z.read(name))] if name else []
        for stream in streams:
            yield from _stream_globals(stream)
        return
    with open(path, "rb") as f:
        for _ in range(5):  # legacy torch.save: magic, protocol, sys info, the object, storage keys
            try:
                yield from _stream_globals(f)
            except (ValueError, EOFError, UnicodeDecodeError):  # the end, or raw storage bytes
                return


def _stream_globals(stream: IO[bytes]) -> Iterator[str]:
    """The globals of one pickle in `stream` (see `_pickled_globals`)."""
    import pickletools

    memo: dict[int, Any] = {}
    recent: list[Any] = [None, None]  # the last two values pushed (strings, else None)
    for op, arg, _ in pickletools.genops(stream):
        pushed: Any = arg if isinstance(arg, str) else None
        if op.name in ("GLOBAL", "INST"):
            yield arg.replace(" ", ".")
            pushed = None
        elif op.name == "STACK_GLOBAL":
            if all(isinstance(v, str) for v in recent):
                yield ".".join(recent)
        elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op.name == "MEMOIZE" else arg] = recent[-1]
            continue
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo.get(arg)
        elif op.name in ("PROTO", "FRAME"):
            continue
        recent = [recent[-1], pushed]


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
