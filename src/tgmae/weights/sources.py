"""Encoder (and classifier head) weights from every checkpoint kind downstream evaluation meets:
ours (pretraining, encoder-only, classifier `.safetensors`); an official VideoMAE / VideoMAEv2
`.pth` (pretraining, finetuned, or an encoder alone); a transformers directory
(`VideoMAEForPreTraining`, `VideoMAEModel`, `VideoMAEForVideoClassification`); a training
checkpoint (`checkpoints/step_N/`) or a run folder. Whatever module held the encoder, it is found
by its `patch_embed.proj.weight` and returned under `VideoViTEncoder` names.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from tgmae.models.arch import VideoMAEArch, arch_from_config
from tgmae.models.encoder import VideoViTEncoder
from tgmae.weights.files import (
    RUN_WEIGHTS,
    CheckpointError,
    hf_directory_state,
    looks_like_safetensors,
    read_safetensors,
    require_checkpoint,
    resolve_weights,
)
from tgmae.weights.layouts import (
    OFFICIAL_DECODER_HEADS,
    count_blocks,
    hf_arch,
    hf_to_ours,
    infer_encoder_arch,
    strip_wrappers,
)
from tgmae.weights.official import encoder_assumed, hf_assumed_meta, official_settings, read_official, warn_assumed
from tgmae.weights.pretraining import (
    ENCODER_FORMAT,
    FORMAT as PRETRAIN_FORMAT,
    load_pretraining_model,
    official_pretraining_model,
)

CLASSIFIER_FORMAT = "tgmae.video-classifier.v1"
_EMBED_KEY = "patch_embed.proj.weight"
_HEAD_PREFIXES = ("fc_norm.", "head.")
_HF_BASE_PREFIXES = ("embeddings.", "encoder.layer.", "layernorm.")


@dataclass
class EncoderSource:
    """Weights found in a checkpoint.

    arch: the encoder architecture as stored or inferred (geometry may be overridden later).
    encoder: `VideoViTEncoder` state dict (patch_embed.proj.*, blocks.N.*, norm.* if any).
    head: classifier weights `fc_norm.*` / `head.*` when the checkpoint is a classifier, else {}.
    kind: tgmae | official | hf | train-checkpoint | classifier.
    assumed: the arch fields neither the weights prove nor the file states (an official .pth's, or
        recorded as assumed by the conversion that wrote ours or the export-hf folder:
        `official.official_settings`, `official.hf_assumed_meta`); the encoder's only.
    """

    arch: VideoMAEArch
    encoder: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    kind: str = "tgmae"
    path: str = ""
    class_names: list[str] = field(default_factory=list)
    fc_norm_eps: Optional[float] = None
    assumed: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> Optional[int]:
        w = self.head.get("head.weight")
        return None if w is None else int(w.shape[0])

    def digest(self) -> str:
        """`tensors_digest` of the encoder weights: identifies features it makes."""
        return tensors_digest(self.encoder)

    def build_encoder(self) -> VideoViTEncoder:
        """A `VideoViTEncoder` of `arch` holding these weights, in eval mode."""
        encoder = VideoViTEncoder(self.arch)
        encoder.load_state_dict(self.encoder)
        return encoder.eval()


def tensors_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex over named tensors (names, shapes, dtypes, bytes, in name order): the same
    weights give the same digest wherever they are stored (the key of what they compute)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_encoder_source(path: str | os.PathLike, num_heads: Optional[int] = None) -> EncoderSource:
    """Read encoder (and head) weights from any supported checkpoint; see the module doc.

    num_heads: only for foreign checkpoints that do not store it (official .pth of a width
    outside the released models: required there, `model.num_heads`).
    """
    p = resolve_weights(require_checkpoint(path))  # checkpoints/latest, a step folder, a run folder -> its weights file
    if p.is_dir():
        return _from_directory(p)
    if p.suffix == ".safetensors" or looks_like_safetensors(p):
        return _from_safetensors(p)
    return _from_pth(p, num_heads)


def check_stated_heads(src: Any, arch: VideoMAEArch, stated: dict[str, int]) -> None:
    """Head counts given as options (`--num-heads` / `--decoder-heads`) for a checkpoint that
    stores its own: they must agree with `arch` (CheckpointError), never be replaced or ignored."""
    for key, value in stated.items():
        if getattr(arch, key) != value:
            raise CheckpointError(
                f"--{key.replace('_', '-')} {value}: {src} stores {getattr(arch, key)}; leave the option out "
                "(it is for an official .pth, which does not store its head counts)")


def _from_directory(p: Path) -> EncoderSource:
    """A transformers folder's encoder; any other folder (`resolve_weights` found no weights in it): CheckpointError."""
    if (p / "config.json").is_file():
        return _from_hf(p)
    raise CheckpointError(
        f"{p}: no checkpoint found (looked for config.json, {', '.join(RUN_WEIGHTS)}, checkpoints/latest)")


