"""Build the pretraining model from the `model` config section and the clip geometry."""

from __future__ import annotations

from typing import Any, Optional

from tgmae.config import MaskingConfig, ModelConfig, TrainConfig
from tgmae.models.arch import arch_from_config
from tgmae.models.pretrainer import VideoMAEPretrainer


def build_pretraining_model(
    model_cfg: ModelConfig,
    num_frames: int,
    image_size: int,
    pixel_mean: Optional[tuple[float, ...]] = None,
    pixel_std: Optional[tuple[float, ...]] = None,
    *,
    grad_checkpoint: bool = False,
    decoder_ratio: Optional[float] = None,
    decoder_mask: str = "running_cell",
) -> VideoMAEPretrainer:
    """`ModelConfig` + (data.num_frames, data.image_size) -> model initialized from the default
    torch generator (`model_cfg.pretrained` is not read). pixel_mean / pixel_std: data.mean /
    data.std; None = ImageNet. The keyword options are `VideoMAEPretrainer`'s (`training_options`).
    """
    arch = arch_from_config(model_cfg, num_frames, image_size, pixel_mean, pixel_std)
    return VideoMAEPretrainer(arch, grad_checkpoint=grad_checkpoint, decoder_ratio=decoder_ratio,
                              decoder_mask=decoder_mask)


def training_options(masking_cfg: MaskingConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """The model's training-time options from the `masking` and `train` sections, as keyword
    arguments of `build_pretraining_model` / `build_video_text_model`."""
    return dict(grad_checkpoint=train_cfg.grad_checkpoint, decoder_ratio=masking_cfg.decoder_ratio,
                decoder_mask=masking_cfg.decoder_mask)
