"""`tgmae visualize {recon,attention,masks}`: paper Figure 3 for one clip of a dataset.

- recon CKPT: original / masked / reconstructed frames (PNG + GIF) of a pretraining model, with
  the run's mask generator (`masking.*`), un-normalized with the dataset's mean/std
  (`tgmae.viz.reconstruction`, as the pretraining run's own figures).
- attention CKPT: the encoder's attention of the centre patch of the centre frame, overlaid on
  the frames (`tgmae.viz.attention`); any checkpoint with an encoder (pretrained or finetuned).
- masks ...: the masking figures of `tgmae.viz.masks` (its own arguments).
The clip is item `--index` of `--subset` (val by default, the evaluation transform) of the
config's annotations, or `--video FILE`. Outputs go to `--out` (default train.output_dir/figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("tgmae")


def _parser(kind: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"tgmae visualize {kind}", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="model: ours (.safetensors / run / checkpoint dir), official .pth or HF dir")
    p.add_argument("-c", "--config", help="YAML config (data, masking, model sections)")
    p.add_argument("--index", type=int, default=0, help="dataset item to show")
    p.add_argument("--subset", default="val", choices=("train", "val"), help="annotations to read")
    p.add_argument("--video", help="a video file or frame folder instead of the dataset")
    p.add_argument("--out", help="output folder (default: <train.output_dir>/figures)")
    if kind == "attention":
        p.add_argument("--layer", type=int, default=-1, help="block whose attention is shown (-1 = last)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.image_size=112")
    return p


def _dataset(cfg, args, **kwargs):
    from tgmae.data.dataset import VideoDataset, build_dataset

    if args.video:
        from tgmae.data.annotations import VideoRecord

        path = Path(args.video).resolve()
        record = VideoRecord(path=str(path), label=0, video_id=path.stem)
        return VideoDataset([record], cfg.data, train=False, seed=cfg.train.seed, **kwargs)
    return build_dataset(cfg.data, args.subset, train=False, seed=cfg.train.seed, **kwargs)


def _index(dataset, args) -> int:
    """--index checked against the dataset: ConfigError (one line, exit 2) instead of an IndexError."""
    from tgmae.config import ConfigError

    if not 0 <= args.index < len(dataset):
        raise ConfigError(f"--index {args.index}: the {'video' if args.video else args.subset} set has "
                          f"{len(dataset)} clip(s): use 0 to {len(dataset) - 1}")
    return args.index


def load_pretrainer(path: str | Path, num_frames: int, image_size: int):
    """A VideoMAEPretrainer (decoder included) from ours / official / HF, or a pretraining (or
    video-text) training checkpoint or run directory; clip geometry from the run's config."""
    from tgmae.models import load_pretraining_model
    from tgmae.models.interop import resolve_checkpoint

    p = resolve_checkpoint(path)
    if p.is_dir() and not (p / "config.json").is_file():  # a run folder: its final model, else its latest step
        p = resolve_checkpoint(p / "model.safetensors" if (p / "model.safetensors").is_file() else p / "checkpoints")
    return load_pretraining_model(p, num_frames=num_frames, image_size=image_size)


def recon_main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import load_run_config, parse_args
    from tgmae.masking import build_mask_generator
    from tgmae.models.arch import check_checkpoint_geometry
    from tgmae.train.pretrain import write_pretrain_figures

    args = parse_args(_parser("recon"), argv)
    cfg = load_run_config("visualize recon", args.config, args.overrides)
    model = load_pretrainer(args.checkpoint, cfg.data.num_frames, cfg.data.image_size)
    check_checkpoint_geometry(cfg.model, model.arch, args.checkpoint)
    captions = None
    if cfg.captions.file:
        from tgmae.captions.provider import CaptionProvider

        captions = CaptionProvider.from_config(cfg.captions)
    dataset = _dataset(cfg, args, token_grid=cfg.token_grid, mask_generator=build_mask_generator(cfg.masking),
                       captions=captions)
    out = Path(args.out or Path(cfg.train.output_dir) / "figures")
    figures = write_pretrain_figures(model, dataset, cfg, out, index=_index(dataset, args))
    for name, path in figures.items():
        print(f"{name}: {path}")
    return 0


def attention_main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import load_run_config, parse_args
    from tgmae.evaluate.sources import load_encoder_source
    from tgmae.models.arch import check_checkpoint_geometry
    from tgmae.models.encoder import VideoViTEncoder
    from tgmae.viz.attention import attention_figures

    args = parse_args(_parser("attention"), argv)
    cfg = load_run_config("visualize attention", args.config, args.overrides)
    src = load_encoder_source(args.checkpoint)
    check_checkpoint_geometry(cfg.model, src.arch, args.checkpoint)
    arch = dataclasses.replace(src.arch, num_frames=cfg.data.num_frames, image_size=cfg.data.image_size,
                               drop_path=0.0)
    encoder = VideoViTEncoder(arch)
    encoder.load_state_dict(src.encoder)
    dataset = _dataset(cfg, args)
    sample = dataset[_index(dataset, args)]
    out = Path(args.out or Path(cfg.train.output_dir) / "figures")
    name = f"attention_{sample.get('video_id', args.index)}"
    figures = attention_figures(encoder.eval(), sample["video"], cfg.data.mean, cfg.data.std, out,
                                layer=args.layer, name=name)
    for key, path in figures.items():
        print(f"{key}: {path}")
    return 0


def main(argv: Sequence[str]) -> int:
    kinds = {"recon": recon_main, "attention": attention_main}
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tgmae visualize {recon,attention,masks} ...\n\n" + __doc__)
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind == "masks":
        try:
            module = importlib.import_module("tgmae.commands.visualize_masks")
        except ModuleNotFoundError as e:
            if e.name != "tgmae.commands.visualize_masks":
                raise
            print("tgmae visualize masks: tgmae.viz.masks is not installed in this version", file=sys.stderr)
            return 2
        return int(module.main(rest) or 0)
    if kind not in kinds:
        print(f"tgmae visualize: unknown figure {kind!r} (expected recon, attention or masks)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return kinds[kind](rest)


__all__ = ["main", "recon_main", "attention_main", "load_pretrainer"]
