"""`tgmae convert SRC OUT.safetensors`: any VideoMAE checkpoint we read -> our safetensors
(`tgmae.weights.convert`)."""

from __future__ import annotations

from typing import Any, Sequence
from tgmae.commands.args import Parser, say


def main(argv: Sequence[str]) -> int:
    from tgmae.weights.convert import convert

    parser = Parser(prog="tgmae convert", description=__doc__)
    parser.add_argument("src", help="checkpoint: .pth file, HF directory, or tgmae .safetensors")
    parser.add_argument("out", help="output .safetensors path")
    parser.add_argument("--num-frames", type=int, help="clip length (official .pth: its training args' num_frames, else 16, recorded as assumed)")
    parser.add_argument("--image-size", type=int, help="input side (official .pth: its training args' input_size, else 224, recorded as assumed)")
    parser.add_argument("--num-heads", type=int, help="encoder heads (official .pth: the released model's of its width, recorded as assumed)")
    parser.add_argument("--decoder-heads", type=int, help="decoder heads (official .pth: the released model's of its width, recorded as assumed)")
    parser.add_argument("--no-norm-pix-loss", action="store_true",
                        help="the model was trained on raw pixels, not per-patch normalized ones (official .pth: its training args' normlize_target, else normalized)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT (never the checkpoint itself or a file inside a run)")
    args = parser.parse_args(list(argv))
    overrides: dict[str, Any] = {f: getattr(args, f) for f in ("num_frames", "image_size", "num_heads", "decoder_heads")
                                 if getattr(args, f) is not None}
    if args.no_norm_pix_loss:
        overrides["norm_pix_loss"] = False
    if not args.out.endswith(".safetensors"):
        parser.error(f"OUT must end in .safetensors, got {args.out!r}")
    what = convert(args.src, args.out, overwrite=args.overwrite, **overrides)
    say(f"wrote {args.out}: {what}")
    return 0
