"""Video classifier for finetuning: the encoder on all tokens, mean pooling, fc_norm, a linear head.

VideoMAE's finetuning model (`use_mean_pooling=True`), head init trunc-normal(0.02) x
`head_init_scale`. fc_norm eps 1e-5 as transformers' `VideoMAEForVideoClassification`, so
exported classifiers give the same logits there. Saved and loaded by `tgmae.weights.classifier`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

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
        inner = name.removeprefix("encoder.")
        return self.encoder.layer_id(inner) if inner != name else self.arch.depth + 1

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}


def classifier_arch(arch: VideoMAEArch, num_frames: Optional[int] = None, image_size: Optional[int] = None,
                    drop_path: Optional[float] = None) -> VideoMAEArch:
    """A pretrained encoder's arch for finetuning: no final encoder norm, the run's clip geometry
    and stochastic depth (sin-cos positions, so frames and image size may change freely)."""
    given = dict(num_frames=num_frames, image_size=image_size, drop_path=drop_path)
    return dataclasses.replace(arch, encoder_norm=False, **{k: v for k, v in given.items() if v is not None})
