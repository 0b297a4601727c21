"""Paper Figure 3 for one clip of a dataset (`tgmae visualize {recon,attention,masks}`).

- recon CKPT: original / masked / reconstructed frames (PNG + GIF) of a pretraining model, with
  the run's mask generator (`masking.*`), un-normalized with the dataset's mean/std
  (`tgmae.viz.reconstruction`, as the pretraining run's own figures).
- attention CKPT: the encoder's attention of the centre patch of the centre frame, overlaid on
  the frames (`tgmae.viz.attention`); any checkpoint with an encoder (pretrained or finetuned).
- masks ...: the masking figures of `tgmae.viz.masks` (its own arguments).
The clip is item `index` of `subset` (val by default, the evaluation transform) of the
config's annotations, or `video` (a file or frame folder). Outputs go to `out` (default
train.output_dir/figures).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional


def _dataset(cfg, subset: str, video: Optional[str], **kwargs):
    from tgmae.data.dataset import VideoDataset, build_dataset

    if video:
        from tgmae.data.annotations import VideoRecord

        path = Path(video).resolve()
        record = VideoRecord(path=str(path), label=0, video_id=path.stem)
        return VideoDataset([record], cfg.data, train=False, seed=cfg.train.seed, **kwargs)
    return build_dataset(cfg.data, subset, train=False, seed=cfg.train.seed, **kwargs)


def _index(dataset, index: int, what: str) -> int:
    """`index` checked against the dataset: ConfigError naming --index, not an IndexError."""
    from tgmae.config import ConfigError

    if not 0 <= index < len(dataset):
        raise ConfigError(f"--index {index}: the {what} set has {len(dataset)} clip(s): use 0 to {len(dataset) - 1}")
    return index


def _out(cfg, out: Optional[str]) -> Path:
    return Path(out or Path(cfg.train.output_dir) / "figures")


def load_pretrainer(path: str | Path, num_frames: int, image_size: int):
    """A VideoMAEPretrainer (decoder included) from ours / official / HF, or a pretraining (or
    video-text) training checkpoint or run directory; clip geometry from the run's config."""
    from tgmae.weights.files import resolve_checkpoint
    from tgmae.weights.pretraining import load_pretraining_model

    p = resolve_checkpoint(path)
    if p.is_dir() and not (p / "config.json").is_file():  # a run folder: its final model, else its latest step
        p = resolve_checkpoint(p / "model.safetensors" if (p / "model.safetensors").is_file() else p / "checkpoints")
    return load_pretraining_model(p, num_frames=num_frames, image_size=image_size)


def recon_figures(cfg, checkpoint: str, *, index: int = 0, subset: str = "val", video: Optional[str] = None,
                  out: Optional[str] = None) -> dict[str, Path]:
    """Original / masked / reconstructed frames of clip `index` with the run's mask generator;
    returns figure name -> path."""
    from tgmae.masking import build_mask_generator
    from tgmae.models.arch import check_checkpoint_geometry
    from tgmae.train.pretrain import write_pretrain_figures

    model = load_pretrainer(checkpoint, cfg.data.num_frames, cfg.data.image_size)
    check_checkpoint_geometry(cfg.model, model.arch, checkpoint)
    captions = None
    if cfg.captions.file:
        from tgmae.captions.provider import CaptionProvider

        captions = CaptionProvider.from_config(cfg.captions)
    dataset = _dataset(cfg, subset, video, token_grid=cfg.token_grid, mask_generator=build_mask_generator(cfg.masking),
                       captions=captions)
    return write_pretrain_figures(model, dataset, cfg, _out(cfg, out), index=_index(dataset, index, "video" if video else subset))


def attention_maps(cfg, checkpoint: str, *, index: int = 0, subset: str = "val", video: Optional[str] = None,
                   out: Optional[str] = None, layer: int = -1) -> dict[str, Path]:
    """The encoder's attention of the centre patch of the centre frame (block `layer`, -1 = last)
    over clip `index`; returns figure name -> path."""
    from tgmae.models.arch import check_checkpoint_geometry
    from tgmae.models.encoder import VideoViTEncoder
    from tgmae.viz.attention import attention_figures
    from tgmae.weights.sources import load_encoder_source

    src = load_encoder_source(checkpoint)
    check_checkpoint_geometry(cfg.model, src.arch, checkpoint)
    arch = dataclasses.replace(src.arch, num_frames=cfg.data.num_frames, image_size=cfg.data.image_size,
                               drop_path=0.0)
    encoder = VideoViTEncoder(arch)
    encoder.load_state_dict(src.encoder)
    dataset = _dataset(cfg, subset, video)
    sample = dataset[_index(dataset, index, "video" if video else subset)]
    name = "attention_" + str(sample.get('video_id', index)).replace("/", "_")  # ids may hold folders
    return attention_figures(encoder.eval(), sample["video"], cfg.data.mean, cfg.data.std, _out(cfg, out),
                             layer=layer, name=name)


__all__ = ["recon_figures", "attention_maps", "load_pretrainer"]
