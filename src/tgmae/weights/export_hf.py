"""Export to transformers (`tgmae export-hf CKPT OUT_DIR [--classifier | --pretraining]`).

- default: a `VideoMAEModel` whose `last_hidden_state` equals our encoder's output (its final
  norm as HF's `layernorm`, `use_mean_pooling=False`; an encoder without one: True);
- `--classifier`: `VideoMAEForVideoClassification` (mean pooling + `fc_norm`, `classifier` = our
  head), `id2label` from the stored class names;
- `--pretraining`: `VideoMAEForPreTraining`, whose `logits` and `loss` equal our `pred` and `loss`.
Beside the weights: `preprocessor_config.json` (our single-view evaluation transform) and a model
card (`weights.model_card`). The folder is loaded back and compared with our model on a random
clip (max abs difference <= TOLERANCE). The fields a conversion assumed (`official.ASSUMED_META`)
are recorded in config.json and the card, and warned of. It is written in a temp folder beside
OUT_DIR, then moved into place: a failed export leaves OUT_DIR as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import nn

from tgmae.errors import UserError
from tgmae.locks import RUN_MARKERS, run_around
from tgmae.models.arch import VideoMAEArch
from tgmae.models.classifier import VideoClassifier
from tgmae.models.encoder import VideoViTEncoder
from tgmae.models.pretrainer import VideoMAEPretrainer
from tgmae.weights.classifier import build_classifier
from tgmae.weights.files import (
    CheckpointError,
    detect_format,
    refuse_unfinished_run,
    require_checkpoint,
    resolve_checkpoint,
)
from tgmae.weights.layouts import fill_key_biases, hf_config, ours_to_hf, released_normalization
from tgmae.weights.model_card import (
    EXPORT_DATA_KEY,
    EXPORT_MASK_KEY,
    EXPORT_RUN_ID_KEY,
    known_settings,
    read_run,
    recorded_run_id,
    render_card,
)
from tgmae.weights.official import ASSUMED_HF_KEY, OFFICIAL_OPTIONS
from tgmae.weights.pretraining import load_pretraining
from tgmae.weights.sources import check_stated_heads, load_encoder_source

log = logging.getLogger("tgmae")

TOLERANCE = 1e-4


class ExportMismatchError(RuntimeError, UserError):
    """The exported directory, loaded back into transformers, does not reproduce our model."""


class OutputFolderError(FileExistsError, UserError):
    """The export's output folder holds a run, or other files the export would overwrite."""


