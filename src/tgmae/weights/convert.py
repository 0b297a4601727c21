"""Any VideoMAE checkpoint we read -> our safetensors (`tgmae convert SRC OUT.safetensors`).

What SRC holds decides what OUT is: a pretraining model -> our pretraining file, a classifier ->
our classifier file (class names from `id2label`), an encoder alone -> our encoder file. What
`tgmae export-hf` writes converts back bit for bit (the export keeps our arch as `tgmae_arch`, and
the fields a conversion assumed as `tgmae_assumed`, which stay recorded as assumed here).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from tgmae.errors import UserError
from tgmae.locks import run_around
from tgmae.weights.classifier import build_classifier, save_classifier
from tgmae.weights.files import CheckpointError, detect_format, refuse_unfinished_run, resolve_weights
from tgmae.weights.model_card import known_settings, recorded_run_id
from tgmae.weights.official import ARGS_FIELDS, OFFICIAL_OPTIONS, official_settings, read_official
from tgmae.weights.pretraining import (
    holds_decoder,
    load_pretraining,
    official_pretraining_model,
    save_encoder,
    save_pretraining_model,
)
from tgmae.weights.sources import check_stated_heads, load_encoder_source, official_encoder_source

log = logging.getLogger("tgmae")


class OutputFileError(FileExistsError, UserError):
    """The conversion's output file is its source or inside it, lies inside a run, or exists (without overwrite)."""


def check_output_file(out: str | Path, src: str | Path, overwrite: bool = False) -> None:
    """Refuse (`OutputFileError`, naming the file) an output that is the source (as given or as
    `resolve_weights` reads it) or lies inside the source folder (a transformers folder's
    model.safetensors), lies inside a run folder or step checkpoint (`locks.run_around`: its weights
    are the run's), all --overwrite or not, or exists without `overwrite`."""
    target = Path(out).resolve()
    for source in {Path(src).resolve(), resolve_weights(src).resolve()}:
        if target == source or source in target.parents:
            raise OutputFileError(f"{out}: {'is' if target == source else 'inside'} the checkpoint {src} being "
                                  "converted, which it would replace; give the output a file outside it")
    run = run_around(target.parent)
    if run is not None:
        raise OutputFileError(f"{out}: inside the run {run}, whose files a conversion would replace; "
                              "write the output outside the run")
    if target.exists() and not overwrite:
        raise OutputFileError(f"{out}: exists; give the output a new file, or --overwrite to replace it")


def check_stated_args(src: Any, args: dict[str, Any], overrides: dict[str, Any]) -> str:
    """Options for a .pth (num_frames, image_size, norm_pix_loss) that its training args
    (`official.official_args`) contradict: CheckpointError naming the option and the stored value.
    Returns what the args gave that no option did, for the summary ('' when nothing)."""
    for name, field in ARGS_FIELDS.items():
        if field in overrides and name in args and overrides[field] != args[name]:
            given = OFFICIAL_OPTIONS[field] + ("" if field == "norm_pix_loss" else f" {overrides[field]}")
            raise CheckpointError(f"{given}: {src}'s training args state {name}={args[name]}; leave the option out "
                                  "(the settings a .pth's args state are used)")
    used = [name for name, field in ARGS_FIELDS.items() if name in args and field not in overrides]
    return f" (from its training args: {', '.join(used)})" if used else ""


def convert(src: str | Path, out: str | Path, overwrite: bool = False, **overrides: Any) -> str:
    """Convert `src` into our file at `out`; returns a one-line description of what was written.

    overrides: VideoMAEArch fields for pretraining checkpoints that do not store them (official
    .pth: num_frames, image_size, num_heads, decoder_heads, norm_pix_loss; a .pth's training `args`
    give the first and the last, and an override they contradict is a CheckpointError). What none
    of them states is assumed (`_convert_official`); what ours or an export-hf folder records as
    assumed stays so in `out`, less what an option states; the clip settings its model was trained
    with (its run's, or recorded with it: `model_card.known_settings`) are recorded in `out`,
    with the frames and image size an option states, and a pretraining model's masking likewise
    (`model_card.known_settings`, re-trial 30B S3), and the run id it records as made from that
    run (`model_card.recorded_run_id`, re-trial 33B S1). Raises CheckpointError (a ConfigError for a
    missing head count) naming the file and the keys that do not fit; OutputFileError naming `out`
    when it is the source, lies inside a run, or exists without `overwrite`; CheckpointError for a
    run folder without its final weights (`files.refuse_unfinished_run`).
    """
    check_output_file(out, src, overwrite)
    refuse_unfinished_run(src, "convert")
    src = resolve_weights(src)  # checkpoints/latest, a step folder, a run folder -> its weights file (as finetune reads it)
    kind = detect_format(src)
    if kind == "official":
        return _convert_official(src, out, overrides)
    # Any layout but a .pth stores its head counts: a given value must agree, never be silently
    # replaced or ignored.
    stated = {k: overrides.pop(k) for k in ("num_heads", "decoder_heads") if k in overrides}
    geometry = {k: overrides[k] for k in ("num_frames", "image_size") if k in overrides}
    data = known_settings(src)[0]
    data = {**data, **geometry} if data else {}  # unknown stays unknown: not the geometry alone
    made_by = recorded_run_id(src)[0]  # a copy of a run's weights stays that run's, never the folder's it lands in
    # What the source records as assumed (ours, an export-hf folder) stays recorded, less what an
    # option now states; its reader has said it.
    if holds_decoder(src):
        model, assumed = load_pretraining(src, **overrides)
        check_stated_heads(src, model.arch, stated)
        save_pretraining_model(model, out, [k for k in assumed if k not in stated], data,
                               known_settings(src, "masking")[0], made_by)
        return _pretraining_summary(kind, model)
    source = load_encoder_source(src)  # no encoder: that is the fault
    _refuse_decoder_options(src, {**overrides, **stated})
    check_stated_heads(src, source.arch, stated)
    if geometry:
        source.arch = dataclasses.replace(source.arch, **geometry)
    return _save_encoder_source(kind, source, out, assumed=[k for k in source.assumed
                                                                    if k not in {**geometry, **stated}], data=data,
                                run_id=made_by)


