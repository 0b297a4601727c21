"""Load and save pretraining models (encoder + decoder).

- Ours: one `.safetensors`, metadata `format` = FORMAT and `arch` = VideoMAEArch JSON, so the
  model rebuilds from the file alone (ENCODER_FORMAT: an encoder alone, `save_encoder`).
- Official VideoMAE / VideoMAEv2 pretraining `.pth`: heads are not stored (the released models'
  values are assumed unless given); frames, image size and target are its training `args`' when it
  stores them, else the released models' (16, 224, normalized pixels) unless given
  (`official.official_settings`; a conversion records the assumed ones, `save_*(assumed=...)`, and
  `load_pretraining` returns those a file records).
- transformers `VideoMAEForPreTraining` directories, read without importing transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from torch import nn

from tgmae.models.arch import VideoMAEArch
from tgmae.models.pretrainer import VideoMAEPretrainer
from tgmae.weights.files import (
    TRAIN_FORMAT,
    CheckpointError,
    detect_format,
    hf_directory_state,
    key_names,
    load_strict,
    read_safetensors,
    read_torch,
    resolve_checkpoint,
    unwrap_state,
    write_safetensors,
)
from tgmae.weights.layouts import hf_arch, hf_to_ours, official_arch
from tgmae.weights.model_card import recorded_note, run_id_note
from tgmae.weights.official import (
    assumed_note,
    hf_assumed_meta,
    official_settings,
    official_state,
    position_tables,
    read_official,
    warn_assumed,
)

FORMAT = "tgmae.videomae-pretrain.v1"
ENCODER_FORMAT = "tgmae.video-encoder.v1"


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


class PretrainingWeights(NamedTuple):
    """`load_pretraining`'s result: the model and the VideoMAEArch fields of it that are assumed, not
    known (an official .pth's unstated ones, or the record of a conversion: `official.ASSUMED_META`)."""

    model: VideoMAEPretrainer
    assumed: list[str]


def load_pretraining_model(path: str | os.PathLike, **overrides: Any) -> VideoMAEPretrainer:
    """Rebuild a VideoMAEPretrainer from ours (.safetensors), an official .pth or an HF directory.

    overrides: VideoMAEArch fields replacing the stored / inferred ones; for an official .pth
    also the values it does not store (num_frames, image_size, num_heads, decoder_heads,
    norm_pix_loss). Position embeddings are fixed sin-cos, so num_frames / image_size may
    change freely. Returns the model in eval mode on CPU (`load_pretraining`: and what is assumed).
    """
    return load_pretraining(path, **overrides).model


def load_pretraining(path: str | os.PathLike, **overrides: Any) -> PretrainingWeights:
    """`load_pretraining_model` and the fields assumed (`PretrainingWeights`): an official .pth's
    (`official_settings`), or those our file or an export-hf folder records as assumed (said in one
    warning, `official.warn_assumed`), less those `overrides` now state."""
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
        assumed = warn_assumed(p, meta)
    elif kind == "hf":
        config = json.loads((p / "config.json").read_text())
        arch, assumed = hf_arch(config), warn_assumed(p, hf_assumed_meta(config))
        state, extra_unexpected = hf_to_ours(hf_directory_state(p))
    else:
        state, args = read_official(p)
        return PretrainingWeights(official_pretraining_model(state, args, p, **overrides),
                                  official_settings(state, args, overrides, p)[1])
    if overrides:
        arch = dataclasses.replace(arch, **overrides)
    model = load_strict(VideoMAEPretrainer(arch), state, f"{p} ({kind} layout)", "the VideoMAE pretraining model",
                        extra_unexpected).eval()
    return PretrainingWeights(model, [k for k in assumed if overrides.get(k) is None])


def official_pretraining_model(state: Mapping[str, Any], args: Mapping[str, Any], source: Any,
                               **overrides: Any) -> VideoMAEPretrainer:
    """`load_pretraining_model` of an official .pth already read (`read_official`'s state and args:
    convert reads a file once). Frames, image size and target: the given values, else its args',
    else the released models' (`official_settings`, which refuses a geometry the weights
    contradict); heads: given, else the released models'. CheckpointError naming the missing keys
    of a state that is no pretraining model."""
    missing = [k for k in ("encoder.patch_embed.proj.weight", "encoder_to_decoder.weight") if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not an official VideoMAE pretraining checkpoint. missing keys: "
                              f"[{key_names(missing)}]; found keys: [{key_names(list(state))}]")
    given = {k: overrides.pop(k) for k in ("num_frames", "image_size", "num_heads", "decoder_heads", "norm_pix_loss")
             if k in overrides}
    settings, _ = official_settings(state, args, given, source)
    arch = official_arch(state, **settings, num_heads=given.get("num_heads"), decoder_heads=given.get("decoder_heads"))
    if overrides:
        arch = dataclasses.replace(arch, **overrides)
    tables = position_tables(state)  # fixed sin-cos: ours is rebuilt, not loaded
    weights = {k: v for k, v in state.items() if k not in tables}
    return load_strict(VideoMAEPretrainer(arch), weights, f"{source} (official layout)",
                       "the VideoMAE pretraining model").eval()


def save_pretraining_model(model: VideoMAEPretrainer, path: str | os.PathLike, assumed: Sequence[str] = (),
                           data: Optional[dict[str, Any]] = None, masking: Optional[dict[str, Any]] = None,
                           run_id: Optional[str] = None) -> Path:
    """Write weights + arch as one safetensors file, atomically (temp file, then rename); `assumed`:
    the arch fields a conversion assumed (`official.assumed_note`), recorded with them; `data`: the
    clip settings it was trained with (`model_card.RUN_DATA_KEYS`, `model_card.recorded_note`), `masking`:
    the masking it was trained under (`model_card.RUN_MASK_KEYS`, which `tgmae visualize recon` of the
    file draws: re-trial 30B S3), when known; `run_id`: the run that made it (`model_card.own_run_id`;
    a copy's, the id its source records), which proves it that run's (`model_card.run_of`, re-trial 33B S1)."""
    return write_safetensors(model.state_dict(), path, {"format": FORMAT, "arch": model.arch.to_json(),
                                                        **assumed_note(list(assumed)), **recorded_note("data", data or {}),
                                                        **recorded_note("masking", masking or {}), **run_id_note(run_id)})


def save_encoder(encoder: nn.Module, path: str | os.PathLike, assumed: Sequence[str] = (),
                 data: Optional[dict[str, Any]] = None, run_id: Optional[str] = None) -> Path:
    """Write a `VideoViTEncoder` (weights under its own names + arch) as ENCODER_FORMAT; `assumed`,
    `data` and `run_id` as `save_pretraining_model`'s."""
    return write_safetensors(encoder.state_dict(), path, {"format": ENCODER_FORMAT, "arch": encoder.arch.to_json(),
                                                          **assumed_note(list(assumed)), **recorded_note("data", data or {}),
                                                          **run_id_note(run_id)})


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
        return any(k.startswith("decoder.") for k in hf_directory_state(p))
    return "encoder_to_decoder.weight" in official_state(unwrap_state(read_torch(p), p), p)