def check_output_folder(out_dir: str | os.PathLike, checkpoint: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse (`OutputFolderError`, naming the folder) an output folder that is or holds the
    checkpoint, holds a run (`RUN_MARKERS`) or lies inside one (`locks.run_around`), or any other
    non-empty folder without `overwrite`."""
    out, ckpt = Path(out_dir).resolve(), Path(checkpoint).resolve()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out_dir}: exists and is not a folder (give the export a new folder)")
    if out == ckpt or out in ckpt.parents:
        raise OutputFolderError(f"{out_dir}: holds the checkpoint {checkpoint} being exported; give the export "
                                "a folder of its own")
    run = [m for m in RUN_MARKERS if out.is_dir() and (out / m).exists()]
    if run:
        raise OutputFolderError(f"{out_dir}: holds a run ({', '.join(run)}), which an export would overwrite; "
                                "give the export a folder of its own")
    above = run_around(out.parent)
    if above is not None:
        raise OutputFolderError(f"{out_dir}: inside the run {above}, whose layout an export would break; "
                                "give the export a folder outside the run")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise OutputFolderError(f"{out_dir}: not empty; give the export a new folder, or --overwrite to "
                                "replace the files an export writes there")


@dataclass
class ExportResult:
    out_dir: Path
    hf_class: str
    max_abs_diff: Optional[float]  # None when not verified


def _hf_encoder_state(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder state dict -> HF names under `videomae.` (`ours_to_hf`)."""
    return ours_to_hf({f"encoder.{k}": v for k, v in encoder_state.items()})


HF_FC_NORM_EPS = 1e-5  # VideoMAEForVideoClassification's fc_norm: a default nn.LayerNorm, no config field


def hf_model(module: nn.Module, class_names: Sequence[str] = (), hf_fc_norm_eps: bool = False) -> nn.Module:
    """An in-memory transformers model with the weights of `module`: a VideoViTEncoder ->
    VideoMAEModel, a VideoClassifier -> VideoMAEForVideoClassification, a VideoMAEPretrainer ->
    VideoMAEForPreTraining. A classifier whose fc_norm eps is not HF's (`HF_FC_NORM_EPS`; VideoMAE /
    VideoMAEv2 classifiers use 1e-6) is a CheckpointError unless `hf_fc_norm_eps` accepts HF's
    (the export's reload check then bounds the difference that makes)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

    if isinstance(module, VideoMAEPretrainer):
        model = VideoMAEForPreTraining(VideoMAEConfig(**hf_config(module.arch)))
        state = ours_to_hf(module.state_dict())
    elif isinstance(module, VideoClassifier):
        if module.arch.encoder_norm:
            raise CheckpointError("a classifier whose encoder keeps its final norm has no HF counterpart")
        if abs(module.fc_norm.eps - HF_FC_NORM_EPS) > 1e-12 and not hf_fc_norm_eps:
            raise CheckpointError(
                f"HF's fc_norm eps is fixed at {HF_FC_NORM_EPS}; this classifier uses {module.fc_norm.eps}: add "
                "--hf-fc-norm-eps to export it with HF's (checked against our logits like every export), or keep "
                "using the tgmae classifier file (tgmae evaluate / finetune read it as it is)")
        names = list(class_names) if len(class_names) == module.num_classes else [f"class_{i}" for i in range(module.num_classes)]
        config = VideoMAEConfig(**{**hf_config(module.arch), "use_mean_pooling": True}, num_labels=module.num_classes,
                                id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        model = VideoMAEForVideoClassification(config)
        state = _hf_encoder_state(module.encoder.state_dict())
        state.update({f"fc_norm.{k}": v for k, v in module.fc_norm.state_dict().items()})
        state.update({f"classifier.{k}": v for k, v in module.head.state_dict().items()})
    elif isinstance(module, VideoViTEncoder):
        model = VideoMAEModel(VideoMAEConfig(**hf_config(module.arch)))
        state = {k[len("videomae."):]: v for k, v in _hf_encoder_state(module.state_dict()).items()}
    else:
        raise TypeError(f"cannot export {type(module).__name__}: expected VideoViTEncoder, VideoClassifier "
                        "or VideoMAEPretrainer")
    own = model.state_dict()
    state = fill_key_biases(state, own)
    missing = sorted(k for k in own if k not in state and "position_embeddings" not in k)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"HF layout mismatch: missing {missing[:6]}, unexpected {unexpected[:6]}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def hf_target_matches(arch: VideoMAEArch) -> bool:
    """Whether HF's pretraining loss equals ours: HF un-normalizes 3-channel input with the
    ImageNet statistics (others not at all) before building the target; ours uses the arch's
    mean/std. With `norm_pix_loss` the per-patch normalization cancels any per-channel affine map
    (up to its 1e-6 guard), so only raw-pixel targets with other statistics differ."""
    hf_mean, hf_std = released_normalization(arch.in_chans)
    return arch.norm_pix_loss or (tuple(arch.pixel_mean) == tuple(hf_mean) and tuple(arch.pixel_std) == tuple(hf_std))


@torch.no_grad()
def compare_with_hf(ours: nn.Module, hf_dir: str | Path, seed: int = 0) -> float:
    """Max |ours - HF| on one random clip: encoder output vs last_hidden_state, logits, or (a
    pretraining model, 75% of the tokens masked) the prediction and, when the targets agree
    (`hf_target_matches`), the loss."""
    from transformers import VideoMAEForPreTraining, VideoMAEForVideoClassification, VideoMAEModel

    arch = ours.arch
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(1, arch.in_chans, arch.num_frames, arch.image_size, arch.image_size, generator=g)
    hf_input = video.permute(0, 2, 1, 3, 4)  # HF: [B, T, C, H, W]
    ours = ours.eval().float()
    if isinstance(ours, VideoMAEPretrainer):
        n = arch.num_tokens
        mask = torch.zeros(1, n, dtype=torch.bool)
        mask[0, torch.randperm(n, generator=g)[: max(1, (3 * n) // 4)]] = True
        ref = ours(video, mask)
        hf = VideoMAEForPreTraining.from_pretrained(str(hf_dir)).eval()(pixel_values=hf_input, bool_masked_pos=mask)
        diff = float((ref.pred - hf.logits).abs().max())
        return max(diff, float((ref.loss - hf.loss).abs())) if hf_target_matches(arch) else diff
    if isinstance(ours, VideoClassifier):
        ref = ours(video)
        got = VideoMAEForVideoClassification.from_pretrained(str(hf_dir)).eval()(pixel_values=hf_input).logits
    else:
        ref = ours(video)
        got = VideoMAEModel.from_pretrained(str(hf_dir)).eval()(pixel_values=hf_input).last_hidden_state
    return float((ref - got).abs().max())


def processor_settings(arch: VideoMAEArch, data: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(mean, std, frame stride) the model expects: those of the clip settings it was trained with
    (`data`, `model_card.known_settings`) when known, else the arch's normalization and stride 1."""
    return (tuple(data.get("mean", arch.pixel_mean)), tuple(data.get("std", arch.pixel_std)),
            int(data.get("frame_stride", 1)))


def record_settings(config_json: Path, data: dict[str, Any], assumed: Sequence[str] = (),
                    masking: Optional[dict[str, Any]] = None, run_id: Optional[str] = None) -> None:
    """Add to the export's config.json what HF's fields cannot say (transformers keeps an unknown key
    as an attribute and uses none of it): the clip settings the model was trained with (`data`: its
    run's, or those its file records, `model_card.known_settings`; when known) under
    EXPORT_DATA_KEY, at which `tgmae evaluate` of the export tests it; a pretraining model's masking
    (`masking`, `model_card.RUN_MASK_KEYS`; when known) under EXPORT_MASK_KEY, under which `tgmae
    visualize recon` of the folder draws (re-trial 30B S3); the arch
    fields assumed, not known (`official.ASSUMED_HF_KEY`), which `tgmae convert` of the folder and
    every reader of it keep and warn of (`official.hf_assumed_meta`); the id of the run its weights
    were made by (`run_id`, `model_card.recorded_run_id`; when recorded) under EXPORT_RUN_ID_KEY, which
    `tgmae convert` of the folder keeps (re-trial 33B S1)."""
    from tgmae.atomic import atomic_write_text

    extra = {**({EXPORT_DATA_KEY: data} if data else {}),
             **({EXPORT_MASK_KEY: masking} if masking else {}),
             **({EXPORT_RUN_ID_KEY: run_id} if run_id else {}),
             **({ASSUMED_HF_KEY: list(assumed)} if assumed else {})}
    if extra:
        config = json.loads(config_json.read_text())
        atomic_write_text(config_json, json.dumps({**config, **extra}, indent=2) + "\n")


def write_processor_config(out: Path, arch: VideoMAEArch, mean: Sequence[float], std: Sequence[float]) -> None:
    """preprocessor_config.json: `VideoMAEImageProcessor` doing what our single-view evaluation
    does (`data.transforms.EvalTransform`): short side -> image_size (bilinear, antialiased),
    centre square crop, x / 255, (x - mean) / std."""
    from transformers import VideoMAEImageProcessor

    side = arch.image_size
    VideoMAEImageProcessor(
        do_resize=True, size={"shortest_edge": side}, resample=2,  # PIL.Image.BILINEAR
        do_center_crop=True, crop_size={"height": side, "width": side},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[float(m) for m in mean], image_std=[float(v) for v in std],
    ).save_pretrained(str(out))


class ExportSource(NamedTuple):
    """What `export_hf` writes: the model, its kind (encoder | classifier | pretraining), its class
    names, and the arch fields assumed, not known (`official.ASSUMED_META`; the encoder's for an
    encoder or classifier)."""

    module: nn.Module
    kind: str
    class_names: list[str]
    assumed: list[str]


def export_source(checkpoint: str | os.PathLike, classifier: bool = False, pretraining: bool = False,
                  num_heads: Optional[int] = None, decoder_heads: Optional[int] = None) -> ExportSource:
    """The model `export_hf` writes for `checkpoint` (ours / official / HF, a training step folder
    or a run folder), in eval mode. Head counts: `_heads_for`; --decoder-heads without
    `pretraining` is a CheckpointError."""
    build, stated = _heads_for(checkpoint, num_heads, decoder_heads)
    if pretraining:
        p = resolve_checkpoint(checkpoint)
        if p.is_dir() and not (p / "config.json").is_file() and (p / "model.safetensors").is_file():
            p = p / "model.safetensors"  # a run folder
        model, assumed = load_pretraining(p, **build)
        check_stated_heads(checkpoint, model.arch, stated)
        return ExportSource(model.eval(), "pretraining", [], [k for k in assumed if k not in stated])
    if "decoder_heads" in {**build, **stated}:
        raise CheckpointError("--decoder-heads applies to --pretraining exports only (the others hold no decoder)")
    src = load_encoder_source(checkpoint, num_heads=build.get("num_heads"))
    check_stated_heads(checkpoint, src.arch, stated)
    assumed = [k for k in src.assumed if k not in stated]
    if classifier:
        return ExportSource(build_classifier(src, keep_head=True).eval(), "classifier", list(src.class_names), assumed)
    return ExportSource(src.build_encoder(), "encoder", [], assumed)


# weight files of a transformers directory: those an earlier export left in an --overwrite'd
# folder and this one did not write would be read with (or instead of) the new ones
_WEIGHT_FILES = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                 "pytorch_model.bin.index.json")


