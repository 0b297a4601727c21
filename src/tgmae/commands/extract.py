"""`tgmae extract -c CONFIG.yaml model.pretrained=CKPT --out DIR [options] [section.key=value ...]`:
frozen-encoder features per video (`tgmae.evaluate.extract`): pooled per clip, per sliding window
over the whole video, or the token grid; safetensors shards + index.csv; torchrun-sharded and
resumable (rerun the same command after a kill). The encoder's architecture (preset, patch,
tubelet, heads) is its weights' for each model key -c and the overrides leave unset."""

from __future__ import annotations

import argparse
from typing import Sequence

from tgmae.commands.args import Parser, add_config_option, say

# how a user of this command sets each field of ExtractSpec (named in its messages)
SPEC_SETTINGS = {"mode": "--mode", "output": "--output", "window": "--window", "stride": "--stride",
                 "frame_step": "--frame-step", "image_size": "data.image_size", "spatial": "--spatial",
                 "mean": "data.mean", "std": "data.std", "videos_per_shard": "--videos-per-shard",
                 "batch_size": "train.batch_size", "precision": "train.precision", "sampling": "data.sampling",
                 "videos": "videos (data.train_annotations / data.val_annotations, --subset)"}

def build_parser() -> argparse.ArgumentParser:
    from tgmae.evaluate.extract import ExtractSpec

    d = ExtractSpec()
    p = Parser(prog="tgmae extract", description=__doc__)
    add_config_option(p, "YAML config: data.* names the videos (any data.format), model.pretrained "
                         "the checkpoint (ours, official .pth, Hugging Face dir)")
    p.add_argument("--out", required=True, help="output folder (shards, manifest.json, index.csv, unreadable.json)")
    p.add_argument("--subset", choices=("train", "val", "both"), default="both",
                   help="annotations to read: data.train_annotations, data.val_annotations or both (default)")
    p.add_argument("--mode", choices=("windows", "clip"), default=d.mode,
                   help="windows: slide over each video or segment (VideoMAEv2's TAD); clip: the evaluation clip "
                        "(data.sampling)")
    p.add_argument("--output", choices=("pooled", "tokens"), default=d.output,
                   help="pooled: mean over tokens [D]; tokens: the token grid [N, D] per window")
    p.add_argument("--window", type=int, default=None, help="frames per window (default data.num_frames)")
    p.add_argument("--stride", type=int, default=d.stride, help="frames between window starts (mode windows)")
    p.add_argument("--frame-step", type=int, default=None,
                   help="frames between a window's frames (default: 1 for windows, data.frame_stride for clip)")
    p.add_argument("--spatial", choices=("center_crop", "squash"), default=d.spatial,
                   help="center_crop: the evaluation transform's crop; squash: whole frame resized (TAD script)")
    p.add_argument("--videos-per-shard", type=int, default=d.videos_per_shard)
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/videos")
    return p


def main(argv: Sequence[str]) -> int:
    from tgmae.commands.args import load_run_config, parse_args
    from tgmae.config import ConfigError
    from tgmae.distributed import resolve_device
    from tgmae.lifetime import local_rank
    from tgmae.evaluate.extract import ExtractSpec, extract_dataset
    from tgmae.train.precision import resolve_precision

    args = parse_args(build_parser(), argv)
    cfg, given = load_run_config("extract", args.config, args.overrides)
    from tgmae.evaluate.multiview import with_run_settings

    cfg = with_run_settings(cfg, given, "read")  # data keys left unset: model.pretrained's run's (the spec reads them)
    # `is None`, not `or`: 0 is the user's value (refused by ExtractSpec), not a request for the default
    step = args.frame_step if args.frame_step is not None else (1 if args.mode == "windows" else cfg.data.frame_stride)
    precision = resolve_precision(cfg.train.precision, resolve_device(cfg.train.device, local_rank()))
    try:
        spec = ExtractSpec(mode=args.mode, output=args.output, window=cfg.data.num_frames if args.window is None else args.window,
                           stride=args.stride, frame_step=step, image_size=cfg.data.image_size,
                           spatial=args.spatial, mean=tuple(cfg.data.mean), std=tuple(cfg.data.std),
                           videos_per_shard=args.videos_per_shard, batch_size=cfg.train.batch_size,
                           precision=precision, sampling=cfg.data.sampling)  # clip mode: the dataset's clip
    except ValueError as e:  # "name=value: why"; the name as the user wrote it
        name = str(e).split("=")[0]
        raise ConfigError(f"{SPEC_SETTINGS.get(name, name)}: {e}") from None
    subsets = ("train", "val") if args.subset == "both" else (args.subset,)
    summary, index = extract_dataset(cfg, args.out, spec, subsets, names=SPEC_SETTINGS, given=given)
    if index is None:  # another torchrun rank: rank 0 prints the folder's totals
        return 0
    new = f" ({len(summary.unreadable_new)} new)" if summary.skipped else ""  # a rerun: the folder's, of which new
    say(f"shards written {len(summary.written)}, already done {len(summary.skipped)}, "
          f"unreadable videos {len(summary.unreadable)}{new}")
    say(f"index: {index}")
    return 0
