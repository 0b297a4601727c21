"""`tgmae eval-masks --root SYNTH_DIR [--clip CLIP_DIR] [--out results.json]`: precision / recall of
each masking algorithm against the synthetic set's object masks (`tgmae.masking.quality`)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from tgmae.atomic import atomic_write_text, check_writable
from tgmae.errors import count
from tgmae.masking.quality import evaluate_masks, format_table, is_quality_results, similarity_cache_dir
from tgmae.commands.args import Parser, say

log = logging.getLogger(__name__)


def folders_read(root: Path, clip: Optional[str], mode: str, cache: Optional[str]) -> list[tuple[Path, str]]:
    """The folders eval-masks reads or writes, each with the flag naming it: the set's masks/ and
    videos/, a local --clip folder and the similarity cache. A report file inside one would break
    the set, the CLIP model (its config.json) or the cache (a file it does not know)."""
    folders = [(root / "masks", "--root"), (root / "videos", "--root")]
    if clip and Path(clip).is_dir():  # a hub name is no folder of the user's
        folders.append((Path(clip), "--clip"))
    cache = similarity_cache_dir(root, clip, mode, cache)
    if cache:
        folders.append((Path(cache), "--cache"))
    return folders


def main(argv: Sequence[str]) -> int:
    p = Parser(
        prog="tgmae eval-masks",
        description="Precision / recall of masking algorithms on the synthetic set's object masks.",
    )
    p.add_argument("--root", required=True, help="synthetic set directory (`tgmae synth`)")
    p.add_argument("--clip", default=None, help="CLIP directory or name for TGM (e.g. from `tgmae train-clip`)")
    p.add_argument("--out", default=None, help="write {algorithm: {precision, recall, ratio}} JSON here")
    p.add_argument("--ratio", type=float, default=0.3, help="mask ratio for every algorithm")
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not an earlier result")
    p.add_argument("--paper-ratios", action="store_true", help="each algorithm at its paper ratio instead")
    p.add_argument("--split", default="val")
    p.add_argument("--mode", choices=("faithful", "dense"), default="faithful", help="TGM similarity maps")
    p.add_argument("--cache", default=None, help="similarity cache dir (default ROOT/mask_cache/<clip>-<mode>)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--image-size", type=int, default=224, help="the video model's input side")
    p.add_argument("--patch-size", type=int, default=16, help="the video model's patch side (its token grid)")
    p.add_argument("--cache-stride", type=int, default=2, help="similarity map every N source frames")
    p.add_argument("--augment", action="store_true", help="multi-scale crop + flip as in pretraining")
    p.add_argument("--min-cover", type=float, default=0.5, help="object pixel fraction making a token 'on the object'")
    p.add_argument("--max-videos", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rebuild", action="store_true", help="empty the similarity cache (--cache) and build it anew")
    args = p.parse_args(list(argv))
    root = Path(args.root)
    if not (root / "masks").is_dir() or not (root / "captions.jsonl").is_file():
        print(f"tgmae eval-masks: {root} is not a synthetic set (needs masks/ and captions.jsonl; `tgmae synth`)",
              file=sys.stderr)
        return 2
    if not 0 < args.ratio < 1:
        print("tgmae eval-masks: --ratio must be in (0, 1)", file=sys.stderr)
        return 2
    if args.patch_size < 1 or args.image_size % args.patch_size or args.image_size < args.patch_size:
        print("tgmae eval-masks: --image-size must be a whole number (>= 1) of --patch-size patches", file=sys.stderr)
        return 2
    if args.out:  # before the evaluation, not after it
        from tgmae.data.check import check_report_out

        check_report_out(args.out, str(root), str(root / "captions.jsonl"), args.overwrite, tool="tgmae eval-masks",
                         is_report=is_quality_results, inputs=[f for f in root.iterdir() if f.is_file()],
                         read_as="the synthetic set's caption file being read",
                         folders=folders_read(root, args.clip, args.mode, args.cache))
        check_writable(args.out, keep_new_folders=False)
    if not args.clip:
        log.warning("eval-masks: no --clip given: TGM rows need a CLIP (e.g. `tgmae train-clip`); skipping them")
    quality = evaluate_masks(
        root, args.clip, ratio=args.ratio, paper_ratios=args.paper_ratios, split=args.split,
        num_frames=args.num_frames, frame_stride=args.frame_stride, image_size=args.image_size,
        patch_size=args.patch_size,
        mode=args.mode, cache_dir=args.cache, augment=args.augment, min_cover=args.min_cover,
        max_videos=args.max_videos, seed=args.seed, cache_stride=args.cache_stride,
        progress=not args.no_progress, rebuild=args.rebuild,
    )
    left = quality.left_out
    say(f"eval-masks: {count(quality.videos, 'video')} of {args.root} ({args.split}), "
          f"{'augmented' if args.augment else 'full-frame'} clips of {args.num_frames} frames"
          + (f"; {len(left)} left out, no token with {args.min_cover:g} of its pixels on the object at "
             f"{args.image_size // args.patch_size} x {args.image_size // args.patch_size} tokens a frame "
             f"(--min-cover, --image-size, --patch-size)" if left else ""))
    say(format_table(quality))
    if args.out:
        atomic_write_text(args.out, json.dumps(quality.results, indent=2) + "\n")
    return 0
