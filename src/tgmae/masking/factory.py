"""Masking config -> generator. Content-guided generators register here as they land."""

from __future__ import annotations

from typing import Optional

from tgmae.config import MaskingConfig
from tgmae.mask_contract import MaskGenerator
from tgmae.masking.simple import RandomMask, TubeMask


def build_mask_generator(cfg: MaskingConfig, *, captions_file: str = "", device: str = "cpu",
                         data_mean=None, data_std=None, image_size: Optional[int] = None,
                         patch_size: Optional[int] = None) -> MaskGenerator:
    """`captions_file` (the run's captions.file) lets a TGM similarity cache be checked against
    the run's caption source, `image_size` / `patch_size` (data.image_size, model.patch_size; None:
    not checked) against the geometry its maps were made for (CacheMismatchError); `device` is
    where online TGM runs CLIP (a batch generator, see `tgmae.masking.batch`, when it is not the
    CPU). `cfg` is validated (`MaskingConfig`): a name it lists has a generator here
    (tests/test_config.py keeps the lists equal)."""
    if cfg.name == "tgm":
        return _build_tgm(cfg, captions_file, device, data_mean, data_std, (image_size, patch_size))
    if cfg.name == "mgm":
        from tgmae.masking.mgm import MotionGuidedMask

        return MotionGuidedMask(cfg.ratio, cfg.motion_source)
    return {"random": RandomMask, "tube": TubeMask}[cfg.name](cfg.ratio)  # the name is validated


def _build_tgm(cfg: MaskingConfig, captions_file: str, device: str, data_mean, data_std,
               geometry: tuple[Optional[int], Optional[int]]):
    clip_model, caption = cfg.clip_model, cfg.caption
    if cfg.cache_dir:
        from tgmae.masking.cache import SimilarityCache
        from tgmae.masking.tgm import CachedTGMMask

        source = None
        if captions_file:
            from tgmae.captions.store import read_store
            from tgmae.masking.caption_source import caption_source_of

            source = caption_source_of(read_store(captions_file).records)
        cache = SimilarityCache(cfg.cache_dir, expect_clip=clip_model or None, expect_caption_source=source)
        cache.check_geometry(*geometry)
        generator = CachedTGMMask(cache, cfg.ratio, cfg.select, cfg.tubelet_frame, caption)
        generator.captions_file = captions_file
        return generator
    # else masking.clip_model is set: RunConfig refuses tgm with neither
    from tgmae.clip.features import ClipPatchScorer, load_clip
    from tgmae.masking.tgm import BatchTGMMask, OnlineTGMMask

    scorer = ClipPatchScorer(load_clip(clip_model, device, setting="masking.clip_model"), cfg.mode,
                             cfg.dense_size or None)
    cls = OnlineTGMMask if str(device) == "cpu" else BatchTGMMask
    norm = {k: tuple(v) for k, v in (("data_mean", data_mean), ("data_std", data_std)) if v is not None}
    return cls(scorer, cfg.ratio, cfg.select, cfg.tubelet_frame, **norm)
