"""Load and save pretraining models: our safetensors, official VideoMAE .pth, HF directories.

- Ours: one `.safetensors` file; metadata `format` = FORMAT and `arch` = VideoMAEArch JSON, so
  the model rebuilds from the file alone. Written atomically (temp file + rename).
- Official VideoMAE pretraining `.pth`: the state dict under `model` (or `module`), names as
  ours after stripping `module.` / `_orig_mod.`. Heads, frames and image size are not stored:
  the released models' values are assumed unless given.
- transformers `VideoMAEForPreTraining` directories (`save_pretrained`): config.json plus
  model.safetensors (sharded or not) or pytorch_model.bin. Read without importing transformers.

- Ours, encoder only: `.safetensors` with `format` = ENCODER_FORMAT and `arch` (what `tgmae
  convert` makes of a transformers `VideoMAEModel` directory); `save_encoder` writes it.

`tgmae convert` (tgmae.evaluate.convert) turns every foreign layout into ours.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tgmae.atomic import atomic_path
from tgmae.errors import UserError
from tgmae.models.arch import VideoMAEArch
from tgmae.models.layouts import hf_arch, hf_to_ours, official_arch, strip_wrappers
from tgmae.models.pretrainer import VideoMAEPretrainer

FORMAT = "tgmae.videomae-pretrain.v1"
ENCODER_FORMAT = "tgmae.video-encoder.v1"
_LIST_LIMIT = 8


class CheckpointError(ValueError, UserError):
    """A checkpoint cannot be read or does not fit the model; the message says which keys."""


def _names(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return ", ".join(keys[:_LIST_LIMIT]) + more


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types for bad headers / data
        raise CheckpointError(f"cannot read {path} as safetensors ({type(e).__name__}: {e})") from None


def _read_torch(path: Path) -> Any:
    """torch.load with weights_only=True; argparse.Namespace (the `args` entry of VideoMAE's
    training checkpoints) is allowed as plain data."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save: zip, or legacy pickle
        raise CheckpointError(
            f"{path}: not a checkpoint (neither a torch .pth, a tgmae .safetensors file nor a Hugging Face "
            "model directory)")
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors, or objects weights_only refuses
        raise CheckpointError(
            f"cannot read {path} as a torch checkpoint ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); expected a "
            "VideoMAE .pth, a tgmae .safetensors file or a Hugging Face model directory"
        ) from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A loaded .pth object -> its state dict (under `model` / `module` / `state_dict` or bare)."""
    if isinstance(obj, Mapping):
        for key in ("model", "module", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap(obj[key], path)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return dict(tensors)
    raise CheckpointError(f"{path}: no state dict found (looked under 'model', 'module', 'state_dict')")


def _load_into(model: VideoMAEPretrainer, state: Mapping[str, torch.Tensor], source: str,
               extra_unexpected: Sequence[str] = ()) -> VideoMAEPretrainer:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own] + list(extra_unexpected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: layout does not match the VideoMAE pretraining model. "
            f"missing keys: [{_names(missing)}]; unexpected keys: [{_names(unexpected)}]"
        )
    bad = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch: {_names(bad)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def _hf_directory_state(path: Path) -> dict[str, torch.Tensor]:
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
        return _unwrap(_read_torch(path / "pytorch_model.bin"), path)
    raise CheckpointError(f"{path}: HF directory without model.safetensors or pytorch_model.bin")


LATEST = "latest"  # a training run's pointer file: the name of its newest step folder (tgmae.train.checkpoint)
TRAIN_FORMAT = "tgmae-train"  # model.safetensors of a training checkpoint (`step_N/`), config in `tgmae_config`


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The file or folder to read for a checkpoint path as a user gives it. Follows the training
    layout (`runs/X/checkpoints/`): the `latest` pointer file (or the `checkpoints/` folder that
    holds one) -> the step folder it names; a step folder (`step_N/`, model.safetensors + state.pt)
    -> its model.safetensors. Any other path is returned as given. Raises CheckpointError when the
    pointer names a step folder that does not exist. Every loader of this package goes through here."""
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


