"""Export to transformers: `tgmae export-hf CKPT OUT_DIR [--classifier]`.

- default: a `VideoMAEModel` directory whose `last_hidden_state` equals our encoder's output on
  all tokens (the pretrained encoder with its final norm: HF `use_mean_pooling=False`, so HF's
  `layernorm` carries it; an encoder without one exports with `use_mean_pooling=True`).
- `--classifier`: a finetuned classifier (`classifier.safetensors`, a finetune run or checkpoint)
  as `VideoMAEForVideoClassification` (mean pooling + `fc_norm`, `classifier` = our head), with
  `id2label` from the stored class names.
Weights are mapped with the models package's `ours_to_hf` (fused qkv -> query/key/value, q/v
biases, no key bias), the config with `hf_config` (eps, widths, geometry). After writing, the
directory is loaded back with `from_pretrained` and compared with our model on a random clip
(HF input order [B, T, C, H, W]); the max abs difference is printed and must be <= 1e-4.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from tgmae.evaluate.classifier import VideoClassifier, build_classifier
from tgmae.evaluate.sources import CheckpointError, EncoderSource, load_encoder_source
from tgmae.models.encoder import VideoViTEncoder
from tgmae.models.layouts import hf_config, ours_to_hf

TOLERANCE = 1e-4


@dataclass
class ExportResult:
    out_dir: Path
    hf_class: str
    max_abs_diff: Optional[float]  # None when not verified


def _encoder_from_source(src: EncoderSource) -> VideoViTEncoder:
    enc = VideoViTEncoder(src.arch)
    enc.load_state_dict(src.encoder)
    return enc.eval()


def _hf_encoder_state(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder state dict -> HF names under `videomae.` (via the models package's mapping)."""
    return ours_to_hf({f"encoder.{k}": v for k, v in encoder_state.items()})


def hf_model(module: nn.Module, class_names: Sequence[str] = ()) -> nn.Module:
    """An in-memory transformers model with the weights of `module`: a VideoViTEncoder ->
    VideoMAEModel, a VideoClassifier -> VideoMAEForVideoClassification."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

    if isinstance(module, VideoClassifier):
        if module.arch.encoder_norm:
            raise ValueError("a classifier whose encoder keeps its final norm has no HF counterpart")
        if abs(module.fc_norm.eps - 1e-5) > 1e-12:
            raise ValueError(f"HF's fc_norm eps is fixed at 1e-5; this classifier uses {module.fc_norm.eps}")
        kwargs = hf_config(module.arch)
        kwargs["use_mean_pooling"] = True
        names = list(class_names) if len(class_names) == module.num_classes else [f"class_{i}" for i in range(module.num_classes)]
        config = VideoMAEConfig(**kwargs, num_labels=module.num_classes,
                                id2label={i: n for i, n in enumerate(names)},
                                label2id={n: i for i, n in enumerate(names)})
        model = VideoMAEForVideoClassification(config)
        state = _hf_encoder_state(module.encoder.state_dict())
        state.update({f"fc_norm.{k}": v for k, v in module.fc_norm.state_dict().items()})
        state.update({f"classifier.{k}": v for k, v in module.head.state_dict().items()})
    elif isinstance(module, VideoViTEncoder):
        config = VideoMAEConfig(**hf_config(module.arch))
        model = VideoMAEModel(config)
        state = {k[len("videomae."):]: v for k, v in _hf_encoder_state(module.state_dict()).items()}
    else:
        raise TypeError(f"cannot export {type(module).__name__}: expected VideoViTEncoder or VideoClassifier")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and "position_embeddings" not in k)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"HF layout mismatch: missing {missing[:6]}, unexpected {unexpected[:6]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


@torch.no_grad()
def compare_with_hf(ours: nn.Module, hf_dir: str | Path, seed: int = 0) -> float:
    """Max |ours - HF| on one random clip: encoder output vs last_hidden_state, or logits."""
    from transformers import VideoMAEForVideoClassification, VideoMAEModel

    arch = ours.arch
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(1, arch.in_chans, arch.num_frames, arch.image_size, arch.image_size, generator=g)
    hf_input = video.permute(0, 2, 1, 3, 4)  # HF: [B, T, C, H, W]
    ours = ours.eval().float()
    if isinstance(ours, VideoClassifier):
        ref = ours(video)
        got = VideoMAEForVideoClassification.from_pretrained(str(hf_dir)).eval()(pixel_values=hf_input).logits
    else:
        ref = ours(video)
        got = VideoMAEModel.from_pretrained(str(hf_dir)).eval()(pixel_values=hf_input).last_hidden_state
    return float((ref - got).abs().max())


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, classifier: bool = False,
              verify: bool = True) -> ExportResult:
    """Write an HF directory for `checkpoint` (see the module doc); returns where and the check."""
    from tgmae.captions.hub import quiet_transformers

    src = load_encoder_source(checkpoint)
    if classifier:
        module: nn.Module = build_classifier(src, keep_head=True).eval()
        names = src.class_names
    else:
        module = _encoder_from_source(src)
        names = []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    restore = quiet_transformers()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = hf_model(module, names)
        model.save_pretrained(str(out))
        diff = compare_with_hf(module, out) if verify else None
    finally:
        restore()
        if bars:
            hf_logging.enable_progress_bar()
    if diff is not None and diff > TOLERANCE:
        raise RuntimeError(f"exported model differs from ours by {diff:.2e} (> {TOLERANCE}) on a random clip")
    return ExportResult(out, type(model).__name__, diff)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="tgmae export-hf", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="ours (.safetensors, run dir, checkpoint dir), official .pth or HF dir")
    parser.add_argument("out_dir", help="output directory (transformers save_pretrained layout)")
    parser.add_argument("--classifier", action="store_true",
                        help="export a finetuned classifier as VideoMAEForVideoClassification")
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    args = parser.parse_args(list(argv))
    try:
        res = export_hf(args.checkpoint, args.out_dir, classifier=args.classifier, verify=not args.no_verify)
    except (CheckpointError, ValueError) as e:  # bad input: exit 2, as every command
        parser.exit(2, f"tgmae export-hf: {e}\n")
    except RuntimeError as e:  # e.g. the exported model does not reproduce ours
        parser.exit(1, f"tgmae export-hf: {e}\n")
    check = "" if res.max_abs_diff is None else f" (max abs diff vs ours {res.max_abs_diff:.2e})"
    print(f"wrote {res.hf_class} to {res.out_dir}{check}")
    return 0


__all__ = ["export_hf", "hf_model", "compare_with_hf", "ExportResult", "TOLERANCE", "main"]
