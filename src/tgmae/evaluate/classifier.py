"""Video classifier for finetuning: the encoder on all tokens, mean pooling, fc_norm, a linear head.

VideoMAE's finetuning model (`use_mean_pooling=True`): the encoder's own final norm is dropped
(Identity), tokens are averaged, `fc_norm` (LayerNorm) normalizes the pooled vector, dropout,
then the head, initialized trunc-normal(0.02) scaled by `head_init_scale` (0.001). fc_norm eps is
1e-5, as in transformers' `VideoMAEForVideoClassification` (VideoMAE itself uses 1e-6, a
negligible difference), so exported classifiers give the same logits there.

Saved as one safetensors file (CLASSIFIER_FORMAT) with the architecture, class count and class
names in its metadata; `load_classifier` rebuilds it from the file alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from tgmae.evaluate.sources import CLASSIFIER_FORMAT, CheckpointError, EncoderSource, load_encoder_source
from tgmae.models.arch import VideoMAEArch
from tgmae.models.encoder import VideoViTEncoder

FC_NORM_EPS = 1e-5


class VideoClassifier(nn.Module):
    """video [B, C, T, H, W] -> logits [B, num_classes].

    Args:
        arch: encoder architecture (`encoder_norm` False for VideoMAE-style mean pooling).
        num_classes: K.
        head_init_scale: the head's trunc-normal(0.02) init is multiplied by this.
        dropout: dropout on the pooled feature before the head.
        fc_norm_eps: eps of the pooled-feature LayerNorm.
    """

    def __init__(self, arch: VideoMAEArch, num_classes: int, head_init_scale: float = 0.001,
                 dropout: float = 0.0, fc_norm_eps: float = FC_NORM_EPS) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes={num_classes}: must be > 0")
        self.arch = arch
        self.num_classes = num_classes
        self.encoder = VideoViTEncoder(arch)
        self.fc_norm = nn.LayerNorm(arch.embed_dim, eps=fc_norm_eps)
        self.head_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(arch.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, D]: encoder on all tokens, mean over tokens, fc_norm."""
        return self.fc_norm(self.encoder(video).mean(dim=1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, K]."""
        return self.head(self.head_drop(features))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    @property
    def depth(self) -> int:
        return self.arch.depth

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay id: 0 embedding, i + 1 block i, depth + 1 encoder norm / fc_norm / head."""
        if name.startswith("encoder."):
            return self.encoder.layer_id(name[len("encoder."):])
        return self.arch.depth + 1

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


def classifier_arch(arch: VideoMAEArch, num_frames: Optional[int] = None, image_size: Optional[int] = None,
                    drop_path: Optional[float] = None) -> VideoMAEArch:
    """A pretrained encoder's arch for finetuning: no final encoder norm, the run's clip geometry
    and stochastic depth (sin-cos positions, so frames and image size may change freely)."""
    changes: dict = {"encoder_norm": False}
    if num_frames is not None:
        changes["num_frames"] = num_frames
    if image_size is not None:
        changes["image_size"] = image_size
    if drop_path is not None:
        changes["drop_path"] = drop_path
    return dataclasses.replace(arch, **changes)


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
    _strict_load(model.encoder, enc_state, src.path)
    if keep_head:
        head_state = {k: v for k, v in src.head.items()}
        if "fc_norm.weight" not in head_state:
            raise CheckpointError(f"{src.path}: classifier without fc_norm (token pooling other than mean)")
        _strict_load(model.fc_norm, _strip(head_state, "fc_norm."), src.path)
        _strict_load(model.head, _strip(head_state, "head."), src.path)
    model.class_names = list(src.class_names)  # type: ignore[attr-defined]
    return model


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
           if k in state and state[k].shape != v.shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{source}: weights do not fit the model: missing {missing[:6]}, "
                              f"unexpected {unexpected[:6]}, shape mismatch {bad[:4]}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_classifier(model: VideoClassifier, path: str | os.PathLike,
                    class_names: Sequence[str] = ()) -> Path:
    """Write weights + arch + class names as one safetensors file, atomically."""
    from tgmae.models.interop import write_safetensors

    arch = dataclasses.replace(model.arch, drop_path=0.0)
    meta = {"format": CLASSIFIER_FORMAT, "arch": arch.to_json(), "num_classes": str(model.num_classes),
            "fc_norm_eps": repr(model.fc_norm.eps), "class_names": json.dumps(list(class_names))}
    return write_safetensors(model.state_dict(), path, meta)


def load_classifier(path: str | os.PathLike, num_frames: Optional[int] = None,
                    image_size: Optional[int] = None) -> VideoClassifier:
    """A finetuned classifier (ours, a training checkpoint, an HF or official finetuned model), eval mode."""
    return build_classifier(path, num_frames=num_frames, image_size=image_size, keep_head=True).eval()


__all__ = ["VideoClassifier", "build_classifier", "classifier_arch", "save_classifier", "load_classifier",
           "FC_NORM_EPS"]
