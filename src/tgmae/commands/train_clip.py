"""`tgmae train-clip --root SYNTH_DIR --out DIR`: a small CLIP trained on the synthetic set
(`tgmae.study.clip.train`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tgmae.study.clip.train import ClipTrainConfig, train_clip
from tgmae.commands.args import Parser, say


def main(argv: Sequence[str]) -> int:
    parser = Parser(
        prog="tgmae train-clip",
        description="Train a small CLIP on a synthetic set (`tgmae synth`); saves a transformers CLIP directory.",
    )
    parser.add_argument("--root", required=True, help="synthetic set directory")
    parser.add_argument("--out", required=True, help="output directory (CLIPModel + tokenizer + processor)")
    defaults = ClipTrainConfig()
    for name in ("steps", "image_size", "patch_size", "width", "layers", "embed_dim", "videos_per_batch", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--dense-weight", type=float, default=defaults.dense_weight,
                        help="weight of the dense (MaskCLIP patch-token) loss; 0 = CLS pairs only")
    parser.add_argument("--motion-weight", type=float, default=defaults.motion_weight,
                        help="weight of the clip-caption loss through a motion tower, which makes the text "
                             "tower separate the actions; 0 = frame pairs only")
    parser.add_argument("--motion-frames", type=int, default=defaults.motion_frames)
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (never one holding a run or the synthetic set)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(argv))
    cfg = ClipTrainConfig(**{k: getattr(args, k) for k in (
        "steps", "image_size", "patch_size", "width", "layers", "embed_dim", "videos_per_batch", "seed", "lr",
        "dense_weight", "motion_weight", "motion_frames")})
    _check_grid(args.image_size, args.patch_size)
    if not (Path(args.root) / "captions.jsonl").is_file():
        parser.exit(2, f"tgmae train-clip: {args.root} has no captions.jsonl (make one with `tgmae synth`)\n")
    s = train_clip(args.root, args.out, cfg, progress=not args.no_progress, overwrite=args.overwrite)
    say(f"train-clip: {s['steps']} steps in {s['seconds']:.0f} s, final loss {s['final_loss']:.3f}, "
          f"val patch AUC {s['val_patch_auc']:.3f} (dense {s['val_patch_auc_dense']:.3f}) -> {args.out}")
    return 0


def _check_grid(image_size: int, patch_size: int) -> None:
    """Refuse (SettingsError, naming both flags) a patch that does not tile the image: the CLIP's
    patch grid and MaskCLIP's dense maps need image_size = k * patch_size, k >= 1. Without this,
    60 / 8 trained on a cropped grid and 32 / 64 or a 0 failed inside torch after set-up."""
    from tgmae.errors import SettingsError

    if patch_size < 1 or image_size < patch_size or image_size % patch_size:
        raise SettingsError(
            f"--image-size {image_size} --patch-size {patch_size}: the image side must be a whole number "
            f"(>= 1) of patches, and the patch side >= 1 (defaults: 64 and 8)")