def _move_into_place(work: Path, out: Path) -> None:
    """The finished export `work` becomes `out`: renamed when `out` is missing or empty, else
    (--overwrite) its files replace theirs one by one and an earlier export's other weight files go."""
    if not os.path.lexists(out) or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        os.replace(work, out)  # rename(2) replaces an empty folder
        return
    new = {p.relative_to(work) for p in work.rglob("*") if p.is_file()}
    for pattern in _WEIGHT_FILES:
        for old in out.glob(pattern):
            if old.is_file() and old.relative_to(out) not in new:
                old.unlink()
    for rel in sorted(new):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / rel, out / rel)


def _heads_for(checkpoint: str | os.PathLike, num_heads: Optional[int], decoder_heads: Optional[int]
               ) -> tuple[dict[str, int], dict[str, int]]:
    """(head counts to build with, head counts to check against the stored ones): an official
    .pth takes them (it stores none); any other layout stores them, so given ones must agree."""
    given = {k: v for k, v in (("num_heads", num_heads), ("decoder_heads", decoder_heads)) if v is not None}
    p = resolve_checkpoint(checkpoint)
    official = p.is_file() and detect_format(p) == "official"
    return (given, {}) if official else ({}, given)


def _check_line(kind: str, module: nn.Module, diff: Optional[float]) -> str:
    """The model card's sentence on the reload check (`compare_with_hf`'s max difference `diff`,
    None under --no-verify), and on an fc_norm eps replaced by HF's (`hf_model`'s hf_fc_norm_eps)."""
    if diff is None:
        check = "Not verified after writing (--no-verify)."
    else:
        what = {"pretraining": "prediction" + (" and loss" if hf_target_matches(module.arch) else
                                                 " (HF's loss un-normalizes with ImageNet statistics, this run's "
                                                 "raw-pixel target does not: the losses differ)"),
                "classifier": "logits", "encoder": "last_hidden_state"}[kind]
        check = f"Reloaded with `from_pretrained`, its {what} matched ours on a random clip to {diff:.1e}."
    eps = getattr(getattr(module, "fc_norm", None), "eps", HF_FC_NORM_EPS)
    if abs(eps - HF_FC_NORM_EPS) > 1e-12:  # only with hf_fc_norm_eps: hf_model refuses it otherwise
        check += f" Its fc_norm uses HF's eps {HF_FC_NORM_EPS}, the tgmae classifier {eps} (--hf-fc-norm-eps)."
    return check


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, classifier: bool = False,
              verify: bool = True, pretraining: bool = False, num_heads: Optional[int] = None,
              decoder_heads: Optional[int] = None, overwrite: bool = False,
              hf_fc_norm_eps: bool = False) -> ExportResult:
    """Write an HF directory for `checkpoint` (see the module doc); returns where and the check.
    num_heads / decoder_heads: for an official .pth (which does not store them); for any other
    checkpoint they must equal the stored counts (CheckpointError). out_dir: a new or empty
    folder, or (overwrite) one without a run in it (`check_output_folder`). A run folder without its
    final weights is a CheckpointError naming its newest step (`files.refuse_unfinished_run`).
    hf_fc_norm_eps: a classifier whose fc_norm eps differs from HF's fixed 1e-5 is exported with HF's
    (`hf_model`; the model card says so); without it such a classifier is refused."""
    from tgmae import __version__
    from tgmae.hub import quiet_transformers

    if classifier and pretraining:
        raise ValueError("choose one of classifier / pretraining")
    if hf_fc_norm_eps and not classifier:
        raise CheckpointError("--hf-fc-norm-eps applies to --classifier exports only (the others have no fc_norm)")
    require_checkpoint(checkpoint)
    check_output_folder(out_dir, checkpoint, overwrite)
    refuse_unfinished_run(checkpoint, "export")
    module, kind, names, assumed = export_source(checkpoint, classifier, pretraining, num_heads, decoder_heads)
    run = read_run(checkpoint)
    data = known_settings(checkpoint)[0]  # the run's, else those the file records
    # the masking of a model that masks only (a finetune run's masking section is not its classifier's)
    masking = known_settings(checkpoint, "masking")[0] if kind == "pretraining" else {}
    mean, std, stride = processor_settings(module.arch, data)
    out = Path(out_dir)
    from transformers.utils import logging as hf_logging

    from tgmae.atomic import atomic_write_text, open_mode, remove_stale_temps, temp_path, write_failure

    remove_stale_temps(out.parent)  # of exports killed before their move
    work = temp_path(out)  # the export is written here, then moved into place: a failure leaves no partial OUT
    restore = quiet_transformers()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        model = hf_model(module, names, hf_fc_norm_eps)
        model.save_pretrained(str(work))
        record_settings(work / "config.json", data, assumed, masking, recorded_run_id(checkpoint)[0])
        write_processor_config(work, module.arch, mean, std)
        diff = compare_with_hf(module, work) if verify else None
        if diff is not None and diff > TOLERANCE:
            raise ExportMismatchError(f"exported model differs from ours by {diff:.2e} (> {TOLERANCE}) on a random clip")
        hf_class = type(model).__name__
        check = _check_line(kind, module, diff)
        card = render_card(kind=kind, hf_class=hf_class, arch=module.arch, checkpoint=str(checkpoint), run=run,
                           mean=mean, std=std, frame_stride=stride, class_names=names, check=check,
                           version=__version__, assumed=assumed)
        atomic_write_text(work / "README.md", card)
        open_mode(work)  # safetensors (save_pretrained) makes 0600 files: the mode open() gives, as the others
        _move_into_place(work, out)
    except Exception as e:
        failure = write_failure(e, out)  # before the clean-up: a full disk is told by its free space
        if failure is None:
            raise
        raise failure from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
        restore()
        if bars:
            hf_logging.enable_progress_bar()
    if assumed:  # said once the folder holds it: a failed export records nothing
        log.warning("%s: %s were assumed, not read from the weights (the official VideoMAE .pth they come from "
                    "does not state them); recorded as such in its config.json (%s) and model card; if they are not "
                    "the model's, give them when converting that .pth (tgmae convert %s)", out,
                    ", ".join(f"{k}={getattr(module.arch, k)}" for k in assumed), ASSUMED_HF_KEY,
                    ", ".join(OFFICIAL_OPTIONS[k] for k in assumed))
    return ExportResult(out, hf_class, diff)
