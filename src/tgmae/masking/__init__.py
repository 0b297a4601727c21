"""Mask generators: callables (MaskContext, torch.Generator) -> [N] bool, True = masked.

Content-free: `RandomMask`, `TubeMask`. Content-guided: `CachedTGMMask` / `OnlineTGMMask` /
`BatchTGMMask` (text-guided, paper section 3.3) and `MotionGuidedMask` (codec motion vectors).
The interface (`MaskContext`, `CropParams`, the masked counts) is `tgmae.mask_contract`.
"""

from tgmae.mask_contract import CropParams, MaskContext, MaskGenerator, check_mask, num_masked
from tgmae.masking.batch import BatchMaskGenerator, is_batch_generator
from tgmae.masking.cache import CacheMismatchError, DamagedCacheEntry, MissingCacheEntry, SimilarityCache
from tgmae.masking.factory import build_mask_generator
from tgmae.masking.mgm import MotionGuidedMask
from tgmae.masking.resample import resample_to_tokens
from tgmae.masking.select import select_per_slice
from tgmae.masking.simple import RandomMask, TubeMask
from tgmae.masking.tgm import BatchTGMMask, CachedTGMMask, OnlineTGMMask

__all__ = [
    "BatchMaskGenerator", "BatchTGMMask", "CacheMismatchError", "CachedTGMMask", "CropParams",
    "DamagedCacheEntry", "MaskContext", "MaskGenerator", "MissingCacheEntry", "MotionGuidedMask", "OnlineTGMMask",
    "RandomMask", "SimilarityCache", "TubeMask", "build_mask_generator", "check_mask",
    "is_batch_generator", "num_masked", "resample_to_tokens", "select_per_slice",
]
