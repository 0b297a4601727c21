"""`tgmae visualize masks`: Figure-1-style grid of masking algorithms on one clip (`tgmae.viz.masks`).

    tgmae visualize masks --root SYNTH_DIR [--video-id ID] [--clip CLIP_DIR] --out masks.png
    tgmae visualize masks --video clip.mp4 --caption "a man ..." --clip CLIP --out masks.png
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from tgmae.viz.masks import synthetic_figure, video_figure


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tgmae visualize masks",
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
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true",
                   help="--root with --clip: empty the similarity cache and build it anew")
    args = p.parse_args(list(argv))
    if args.ratio is not None and not 0 < args.ratio < 1:
        print("tgmae visualize masks: --ratio must be in (0, 1)", file=sys.stderr)
        return 2
    common = dict(clip_model=args.clip, ratio=args.ratio, mode=args.mode, image_size=args.image_size,
                  num_frames=args.num_frames, frame_stride=args.frame_stride, columns=args.columns, seed=args.seed)
    if args.root:
        path = synthetic_figure(args.root, args.out, args.video_id, rebuild=args.rebuild, **common)
    else:
        if args.clip and not args.caption.strip():
            print("tgmae visualize masks: TGM on --video needs a non-empty --caption", file=sys.stderr)
            return 2
        path = video_figure(args.video, args.caption, args.out, **common)
    print(f"tgmae visualize masks: wrote {path}")
    return 0
