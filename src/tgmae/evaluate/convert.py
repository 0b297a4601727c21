"""`tgmae convert SRC OUT.safetensors`: any VideoMAE checkpoint we read -> our safetensors.

What SRC holds decides what OUT is:
- a pretraining model (official `.pth`, HF `VideoMAEForPreTraining` directory, ours) -> our
  pretraining file (`tgmae.models.save_pretraining_model`);
- a classifier (HF `VideoMAEForVideoClassification`, an official finetuned `.pth`, ours) -> our
  classifier file (`save_classifier`, class names from `id2label`);
- an encoder alone (HF `VideoMAEModel`, ours) -> our encoder file (`save_encoder`).
Every layout `tgmae export-hf` writes converts back to the file it was exported from, weights
bit for bit and the arch equal (the export stores our arch in config.json as `tgmae_arch`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

from tgmae.evaluate.classifier import build_classifier, save_classifier
from tgmae.evaluate.sources import check_stated_heads, load_encoder_source
from tgmae.models.encoder import VideoViTEncoder
from tgmae.models.interop import (
    CheckpointError,
    detect_format,
    holds_decoder,
    load_pretraining_model,
    resolve_checkpoint,
    save_encoder,
    save_pretraining_model,
)


def convert(src: str | Path, out: str | Path, **overrides: Any) -> str:
    """Convert `src` into our file at `out`; returns a one-line description of what was written.

    overrides: VideoMAEArch fields for pretraining checkpoints that do not store them (official
    .pth: num_frames, image_size, num_heads, decoder_heads, norm_pix_loss). Raises
    CheckpointError / ValueError naming the file and the keys that do not fit.
    """
    src = resolve_checkpoint(src)  # checkpoints/latest, a step folder -> its weights file
    kind = detect_format(src)
    # Head counts are options for a .pth only (it does not store them); any other layout stores
    # them, and a given value must agree, never be silently replaced or ignored.
    stated = {k: overrides.pop(k) for k in ("num_heads", "decoder_heads") if k in overrides} if kind != "official" else {}
    if holds_decoder(src):
        model = load_pretraining_model(src, **overrides)
        check_stated_heads(src, model.arch, stated)
        save_pretraining_model(model, out)
        a, n = model.arch, sum(p.numel() for p in model.parameters())
        return (f"{kind} -> tgmae pretraining model, {n / 1e6:.1f}M parameters, encoder {a.embed_dim}x{a.depth} "
                f"({a.num_heads} heads), decoder {a.decoder_dim}x{a.decoder_depth} ({a.decoder_heads} heads), "
                f"{a.num_frames} frames at {a.image_size}px")
    unused = sorted(k for k in {**overrides, **stated} if k in ("decoder_heads", "norm_pix_loss"))
    if unused:
        raise ValueError(f"{src}: holds no decoder, so {', '.join(unused)} do not apply")
    source = load_encoder_source(src, num_heads=overrides.get("num_heads"))
    check_stated_heads(src, source.arch, stated)
    geometry = {k: overrides[k] for k in ("num_frames", "image_size") if k in overrides}
    if geometry:
        source.arch = dataclasses.replace(source.arch, **geometry)
    a = source.arch
    if source.head:
        clf = build_classifier(source, keep_head=True)
        save_classifier(clf, out, source.class_names)
        return (f"{kind} -> tgmae classifier, {clf.num_classes} classes, encoder {a.embed_dim}x{a.depth}, "
                f"{a.num_frames} frames at {a.image_size}px")
    encoder = VideoViTEncoder(a)
    encoder.load_state_dict(source.encoder)
    save_encoder(encoder, out)
    return f"{kind} -> tgmae encoder, {a.embed_dim}x{a.depth} ({a.num_heads} heads), {a.num_frames} frames at {a.image_size}px"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tgmae convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint: .pth file, HF directory, or tgmae .safetensors")
    parser.add_argument("out", help="output .safetensors path")
    parser.add_argument("--num-frames", type=int, help="clip length (official .pth: default 16)")
    parser.add_argument("--image-size", type=int, help="input side (official .pth: default 224)")
    parser.add_argument("--num-heads", type=int, help="encoder heads (official .pth: released value)")
    parser.add_argument("--decoder-heads", type=int, help="decoder heads (official .pth: released value)")
    parser.add_argument("--no-norm-pix-loss", action="store_true",
                        help="the model was trained on raw pixels, not per-patch normalized ones")
    args = parser.parse_args(list(argv) if argv is not None else None)
    overrides: dict[str, Any] = {f: getattr(args, f) for f in ("num_frames", "image_size", "num_heads", "decoder_heads")
                                 if getattr(args, f) is not None}
    if args.no_norm_pix_loss:
        overrides["norm_pix_loss"] = False
    if not args.out.endswith(".safetensors"):
        parser.error(f"OUT must end in .safetensors, got {args.out!r}")
    try:
        what = convert(args.src, args.out, **overrides)
    except (CheckpointError, ValueError) as e:
        parser.exit(2, f"tgmae convert: {e}\n")
    print(f"wrote {args.out}: {what}")
    return 0


__all__ = ["convert", "main"]
