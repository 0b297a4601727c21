"""Mask generators: callables (MaskContext, torch.Generator) -> [N] bool, True = masked."""

from tgmae.masking.base import CropParams, MaskContext, MaskGenerator, check_mask, num_masked, topk_mask
from tgmae.masking.factory import build_mask_generator
from tgmae.masking.simple import RandomMask, TubeMask

__all__ = [
    "CropParams", "MaskContext", "MaskGenerator", "RandomMask", "TubeMask",
    "build_mask_generator", "check_mask", "num_masked", "topk_mask",
]
