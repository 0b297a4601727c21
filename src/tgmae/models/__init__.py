"""tgmae.models: VideoMAE encoder / pretraining model, and its target (weights on disk: `tgmae.weights`)."""

from tgmae.models.arch import IMAGENET_MEAN, IMAGENET_STD, PRESETS, VideoMAEArch, arch_from_config
from tgmae.models.encoder import VideoViTEncoder
from tgmae.models.factory import build_pretraining_model
from tgmae.models.pretrainer import PretrainOutput, VideoMAEPretrainer
from tgmae.models.target import (
    masked_mse,
    patchify,
    pretrain_target,
    pretrain_target_channel_first,
    reconstruct_video,
    unpatchify,
)
from tgmae.models.tokens import TokenSplit, mask_to_indices
from tgmae.models.infonce import InfoNCE, info_nce
from tgmae.models.video_text import VideoTextOutput, VideoTextPretrainer, build_video_text_model

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "VideoMAEArch", "arch_from_config",
    "VideoViTEncoder", "build_pretraining_model", "PretrainOutput", "VideoMAEPretrainer",
    "patchify", "unpatchify", "pretrain_target", "pretrain_target_channel_first", "masked_mse",
    "reconstruct_video", "TokenSplit",
    "mask_to_indices",
    "InfoNCE", "info_nce", "VideoTextOutput", "VideoTextPretrainer", "build_video_text_model",
]
