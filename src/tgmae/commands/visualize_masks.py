"""`tgmae visualize masks`: Figure-1-style grid of masking algorithms on one clip (`tgmae.viz.masks`).

    tgmae visualize masks --root SYNTH_DIR [--video-id ID] [--clip CLIP_DIR] --out masks.png
    tgmae visualize masks --video clip.mp4 --caption "a man ..." --clip CLIP --out masks.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from tgmae.locks import check_kind
from tgmae.viz.masks import synthetic_figure, video_figure
from tgmae.commands.args import Parser, say

TUBELET = 2  # the grid's frames per token slice (tgmae.viz.masks), as the paper's models
PATCH = 16  # the grid's default patch side in pixels (--patch-size), as the paper's models


def _wrong_argument(args: argparse.Namespace) -> str:
    """The one-line refusal of a flag's value that cannot make a figure, "" when all can."""
    from matplotlib.backend_bases import FigureCanvasBase

    if args.ratio is not None and not 0 < args.ratio < 1:
        return f"--ratio {args.ratio}: must be in (0, 1)"
    if args.num_frames < TUBELET or args.num_frames % TUBELET:
        return f"--num-frames {args.num_frames}: must be a positive multiple of {TUBELET} (frames per token slice)"
    if args.patch_size < 1:
        return f"--patch-size {args.patch_size}: must be >= 1"
    if args.image_size < args.patch_size or args.image_size % args.patch_size:
        return (f"--image-size {args.image_size}: must be a positive multiple of --patch-size {args.patch_size} "
                "(the patch side)")
    if args.frame_stride < 1:
        return f"--frame-stride {args.frame_stride}: must be >= 1"
    if args.columns < 1:
        return f"--columns {args.columns}: must be >= 1"
    if Path(args.out).is_file() and not args.overwrite:
        # a figure of other settings (or a user's file) is never replaced unasked (issue 28)
        return f"--out {args.out} exists; pass --overwrite to replace it"
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(args.out).suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        return f"--out {args.out}: the image format {suffix!r} is not one of {', '.join(sorted(formats))}"
    return ""


def main(argv: Sequence[str]) -> int:
    p = Parser(prog="tgmae visualize masks",
               description="Figure-1-style grid of masking algorithms on a clip.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="synthetic set (`tgmae synth`): uses its captions and object masks")
    src.add_argument("--video", help="any video file (needs --caption for TGM)")
    p.add_argument("--video-id", default=None, help="synthetic video id (default: the first val, else train, video)")
    p.add_argument("--caption", default="", help="caption for --video")
    p.add_argument("--clip", default=None, help="CLIP for the TGM rows (name or directory)")
    p.add_argument("--mode", choices=("faithful", "dense"), default="faithful")
    p.add_argument("--ratio", type=float, default=None, help="one ratio for all rows (default: each paper ratio)")
    p.add_argument("--out", default="masks.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=PATCH, help="the grid's patch side in pixels (a similarity "
                   "cache made at another one, e.g. by eval-masks --patch-size, is refused naming it)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true",
                   help="--root with --clip: empty the similarity cache and build it anew")
    args = p.parse_args(list(argv))
    wrong = _wrong_argument(args)
    if wrong:
        print(f"tgmae visualize masks: {wrong}", file=sys.stderr)
        return 2
    check_kind(args.out, "--out", folder=False)  # a folder there: one line, not a temp file's IsADirectoryError
    common = dict(clip_model=args.clip, ratio=args.ratio, mode=args.mode, image_size=args.image_size,
                  patch_size=args.patch_size, num_frames=args.num_frames, frame_stride=args.frame_stride,
                  columns=args.columns, seed=args.seed)
    if args.root:
        path = synthetic_figure(args.root, args.out, args.video_id, rebuild=args.rebuild, **common)
    else:
        if args.clip and not args.caption.strip():
            print("tgmae visualize masks: TGM on --video needs a non-empty --caption", file=sys.stderr)
            return 2
        path = video_figure(args.video, args.caption, args.out, **common)
    say(f"tgmae visualize masks: wrote {path}")
    return 0
