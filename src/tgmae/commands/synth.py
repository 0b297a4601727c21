"""`tgmae synth OUT_DIR [--num-videos N ...]`: write the synthetic captioned video set
(`tgmae.data.synthetic.generate_synthetic_dataset`; a bad setting is a `SettingsError`, exit 2)."""

from __future__ import annotations

import argparse
from typing import Sequence

from tgmae.data.synthetic.background import BACKGROUNDS, EXTRA_BACKGROUNDS
from tgmae.data.synthetic.generate import generate_synthetic_dataset
from tgmae.data.synthetic.scene import MAX_DISTRACTORS
from tgmae.locks import hold, refuse_inside_run
from tgmae.commands.args import Parser, say


def main(argv: Sequence[str]) -> int:
    parser = Parser(prog="tgmae synth", description="Write the synthetic captioned video set.")
    parser.add_argument("out_dir", help="output folder (created if missing)")
    parser.add_argument("--num-videos", type=int, default=300, help="number of videos (default 300)")
    parser.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels, even (default 128)")
    parser.add_argument("--fps", type=int, default=15, help="frames per second (default 15)")
    parser.add_argument("--gop", type=int, default=12, help="keyframe interval; the rest are P-frames (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share, stratified (default 0.2)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, 0 = all CPUs (default 1)")
    parser.add_argument("--distractors", type=int, default=MAX_DISTRACTORS,
                        help=f"at most this many distractor shapes, 0-{MAX_DISTRACTORS} (default {MAX_DISTRACTORS}: "
                             "the original, hardest set; 0 = learnable from scratch)")
    parser.add_argument("--distractor-speed", type=float, default=1.0,
                        help="distractor speed, 1 = original, 0 = static (default 1)")
    parser.add_argument("--static-camera", action="store_true",
                        help="the background neither scrolls nor shakes: identical over time wherever no object "
                             "covers it, so masked patches can be copied from other frames (the data on which "
                             "MAE learns more than patch means, docs/sanity.md (b)); default: a moving camera")
    parser.add_argument("--background", choices=BACKGROUNDS + EXTRA_BACKGROUNDS, default=None,
                        help="one background kind for every video (flat = one colour without grain); "
                             "default: drawn at random per video")
    parser.add_argument("--overwrite", action="store_true",
                        help="on a rerun, replace lists (train.csv, ...) that differ from the set's (edited); "
                             "default: such a list is kept and the run refused naming it")
    args = parser.parse_args(list(argv))
    every = max(1, args.num_videos // 10)

    def progress(done: int, total: int) -> None:
        if done % every == 0 or done == total:
            print(f"  {done}/{total} videos", flush=True)

    refuse_inside_run(args.out_dir, "OUT_DIR")  # before its lock file lands there
    with hold(args.out_dir, "OUT_DIR", folder=True):  # one writer per set folder
        info = _generate(args, progress)
    say(f"tgmae synth: {info.num_videos} videos ({info.num_train} train / {info.num_val} val), "
          f"{args.frames} frames at {args.size}x{args.size}, {args.fps} fps -> {info.root} in {info.seconds:.1f} s")
    width = max(len(c) for c in info.classes)
    for k, c in enumerate(info.classes):
        say(f"  {k:2d} {c:<{width}}  {info.class_counts[c]}")
    return 0


def _generate(args: argparse.Namespace, progress):
    return generate_synthetic_dataset(
        args.out_dir, num_videos=args.num_videos, frames=args.frames, size=args.size, fps=args.fps,
        seed=args.seed, val_fraction=args.val_fraction, gop=args.gop, workers=args.workers, progress=progress,
        distractors=args.distractors, distractor_speed=args.distractor_speed, background=args.background,
        static_camera=args.static_camera, overwrite=args.overwrite,
    )
