"""`tgmae visualize {recon,attention,masks}`: paper Figure 3 for one clip of a dataset
(`tgmae.evaluate.visualize`; masks: `tgmae.commands.visualize_masks`, with its own arguments)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tgmae.commands.args import Parser, add_config_option, say


def _parser(kind: str, description: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"tgmae visualize {kind}", description=description)
    p.add_argument("checkpoint", help="model: ours (.safetensors / run / checkpoint dir), official .pth or HF dir")
    add_config_option(p, "YAML config: data annotations and what the checkpoint's run lacks "
                         "(its own masking, model and clip geometry come first; its "
                         "train.output_dir is not used)")
    p.add_argument("--index", type=int, default=0, help="dataset item to show")
    p.add_argument("--subset", default="val", choices=("train", "val"), help="annotations to read")
    p.add_argument("--video", help="a video file or frame folder instead of the dataset")
    p.add_argument("--out", help="output folder (default: figures/ in the checkpoint's run folder, the one "
                                 "holding its config.yaml, also for RUN/checkpoints/...; a checkpoint outside "
                                 "a run: figures/ beside it); the same for --index and --video")
    if kind == "recon":
        p.add_argument("--caption", help="the --video's caption, for a run masking with TGM")
    if kind == "attention":
        p.add_argument("--layer", type=int, default=-1, help="block whose attention is shown (-1 = last)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.image_size=112")
    return p


def _figures(kind: str, argv: Sequence[str]) -> int:
    from tgmae.commands.args import parse_args
    from tgmae.evaluate import visualize as lib

    args = parse_args(_parser(kind, lib.__doc__), argv)
    cfg = lib.figure_config(args.config, args.overrides, args.checkpoint)
    where = dict(index=args.index, subset=args.subset, video=args.video, out=args.out)
    if kind == "recon":
        figures = lib.recon_figures(cfg, args.checkpoint, caption=args.caption, **where)
    else:
        figures = lib.attention_maps(cfg, args.checkpoint, layer=args.layer, **where)
    for name, path in figures.items():
        say(f"{name}: {path}")
    return 0


TOOLS = ("recon", "attention", "masks")


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: tgmae visualize {recon,attention,masks} ...\n\n" + __doc__)
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind == "masks":
        from tgmae.commands import visualize_masks

        return int(visualize_masks.main(rest) or 0)
    if kind not in TOOLS:
        print(f"tgmae visualize: unknown figure {kind!r} (expected recon, attention or masks)", file=sys.stderr)
        return 2
    return _figures(kind, rest)
