"""Build the pretraining model from the `model` config section and the clip geometry."""

from __future__ import annotations

from typing import Optional

from tgmae.config import ModelConfig
from tgmae.models.arch import arch_from_config
from tgmae.models.pretrainer import VideoMAEPretrainer


def build_pretraining_model(
    model_cfg: ModelConfig,
    num_frames: int,
    image_size: int,
    pixel_mean: Optional[tuple[float, ...]] = None,
    pixel_std: Optional[tuple[float, ...]] = None,
) -> VideoMAEPretrainer:
    """`ModelConfig` + (data.num_frames, data.image_size) -> freshly initialized model.

    pixel_mean / pixel_std: the data normalization (data.mean / data.std); None = ImageNet, the
    statistics VideoMAE's target assumes. Weights come from the default torch generator: seed
    it first for reproducible initialization. `model_cfg.pretrained` is not read here; load
    checkpoints with `tgmae.models.load_pretraining_model`.
    """
    return VideoMAEPretrainer(arch_from_config(model_cfg, num_frames, image_size, pixel_mean, pixel_std))


__all__ = ["build_pretraining_model"]
