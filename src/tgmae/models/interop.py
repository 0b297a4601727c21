"""Load and save pretraining models: our safetensors, official VideoMAE .pth, HF directories.

- Ours: one `.safetensors` file; metadata `format` = FORMAT and `arch` = VideoMAEArch JSON, so
  the model rebuilds from the file alone. Written atomically (temp file + rename).
- Official VideoMAE pretraining `.pth`: the state dict under `model` (or `module`), names as
  ours after stripping `module.` / `_orig_mod.`. Heads, frames and image size are not stored:
  the released models' values are assumed unless given.
- transformers `VideoMAEForPreTraining` directories (`save_pretrained`): config.json plus
  model.safetensors (sharded or not) or pytorch_model.bin. Read without importing transformers.

`tgmae convert SRC OUT.safetensors` (convert_main) turns either foreign layout into ours.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from tgmae.errors import UserError
from tgmae.models.arch import VideoMAEArch
from tgmae.models.layouts import hf_arch, hf_to_ours, official_arch, strip_wrappers
from tgmae.models.pretrainer import VideoMAEPretrainer

FORMAT = "tgmae.videomae-pretrain.v1"
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
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors, or objects weights_only refuses
        raise CheckpointError(
            f"cannot read {path} as a torch checkpoint ({type(e).__name__}: {e}); expected a "
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


def detect_format(path: str | os.PathLike) -> str:
    """'tgmae', 'hf' or 'official' for a checkpoint path (by its container, not its keys)."""
    p = Path(path)
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
    p = Path(path)
    kind = detect_format(p)
    extra_unexpected: list[str] = []
    if kind == "tgmae":
        state, meta = read_safetensors(p)
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


def save_pretraining_model(model: VideoMAEPretrainer, path: str | os.PathLike) -> Path:
    """Write weights + arch as one safetensors file, atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "arch": model.arch.to_json()})
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def convert_main(argv: Optional[Sequence[str]] = None) -> int:
    """`tgmae convert SRC OUT.safetensors`: official .pth / HF directory / ours -> ours."""
    parser = argparse.ArgumentParser(
        prog="tgmae convert",
        description="Convert an official VideoMAE pretraining .pth or a Hugging Face "
                    "VideoMAEForPreTraining directory into a tgmae .safetensors file.")
    parser.add_argument("src", help="checkpoint: .pth file, HF directory, or tgmae .safetensors")
    parser.add_argument("out", help="output .safetensors path")
    parser.add_argument("--num-frames", type=int, help="clip length (official .pth: default 16)")
    parser.add_argument("--image-size", type=int, help="input side (official .pth: default 224)")
    parser.add_argument("--num-heads", type=int, help="encoder heads (official .pth: released value)")
    parser.add_argument("--decoder-heads", type=int, help="decoder heads (official .pth: released value)")
    parser.add_argument("--no-norm-pix-loss", action="store_true",
                        help="the model was trained on raw pixels, not per-patch normalized ones")
    args = parser.parse_args(list(argv) if argv is not None else None)
    overrides: dict[str, Any] = {}
    for field in ("num_frames", "image_size", "num_heads", "decoder_heads"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    if args.no_norm_pix_loss:
        overrides["norm_pix_loss"] = False
    if not args.out.endswith(".safetensors"):
        parser.error(f"OUT must end in .safetensors, got {args.out!r}")
    try:
        model = load_pretraining_model(args.src, **overrides)
    except (CheckpointError, ValueError) as e:
        parser.exit(2, f"tgmae convert: {e}\n")
    save_pretraining_model(model, args.out)
    a = model.arch
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {detect_format(args.src)} -> tgmae, {n / 1e6:.1f}M parameters, "
          f"encoder {a.embed_dim}x{a.depth} ({a.num_heads} heads), decoder {a.decoder_dim}x"
          f"{a.decoder_depth} ({a.decoder_heads} heads), {a.num_frames} frames at {a.image_size}px")
    return 0


__all__ = [
    "CheckpointError", "FORMAT", "detect_format", "load_pretraining_model",
    "save_pretraining_model", "convert_main",
]