def train_checkpoint_arch(meta: Mapping[str, str], source: Any) -> VideoMAEArch:
    """The pretraining architecture of a training checkpoint's weights, from the run config it
    stores (`tgmae_config`): what `tgmae pretrain` builds from that config."""
    from tgmae.config import ConfigError, RunConfig, from_dict
    from tgmae.models.arch import arch_from_config

    try:
        cfg = from_dict(RunConfig, json.loads(meta["tgmae_config"]))
        d = cfg.data
        return arch_from_config(cfg.model, d.num_frames, d.image_size, tuple(d.mean), tuple(d.std))
    except (ConfigError, ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: the run configuration stored with the weights is unusable ({e})") from None


def detect_format(path: str | os.PathLike) -> str:
    """'tgmae', 'hf' or 'official' for a checkpoint path (by its container, not its keys; training
    layout paths are followed first, `resolve_checkpoint`)."""
    p = resolve_checkpoint(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return "hf"
        raise CheckpointError(f"{p}: a directory without config.json is not a Hugging Face model")
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    with open(p, "rb") as f:
        head = f.read(16)
    if p.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        return "tgmae"
    return "official"


def load_pretraining_model(path: str | os.PathLike, **overrides: Any) -> VideoMAEPretrainer:
    """Rebuild a VideoMAEPretrainer from ours (.safetensors), an official .pth or an HF directory.

    overrides: VideoMAEArch fields replacing the stored / inferred ones; for an official .pth
    also the values it does not store (num_frames, image_size, num_heads, decoder_heads,
    norm_pix_loss). Position embeddings are fixed sin-cos, so num_frames / image_size may
    change freely. Returns the model in eval mode on CPU.
    """
    p = resolve_checkpoint(path)
    kind = detect_format(p)
    extra_unexpected: list[str] = []
    if kind == "tgmae":
        state, meta = read_safetensors(p)
        if "arch" not in meta and "tgmae_config" in meta:  # a training checkpoint (step folder)
            prefix = "mae." if "mae.encoder_to_decoder.weight" in state else ""  # a video-text run
            if f"{prefix}encoder_to_decoder.weight" not in state:
                raise CheckpointError(f"{p}: a training checkpoint without a decoder (a finetune or probe run), "
                                      "not a pretraining model; export its encoder (no --pretraining) instead")
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            meta = {**meta, "arch": train_checkpoint_arch(meta, p).to_json()}
        if "arch" not in meta:
            raise CheckpointError(
                f"{p}: safetensors file without tgmae 'arch' metadata (format={meta.get('format')!r}); "
                "for a Hugging Face model pass its directory (with config.json); convert other "
                "weights with `tgmae convert`"
            )
        arch = VideoMAEArch.from_json(meta["arch"])
    elif kind == "hf":
        arch = hf_arch(json.loads((p / "config.json").read_text()))
        state, extra_unexpected = hf_to_ours(_hf_directory_state(p))
    else:
        state = strip_wrappers(_unwrap(_read_torch(p), p))
        if "encoder.patch_embed.proj.weight" not in state or "encoder_to_decoder.weight" not in state:
            raise CheckpointError(
                f"{p}: not an official VideoMAE pretraining checkpoint. missing keys: "
                f"[{_names([k for k in ('encoder.patch_embed.proj.weight', 'encoder_to_decoder.weight') if k not in state])}]; "
                f"found keys: [{_names(list(state))}]"
            )
        geometry = {k: overrides.pop(k) for k in ("num_frames", "image_size", "num_heads",
                                                  "decoder_heads", "norm_pix_loss") if k in overrides}
        arch = official_arch(state, **geometry)
    if overrides:
        arch = dataclasses.replace(arch, **overrides)
    model = VideoMAEPretrainer(arch)
    return _load_into(model, state, f"{p} ({kind} layout)", extra_unexpected).eval()


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Mapping[str, str]) -> Path:
    """Write a state dict + string metadata as one safetensors file, atomically (temp, rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata))
    return p


def save_pretraining_model(model: VideoMAEPretrainer, path: str | os.PathLike) -> Path:
    """Write weights + arch as one safetensors file, atomically (temp file, then rename)."""
    return write_safetensors(model.state_dict(), path, {"format": FORMAT, "arch": model.arch.to_json()})


def save_encoder(encoder: nn.Module, path: str | os.PathLike) -> Path:
    """Write a `VideoViTEncoder` (weights under its own names + arch) as ENCODER_FORMAT."""
    return write_safetensors(encoder.state_dict(), path, {"format": ENCODER_FORMAT, "arch": encoder.arch.to_json()})


def holds_decoder(path: str | os.PathLike) -> bool:
    """Whether a checkpoint is a whole pretraining model (encoder + decoder), by its container:
    our FORMAT, an HF `VideoMAEForPreTraining` directory, an official pretraining `.pth`."""
    p = resolve_checkpoint(path)
    kind = detect_format(p)
    if kind == "tgmae":
        state, meta = read_safetensors(p)
        if meta.get("format") == TRAIN_FORMAT:  # a pretraining run's step folder
            return any(k.endswith("encoder_to_decoder.weight") for k in state)
        return meta.get("format") == FORMAT
    if kind == "hf":
        archs = json.loads((p / "config.json").read_text()).get("architectures") or []
        if archs:
            return "VideoMAEForPreTraining" in archs
        return any(k.startswith("decoder.") for k in _hf_directory_state(p))
    return "encoder_to_decoder.weight" in strip_wrappers(_unwrap(_read_torch(p), p))


__all__ = [
    "CheckpointError", "FORMAT", "ENCODER_FORMAT", "TRAIN_FORMAT", "detect_format", "load_pretraining_model",
    "resolve_checkpoint", "train_checkpoint_arch",
    "save_pretraining_model", "save_encoder", "write_safetensors", "holds_decoder",
]
