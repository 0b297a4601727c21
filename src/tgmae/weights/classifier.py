"""A video classifier's weights: built from any checkpoint's encoder (and head), saved and loaded.

Saved as one safetensors file (CLASSIFIER_FORMAT) with the architecture, class count and class
names in its metadata; `load_classifier` rebuilds it from the file alone. The model itself is
`tgmae.models.classifier.VideoClassifier`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from tgmae.models.classifier import FC_NORM_EPS, VideoClassifier, classifier_arch
from tgmae.weights.files import CheckpointError, load_strict, write_safetensors
from tgmae.weights.model_card import recorded_note, run_id_note
from tgmae.weights.official import assumed_note
from tgmae.weights.sources import CLASSIFIER_FORMAT, EncoderSource, load_encoder_source


def build_classifier(
    source: EncoderSource | str | os.PathLike,
    num_classes: Optional[int] = None,
    *,
    num_frames: Optional[int] = None,
    image_size: Optional[int] = None,
    drop_path: Optional[float] = None,
    head_init_scale: float = 0.001,
    dropout: float = 0.0,
    keep_head: bool = False,
) -> VideoClassifier:
    """A VideoClassifier with the encoder weights of `source` (checkpoint path or EncoderSource).

    Only encoder weights are kept (the encoder's final norm is dropped, as VideoMAE finetuning
    does). keep_head: also load fc_norm / head from a classifier checkpoint (evaluation, export);
    num_classes then defaults to the checkpoint's.
    """
    src = source if isinstance(source, EncoderSource) else load_encoder_source(source)
    if keep_head:
        if not src.head:
            raise CheckpointError(
                f"{src.path}: not a finetuned classifier (no fc_norm/head weights); pass the "
                "classifier.safetensors of a `tgmae finetune` run (a pretrained encoder is finetuned or probed first)")
        if num_classes is not None and num_classes != src.num_classes:
            raise CheckpointError(f"{src.path}: classifier has {src.num_classes} classes, {num_classes} requested")
        num_classes = src.num_classes
    if num_classes is None:
        raise ValueError("num_classes is needed (set eval.num_classes or use annotations with class names)")
    arch = classifier_arch(src.arch, num_frames, image_size, drop_path)
    eps = src.fc_norm_eps if (keep_head and src.fc_norm_eps is not None) else FC_NORM_EPS
    model = VideoClassifier(arch, num_classes, head_init_scale=head_init_scale, dropout=dropout, fc_norm_eps=eps)
    enc_state = {k: v for k, v in src.encoder.items() if not k.startswith("norm.")}
    load_strict(model.encoder, enc_state, src.path)
    if keep_head:
        if "fc_norm.weight" not in src.head:
            raise CheckpointError(f"{src.path}: classifier without fc_norm (token pooling other than mean)")
        load_strict(model.fc_norm, _strip(src.head, "fc_norm."), src.path)
        load_strict(model.head, _strip(src.head, "head."), src.path)
    model.class_names = list(src.class_names)  # type: ignore[attr-defined]
    return model


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_classifier(model: VideoClassifier, path: str | os.PathLike, class_names: Sequence[str] = (),
                    assumed: Sequence[str] = (), data: Optional[dict[str, Any]] = None,
                    run_id: Optional[str] = None) -> Path:
    """Write weights + arch + class names as one safetensors file, atomically; `assumed`: the arch
    fields a conversion assumed (`official.assumed_note`), recorded with them; `data`: the clip
    settings it was trained with (`model_card.RUN_DATA_KEYS`, `model_card.recorded_note`), when known;
    `run_id`: the run that made it (`pretraining.save_pretraining_model`'s, re-trial 33B S1)."""
    arch = dataclasses.replace(model.arch, drop_path=0.0)
    meta = {"format": CLASSIFIER_FORMAT, "arch": arch.to_json(), "num_classes": str(model.num_classes),
            "fc_norm_eps": repr(model.fc_norm.eps), "class_names": json.dumps(list(class_names)),
            **assumed_note(list(assumed)), **recorded_note("data", data or {}), **run_id_note(run_id)}
    return write_safetensors(model.state_dict(), path, meta)


def load_classifier(path: str | os.PathLike, num_frames: Optional[int] = None,
                    image_size: Optional[int] = None, num_heads: Optional[int] = None) -> VideoClassifier:
    """A finetuned classifier (ours, a training checkpoint, an HF or official finetuned model), eval mode.
    num_heads: for an official .pth, which does not store it (`model.num_heads`; `load_encoder_source`)."""
    src = load_encoder_source(path, num_heads=num_heads)
    return build_classifier(src, num_frames=num_frames, image_size=image_size, keep_head=True).eval()