def _from_safetensors(p: Path) -> EncoderSource:
    state, meta = read_safetensors(p)
    fmt = meta.get("format")
    assumed = warn_assumed(p, meta)
    if fmt == PRETRAIN_FORMAT:
        model = load_pretraining_model(p)
        return EncoderSource(model.arch, dict(model.encoder.state_dict()), kind="tgmae", path=str(p),
                             assumed=encoder_assumed(assumed))
    if fmt == ENCODER_FORMAT:
        return EncoderSource(VideoMAEArch.from_json(meta["arch"]), state, kind="tgmae", path=str(p), assumed=assumed)
    if fmt == CLASSIFIER_FORMAT:
        arch = VideoMAEArch.from_json(meta["arch"])
        enc, head = _split(state, str(p))
        names = json.loads(meta.get("class_names", "[]"))
        return EncoderSource(arch, enc, head, kind="classifier", path=str(p), class_names=names,
                             fc_norm_eps=float(meta.get("fc_norm_eps", 1e-5)), assumed=assumed)
    if "tgmae_config" in meta:
        return _from_train_state(state, json.loads(meta["tgmae_config"]), str(p))
    raise CheckpointError(
        f"{p}: safetensors without tgmae metadata (format={fmt!r}); expected a pretraining model, "
        "a classifier or a training checkpoint")


def _from_train_state(state: dict[str, torch.Tensor], config: dict, source: str) -> EncoderSource:
    from tgmae.config import ConfigError, RunConfig, from_dict

    try:
        cfg = from_dict(RunConfig, config)
    except ConfigError as e:
        raise CheckpointError(f"{source}: the run configuration stored with the weights is invalid ({e})") from None
    state = strip_wrappers(state)
    if not any(k.endswith(_EMBED_KEY) for k in state):
        groups = sorted({k.split(".")[0] for k in state})
        probe = " (a linear probe's: it trains only a head on frozen features)" if set(groups) <= {"bn", "head"} else ""
        raise CheckpointError(
            f"{source}: a training checkpoint without a video encoder, only {', '.join(groups) or 'nothing'}"
            f"{probe}; pass the encoder it was trained on (its model.pretrained={cfg.model.pretrained!r}) or a "
            "pretraining / finetuning run")
    enc, head = _split(state, source)
    stored = _stored_arch(cfg, enc, source)
    arch = infer_encoder_arch(enc, num_heads=stored.num_heads, layer_norm_eps=stored.layer_norm_eps,
                              num_frames=cfg.data.num_frames, image_size=cfg.data.image_size)
    return EncoderSource(arch, enc, head, kind="train-checkpoint", path=source)


def _stored_arch(cfg: Any, enc: dict[str, torch.Tensor], source: str) -> VideoMAEArch:
    """The architecture a training run's weights were built with: its preset, or (finetuning,
    probing) the arch of the checkpoint its encoder came from (`model.pretrained`)."""
    candidates = [arch_from_config(cfg.model, cfg.data.num_frames, cfg.data.image_size)]
    pretrained = cfg.model.pretrained
    if pretrained and Path(pretrained).exists() and Path(pretrained).resolve() != Path(source).resolve():
        candidates.insert(0, load_encoder_source(pretrained).arch)
    w = enc[_EMBED_KEY]
    shape = (int(w.shape[0]), count_blocks(enc), int(w.shape[3]), int(w.shape[2]))
    for arch in candidates:
        if (arch.embed_dim, arch.depth, arch.patch_size, arch.tubelet_size) == shape:
            return arch
    raise CheckpointError(
        f"{source}: weights (width {shape[0]}, depth {shape[1]}, patch {shape[2]}, tubelet {shape[3]}) do not "
        f"match the stored config (model.preset={cfg.model.preset!r}, model.pretrained={pretrained!r}); "
        "load the run's portable file (classifier.safetensors / model.safetensors) instead")