def _convert_official(src: Path, out: str | Path, overrides: dict[str, Any]) -> str:
    """`convert` of an official .pth, read once (`read_official`: a ViT-g file is 4 GB). What its
    weights do not prove and neither its args nor `overrides` state is the released models'
    (`official.official_settings`): recorded in `out` as assumed and said in one warning naming the
    keys and their options."""
    state, args = read_official(src)
    from_args = check_stated_args(src, args, overrides)
    if "encoder_to_decoder.weight" in state:
        assumed = official_settings(state, args, overrides, src)[1]
        model = official_pretraining_model(state, args, src, **overrides)
        save_pretraining_model(model, out, assumed)
        arch, what = model.arch, _pretraining_summary("official", model, from_args)
    else:
        extra = {k: v for k, v in overrides.items() if k not in ("num_frames", "image_size", "num_heads")}
        source = official_encoder_source(state, args, src, **{k: v for k, v in overrides.items() if k not in extra})
        _refuse_decoder_options(src, extra)
        assumed, arch = source.assumed, source.arch
        what = _save_encoder_source("official", source, out, from_args, assumed)
    if assumed:
        log.warning("%s does not state %s: assumed the released models' %s, recorded in %s as assumed; if they are "
                    "not the model's, give %s", src, ", ".join(assumed),
                    ", ".join(f"{k}={getattr(arch, k)}" for k in assumed), out,
                    ", ".join(OFFICIAL_OPTIONS[k] for k in assumed))
    return what


def _refuse_decoder_options(src: Any, given: dict[str, Any]) -> None:
    unused = sorted(k for k in given if k in ("decoder_heads", "norm_pix_loss"))
    if unused:
        raise CheckpointError(f"{src}: holds no decoder, so {', '.join(unused)} do not apply")


def _pretraining_summary(kind: str, model: Any, from_args: str = "") -> str:
    a, n = model.arch, sum(p.numel() for p in model.parameters())
    return (f"{kind} -> tgmae pretraining model, {n / 1e6:.1f}M parameters, encoder {a.embed_dim}x{a.depth} "
            f"({a.num_heads} heads), decoder {a.decoder_dim}x{a.decoder_depth} ({a.decoder_heads} heads), "
            f"{a.num_frames} frames at {a.image_size}px, {'normalized' if a.norm_pix_loss else 'raw'}-pixel target"
            f"{from_args}")


def _save_encoder_source(kind: str, source: Any, out: str | Path, from_args: str = "",
                         assumed: list[str] | tuple = (), data: dict[str, Any] | None = None,
                         run_id: str | None = None) -> str:
    """Write `source` as our classifier (it has a head) or encoder file, with the arch fields
    `assumed`, the clip settings `data` and the run id it was made by (when known) recorded; the
    summary line."""
    a = source.arch
    if source.head:
        clf = build_classifier(source, keep_head=True)
        save_classifier(clf, out, source.class_names, assumed, data, run_id)
        return (f"{kind} -> tgmae classifier, {clf.num_classes} classes, encoder {a.embed_dim}x{a.depth}, "
                f"{a.num_frames} frames at {a.image_size}px{from_args}")
    save_encoder(source.build_encoder(), out, assumed, data, run_id)
    return (f"{kind} -> tgmae encoder, {a.embed_dim}x{a.depth} ({a.num_heads} heads), {a.num_frames} frames at "
            f"{a.image_size}px{from_args}")
