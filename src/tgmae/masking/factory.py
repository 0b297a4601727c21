"""Masking config -> generator. Content-guided generators register here as they land."""

from __future__ import annotations

from tgmae.config import ConfigError, MaskingConfig
from tgmae.masking.base import MaskGenerator
from tgmae.masking.simple import RandomMask, TubeMask


def build_mask_generator(cfg: MaskingConfig) -> MaskGenerator:
    if cfg.name == "random":
        return RandomMask(cfg.ratio)
    if cfg.name == "tube":
        return TubeMask(cfg.ratio)
    raise ConfigError(f"masking.name={cfg.name!r}: known generators are random, tube")