def _from_pth(p: Path, num_heads: Optional[int]) -> EncoderSource:
    return official_encoder_source(*read_official(p), p, num_heads=num_heads)


def official_encoder_source(state: dict[str, torch.Tensor], args: Mapping[str, Any], source: Any, *,
                            num_heads: Optional[int] = None, **given: Any) -> EncoderSource:
    """The encoder (and head) of an official .pth already read (`read_official`'s state and args:
    convert reads a file once). given: num_frames / image_size stated by options; the rest is its
    args', else the released models' (`official_settings`: `assumed` names those, and a geometry
    the weights contradict is a CheckpointError naming the key)."""
    given = {**given, "num_heads": num_heads}
    settings, assumed = official_settings(state, args, given, source)
    geometry = {k: settings[k] for k in ("num_frames", "image_size")}
    if "encoder_to_decoder.weight" in state:  # official pretraining layout
        # Only the encoder is kept: the dropped decoder's head count changes nothing here.
        ddim = int(state["encoder_to_decoder.weight"].shape[0])
        model = official_pretraining_model(state, args, source, **geometry, num_heads=num_heads,
                                           decoder_heads=OFFICIAL_DECODER_HEADS.get(ddim, 1))
        return EncoderSource(model.arch, dict(model.encoder.state_dict()), kind="official", path=str(source),
                             assumed=encoder_assumed(assumed))
    enc, head = _split(state, str(source))
    arch = infer_encoder_arch(enc, num_heads=num_heads, layer_norm_eps=1e-6, **geometry)
    return EncoderSource(arch, enc, head, kind="official", path=str(source), fc_norm_eps=1e-6, assumed=assumed)


def _from_hf(p: Path) -> EncoderSource:
    config = json.loads((p / "config.json").read_text())
    raw = hf_directory_state(p)
    prefixed = {(f"videomae.{k}" if k.startswith(_HF_BASE_PREFIXES) else k): v for k, v in raw.items()}
    ours, unknown = hf_to_ours(prefixed)
    head = {}
    for name in unknown:
        if name.startswith("fc_norm."):
            head[name] = prefixed[name]
        elif name.startswith("classifier."):
            head["head." + name[len("classifier."):]] = prefixed[name]
    enc = {k[len("encoder."):]: v for k, v in ours.items() if k.startswith("encoder.")}
    if _EMBED_KEY not in enc:
        raise CheckpointError(f"{p}: Hugging Face directory without VideoMAE encoder weights")
    arch = hf_arch(config)
    labels = config.get("id2label") or {}
    names = [labels[k] for k in sorted(labels, key=int)] if head and labels else []
    return EncoderSource(arch, enc, head, kind="hf", path=str(p), class_names=names,
                         fc_norm_eps=1e-5 if head else None,
                         assumed=encoder_assumed(warn_assumed(p, hf_assumed_meta(config))))


def _split(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Any state dict holding one video encoder -> (encoder state, classifier head state)."""
    prefixes = sorted({k[: -len(_EMBED_KEY)] for k in state if k.endswith(_EMBED_KEY)})
    if len(prefixes) != 1:
        raise CheckpointError(
            f"{source}: expected exactly one video encoder (a '*{_EMBED_KEY}' key), found "
            f"{len(prefixes)}: {prefixes[:4]}")
    prefix = prefixes[0]
    enc = {k[len(prefix):]: v for k, v in state.items()
           if k.startswith(prefix) and k[len(prefix):].startswith(("patch_embed.", "blocks.", "norm."))}
    head = {k: v for k, v in state.items() if k.startswith(_HEAD_PREFIXES)}
    return enc, head
