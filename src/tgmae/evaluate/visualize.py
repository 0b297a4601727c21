"""Paper Figure 3 for one clip (`tgmae visualize {recon,attention,masks}`).

recon: original / masked / reconstructed frames (PNG + GIF) under the run's mask generator;
attention: the encoder's attention of the centre patch, overlaid (any checkpoint with an
encoder); masks: `tgmae.viz.masks`. The clip is item `index` of `subset` (val, evaluation
transform) or `video` (never substituted: `VideoLoadError`). Outputs default to figures/ of the
checkpoint's run folder (`figures_folder`), named `KIND_CLIP-HASH` (`figure_name`: CLIP the video
id with '/' shown as `__`, a `--video` outside data.root its stem; HASH over the weights, the
settings and the clip's file, so other checkpoints or overrides never overwrite a figure). Settings
(`figure_config`): the checkpoint's own run config over `-c` (which supplies only what it lacks),
then overrides. TGM on a `--video` masks it by `--caption`, scored by `masking.clip_model`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from tgmae.atomic import write_failure
from tgmae.weights.model_card import RUN_DATA_KEYS

log = logging.getLogger("tgmae")


# what makes a run's figure, taken from the checkpoint's run over -c (whole sections, or these data keys)
RUN_SECTIONS = ("masking", "model", "captions", "contrastive")


def run_settings(checkpoint: str | Path, overridden: Sequence[str] = ()) -> tuple[dict, str]:
    """(the settings of the checkpoint's run as a nested dict of RUN_SECTIONS / RUN_DATA_KEYS,
    where they came from): its run folder's config.yaml; else what is stored with the weights:
    the model keys of their architecture (`checkpoint_model_keys`: an export-hf folder's
    `tgmae_arch`, our file's arch; preset, patch, tubelet, heads), the clip settings recorded
    with them (our file's metadata, an export-hf folder's `tgmae_data`: `recorded_settings`),
    else their frames and image size, and the masking recorded with them (`tgmae_masking`; none
    recorded: -c's or the default, said by `recon_figures`: re-trial 30B S3). A file in another run's
    folder is not that run's (`model_card.run_of`): its own records count (re-trial 32A S2).
    overridden: the dotted keys the overrides set; a recorded value the config refuses raises
    `RecordedSettingsError` naming its file and key, unless an override replaces it (re-trial 32A M2)."""
    from tgmae.config import to_dict
    from tgmae.weights.model_card import read_run, recorded_settings

    run = read_run(checkpoint)
    if run.config is not None:
        full = to_dict(run.config)
        settings = {k: full[k] for k in RUN_SECTIONS}
        settings["data"] = {k: full["data"][k] for k in RUN_DATA_KEYS}
        return settings, str(run.run_dir / "config.yaml")
    from tgmae.models.arch import checkpoint_model_keys
    from tgmae.weights.sources import load_encoder_source

    source = load_encoder_source(checkpoint)
    arch = source.arch  # a geometry a conversion assumed (`weights.official`) is a guess: -c's stands
    data = {**{k: getattr(arch, k) for k in ("num_frames", "image_size") if k not in source.assumed},
            **recorded_settings(checkpoint, "data", _overridden_keys(overridden, "data"))[0]}
    masking = recorded_settings(checkpoint, "masking", _overridden_keys(overridden, "masking"))[0]
    return ({"data": data, "model": checkpoint_model_keys(arch), **({"masking": masking} if masking else {})},
            f"the settings stored in {checkpoint}")


def _overridden_keys(overridden: Sequence[str], section: str) -> set[str]:
    """The keys of config `section` that the dotted keys `overridden` set (`section` itself: all)."""
    from tgmae.weights.model_card import RECORDED

    if section in overridden:
        return set(RECORDED[section][0])
    return {k.partition(".")[2] for k in overridden if k.startswith(f"{section}.")}


def figure_config(config: Optional[str], overrides: Sequence[str], checkpoint: str | Path):
    """The RunConfig of a figure of `checkpoint`: defaults < `config` (-c) < the checkpoint's run
    (`run_settings`) < `overrides`; without -c the run's whole data section (its annotations) is
    the base. Logs what the run's settings replaced in -c and the overrides leave as the run's."""
    from tgmae.config import RunConfig, load_config, parse_override, to_dict
    from tgmae.weights.model_card import read_run

    given = to_dict(load_config(config)) if config else to_dict(RunConfig())
    run = read_run(checkpoint)
    if not config and run.config is not None:  # no -c: the annotations (data.root, format, ...) are the run's too
        given["data"] = to_dict(run.config)["data"]
    if run.run_dir is None and run.note:  # beside another run's config.yaml (`model_card.run_of`): said once
        log.warning("%s", run.note)
    settings, source = run_settings(checkpoint, [".".join(parse_override(o)[0]) for o in overrides])
    replaced = [f"{sec}.{k}" for sec, values in settings.items() for k, v in values.items()
                if config and given[sec].get(k) != v]
    for section, values in settings.items():
        given[section].update(values)
    cfg, overridden = _figure_run_config(checkpoint, run.config is None and "masking" in settings, given, overrides)
    replaced = [k for k in replaced if k not in overridden]  # an override's value is drawn, not the run's
    if replaced:
        log.info("%s: %s from the run (%s), not -c %s", checkpoint, ", ".join(replaced[:6])
                 + (" ..." if len(replaced) > 6 else ""), source, config)
    return cfg


def _figure_run_config(checkpoint: str | Path, recorded_masking: bool, given: dict, overrides: Sequence[str]):
    """`load_config_and_keys` of the figure's settings (`given`, the checkpoint's over -c) and
    `overrides`. Weights that record their masking (`recorded_masking`: no run folder holds their
    config; `run_settings`) as TGM do not record the captions file, similarity maps or CLIP model
    it needs (paths of the machine it trained on): when -c and the overrides give none, a
    ConfigError in one line naming `checkpoint` and the key, not RunConfig's "masking.name='tgm'
    needs ..." alone, of a masking the user never set (re-trial 30B S3). A fault that remains under
    another masking is raised as it is."""
    from tgmae.config import ConfigError, load_config_and_keys, parse_override

    try:
        return load_config_and_keys(None, list(overrides), base=given)
    except ConfigError as e:
        m = given["masking"]
        if (not recorded_masking or m["name"] != "tgm"
                or {".".join(parse_override(o)[0]) for o in overrides} & {"masking", "masking.name"}):
            raise
        try:  # the same settings under another masking: does the fault lie in TGM's inputs?
            load_config_and_keys(None, [*overrides, "masking.name=tube", "masking.select=top"], base=given)
        except ConfigError:
            raise e from None
        other = "masking.name=NAME" + (" masking.select=top" if m["select"] != "top" else "")
        raise ConfigError(f"{e}: {checkpoint} records TGM masking (ratio {m['ratio']:g}, {m['select']} "
                          "patches by caption) but not the run's captions file, similarity maps or CLIP model; give "
                          f"them (-c or overrides; a --video is masked by its --caption), or draw under another "
                          f"masking with {other}") from None


def _dataset(cfg, subset: str, video: Optional[str], **kwargs):
    from tgmae.data.dataset import VideoDataset, build_dataset

    if video:
        from tgmae.data.annotations import VideoRecord

        path = Path(video)
        if not path.exists():
            raise FileNotFoundError(2, "no such file or directory", str(video))
        record = VideoRecord(path=str(path.resolve()), label=0, video_id=path.stem)
        # one named video: never replaced by another (max_load_retries 0 fails on the first try)
        return VideoDataset([record], dataclasses.replace(cfg.data, max_load_retries=0), train=False,
                            seed=cfg.train.seed, **kwargs)
    return build_dataset(cfg.data, subset, train=False, seed=cfg.train.seed, **kwargs)


def _index(dataset, index: int, what: str) -> int:
    """`index` checked against the dataset: ConfigError naming --index, not an IndexError."""
    from tgmae.config import ConfigError

    if not 0 <= index < len(dataset):
        raise ConfigError(f"--index {index}: the {what} set has {len(dataset)} clip(s): use 0 to {len(dataset) - 1}")
    return index


def figures_folder(checkpoint: str | Path, out: Optional[str | Path] = None) -> Path:
    """Where the figures of `checkpoint` go: `out`; else figures/ in its run folder (the one
    holding its config.yaml: a run folder, the folder of its model.safetensors, the run above a
    `checkpoints/step_N/` or `checkpoints/latest`); else figures/ beside it (in its folder, or in
    a checkpoint folder such as a transformers directory)."""
    from tgmae.weights.model_card import find_run_dir

    if out:
        return Path(out)
    run = find_run_dir(checkpoint)
    if run is not None:
        return run / "figures"
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / "figures"


FIGURE_FOLDERS = "__"  # what a '/' of a video id shows as in a figure's name (readable; the maps keep %2F)


def clip_id(cfg, sample: dict, video: Optional[str], index: int) -> str:
    """The clip part of a figure's file name: its video id (a `--video` under data.root: its id
    there; outside: its stem; the hash of `figure_name` tells same-named files apart), named by
    `id_file_name` as `masking.cache` names maps but with each '/' shown as `FIGURE_FOLDERS`
    (`Animation/clip1` -> `Animation__clip1`; a long id, a readable prefix and a hash of the whole
    id). The hash, which covers the clip's path, keeps `a/b` and `a__b` apart."""
    from tgmae.data.fileid import id_file_name

    if video:
        from tgmae.data.annotations import relative_id

        path = Path(video).resolve()
        root = Path(cfg.data.root).resolve() if cfg.data.root else None
        inside = root is not None and path.is_relative_to(root) and path != root
        vid = relative_id(root, str(path)) if inside else path.stem
    else:
        vid = str(sample.get("video_id", index))
    return id_file_name(vid, folders=FIGURE_FOLDERS)


# the keys of data.* that say how a clip is read, not what it shows: left out of a figure's name
_DATA_IO_KEYS = ("num_workers", "max_load_retries", "decoder_threads", "cache", "cache_dir")


def figure_name(kind: str, clip: str, weights: str, label: str, cfg, sections: Sequence[str], clip_path: str,
                **extra) -> str:
    """`{kind}_{clip}-{8 hex}`: the one naming rule of every `visualize` figure. The hash is sha256
    over what the figure shows: the weights drawn (`weights`, a `tensors_digest`, and `label`, the
    step its title names), the config `sections` the figure reads, data.* (but `_DATA_IO_KEYS`),
    train.seed, the clip's resolved path and file (`video_identity`), and `extra` (--caption,
    --layer, --index, --subset). Another checkpoint, override or video is another file; the same
    command rerun writes the same file again."""
    import hashlib
    import json

    from tgmae.config import to_dict
    from tgmae.data.fileid import video_identity

    full = to_dict(cfg)
    what = {"kind": kind, "weights": weights, "label": label, **{s: full[s] for s in sections},
            "data": {k: v for k, v in full["data"].items() if k not in _DATA_IO_KEYS},
            "seed": full["train"]["seed"], "clip": [clip_path, video_identity(clip_path)], **extra}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}_{clip}-{digest[:8]}"


def checkpoint_label(path: str | Path) -> str:
    """What a figure's title calls the weights it drew: `step N` of a `checkpoints/step_N/`
    checkpoint, `final` for a run's model.safetensors, else the checkpoint's file or folder name (also
    for another run's file in a run's folder, `model_card.run_of`: re-trial 32A S2 and 33B S1, one of
    other or of the same settings titled `final`)."""
    from tgmae.weights.model_card import checkpoint_step, run_of

    run, foreign = run_of(path)
    step = checkpoint_step(path)
    if step is not None and not foreign:
        return f"step {step}"
    return "final" if run is not None else Path(path).name


def _clip_path(dataset, index: int) -> str:
    """The resolved file (or frame folder) of item `index` of a `tgmae.data.dataset` dataset."""
    return str(Path(dataset.records[index].path).resolve())


def weights_path(path: str | Path) -> Path:
    """The file (or transformers folder) `load_pretrainer` reads for `path`: a run folder's final
    model, else its latest step (`files.resolve_checkpoint` for the rest)."""
    from tgmae.weights.files import resolve_checkpoint

    p = resolve_checkpoint(path)
    if p.is_dir() and not (p / "config.json").is_file():  # a run folder: its final model, else its latest step
        p = resolve_checkpoint(p / "model.safetensors" if (p / "model.safetensors").is_file() else p / "checkpoints")
    return p


def load_pretrainer(path: str | Path, num_frames: int, image_size: int):
    """A VideoMAEPretrainer (decoder included) from ours / official / HF, or a pretraining (or
    video-text) training checkpoint or run directory; clip geometry from the run's config."""
    from tgmae.weights.pretraining import load_pretraining_model

    return load_pretraining_model(weights_path(path), num_frames=num_frames, image_size=image_size)


def refuse_without_decoder(checkpoint: str | Path) -> None:
    """CheckpointError in one line naming `checkpoint` when its weights hold no decoder (an encoder
    or classifier, such as an `export-hf` folder without --pretraining): nothing to reconstruct
    with, where loading it as a pretraining model would list every missing decoder key."""
    from tgmae.weights.files import CheckpointError
    from tgmae.weights.pretraining import holds_decoder

    if not holds_decoder(weights_path(checkpoint)):
        raise CheckpointError(
            f"{checkpoint}: its weights hold no decoder (an encoder or classifier alone), so no reconstruction "
            "can be drawn: pass the pretraining run's model.safetensors (encoder + decoder) or an `export-hf "
            "--pretraining` folder; `tgmae visualize attention` draws this encoder")


def _sample(dataset, index: int, video: Optional[str], subset: str) -> dict:
    """Item `index`, read once and never replaced by another video (VideoLoadError naming the
    file when it cannot be read)."""
    from tgmae.data.dataset import VideoLoadError

    index = _index(dataset, index, "video" if video else subset)
    dataset.substitute = False
    sample = dataset[index]
    if sample.get("unreadable"):
        what = f"--video {video}" if video else f"--index {index} of the {subset} set"
        raise VideoLoadError(f"{what}: cannot be read ({sample['load_error']})")
    return sample


class _OneCaption:
    """The caption provider of a single `--video`: its `--caption` (id 0) with its CLIP embedding."""

    def __init__(self, text: str, embedding: torch.Tensor):
        self.texts, self.embedding = [text], embedding

    def draw(self, video_id: str, generator: torch.Generator):
        return 0, self.embedding


def _masking(cfg, video: Optional[str], caption: Optional[str]):
    """(mask generator, caption provider) of a figure: the run's; TGM on a `--video` scores its
    `--caption` online with masking.clip_model (no similarity map exists for a new video)."""
    from tgmae.config import ConfigError
    from tgmae.errors import SettingsError
    from tgmae.masking import build_mask_generator

    if cfg.masking.name == "tgm" and video:
        if not caption:
            raise SettingsError(f"the run masks with TGM, which needs a caption for --video {video}: pass "
                                "--caption TEXT (or show the run's own videos with --index)")
        if not cfg.masking.clip_model:
            raise ConfigError("masking.clip_model: TGM on a --video scores its --caption online with a CLIP "
                              "model; the run used a similarity cache only (set masking.clip_model=NAME_OR_DIR)")
        from tgmae.clip.features import embed_texts

        online = dataclasses.replace(cfg.masking, cache_dir="")
        generator = build_mask_generator(online, data_mean=cfg.data.mean, data_std=cfg.data.std)
        with torch.no_grad():
            text = embed_texts(generator.scorer.clip, [caption])[0].cpu()
        return generator, _OneCaption(caption, text)
    if caption:
        log.info("--caption is used by TGM on a --video only; the run masks with %s", cfg.masking.name)
    captions = None
    if cfg.captions.file:
        from tgmae.captions.provider import CaptionProvider

        captions = CaptionProvider.from_config(cfg.captions)
    return build_mask_generator(cfg.masking, captions_file=cfg.captions.file, data_mean=cfg.data.mean,
                                data_std=cfg.data.std, image_size=cfg.data.image_size,
                                patch_size=cfg.model.patch_size), captions


def say_unrecorded_masking(cfg, checkpoint: str | Path) -> None:
    """Log one line when `checkpoint` is drawn under the default masking because nothing says its
    own: no run folder holds its config.yaml and its weights record none (a file or export written
    before tgmae recorded it, `model_card.RUN_MASK_KEYS`), and -c and the overrides left it default.
    Re-trial 30B S3: such a file was drawn under tube 0.9 without a word."""
    from tgmae.config import MaskingConfig
    from tgmae.weights.model_card import RecordedSettingsError, known_settings, section_settings

    if section_settings("masking", cfg.masking) != section_settings("masking", MaskingConfig()):
        return
    try:
        if known_settings(checkpoint, "masking")[0]:
            return
    except RecordedSettingsError:  # it records one, which the overrides replaced (`figure_config`)
        return
    log.warning("%s: drawn under the default masking (%s, ratio %g): its weights do not record the masking they "
                "were trained with (written before tgmae recorded it) and no run folder beside them says it; "
                "if it was another, set masking.name and masking.ratio (-c or overrides)", checkpoint,
                cfg.masking.name, cfg.masking.ratio)


def recon_figures(cfg, checkpoint: str, *, index: int = 0, subset: str = "val", video: Optional[str] = None,
                  out: Optional[str] = None, caption: Optional[str] = None) -> dict[str, Path]:
    """Original / masked / reconstructed frames of clip `index` (or `video`) with the run's mask
    generator (cfg: `figure_config`); returns figure name -> path."""
    from tgmae.config import ConfigError
    from tgmae.models.arch import check_checkpoint_geometry
    from tgmae.train.pretrain import describe_run, mae_part, trains_decoder
    from tgmae.viz.reconstruction import write_reconstruction
    from tgmae.weights.sources import tensors_digest

    if not trains_decoder(cfg):
        raise ConfigError(f"contrastive.objective={cfg.contrastive.objective!r}: {checkpoint} never trained its "
                          "decoder, so it has no reconstruction to draw (`tgmae visualize attention` shows its "
                          "encoder)")
    refuse_without_decoder(checkpoint)
    model = load_pretrainer(checkpoint, cfg.data.num_frames, cfg.data.image_size)
    check_checkpoint_geometry(cfg.model, model.arch, checkpoint)
    say_unrecorded_masking(cfg, checkpoint)
    generator, captions = _masking(cfg, video, caption)
    dataset = _dataset(cfg, subset, video, token_grid=cfg.token_grid, mask_generator=generator, captions=captions)
    sample = _sample(dataset, index, video, subset)
    label = checkpoint_label(weights_path(checkpoint))
    used = caption if video and cfg.masking.name == "tgm" else ""  # the caption that masks the --video
    name = figure_name("recon", clip_id(cfg, sample, video, index), tensors_digest(model.state_dict()), label, cfg,
                       RUN_SECTIONS, _clip_path(dataset, index), caption=used)
    folder = figures_folder(checkpoint, out)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:  # under their final names, each file written atomically
        return write_reconstruction(mae_part(model), sample, cfg, folder, name,
                                    f"{sample.get('video_id', index)}, {label} ({describe_run(cfg, _frame_numbers(sample))})")
    except Exception as e:  # a full disk names the figure, not the drawing folder; no empty folder is left
        fail = write_failure(e, folder / f"{name}.png")
        if made and not any(folder.iterdir()):
            folder.rmdir()
        if fail is not None:
            raise fail from e
        raise


def attention_maps(cfg, checkpoint: str, *, index: int = 0, subset: str = "val", video: Optional[str] = None,
                   out: Optional[str] = None, layer: int = -1) -> dict[str, Path]:
    """The encoder's attention of the centre patch of the centre frame (block `layer`, -1 = last)
    over clip `index` (or `video`; cfg: `figure_config`); returns figure name -> path."""
    from tgmae.evaluate.extract import frozen_encoder
    from tgmae.models.arch import check_checkpoint_geometry
    from tgmae.viz.attention import attention_figures
    from tgmae.weights.sources import load_encoder_source

    src = load_encoder_source(checkpoint)
    check_checkpoint_geometry(cfg.model, src.arch, checkpoint)
    encoder = frozen_encoder(src, cfg.data.num_frames, cfg.data.image_size)
    arch = encoder.arch
    dataset = _dataset(cfg, subset, video)
    sample = _sample(dataset, index, video, subset)
    vid, depth, label = str(sample.get("video_id", index)), arch.depth, checkpoint_label(src.path or checkpoint)
    name = figure_name("attention", clip_id(cfg, sample, video, index), src.digest(), label, cfg, ("model",),
                       _clip_path(dataset, index), layer=layer % depth)
    title = (f"{vid}, {label}: attention of the centre patch, block {layer % depth + 1}/{depth} (head mean); "
             f"{cfg.data.num_frames} frames x {cfg.data.image_size} px (tubelet {arch.tubelet_size}, "
             f"patch {arch.patch_size})")
    return attention_figures(encoder, sample["video"], cfg.data.mean, cfg.data.std, figures_folder(checkpoint, out),
                             layer=layer, name=name, title=title, frame_numbers=_frame_numbers(sample))


def _frame_numbers(sample: dict) -> Optional[list[int]]:
    """The clip's source frame numbers (the figures' columns), when the dataset gives them."""
    frames = sample.get("frame_indices")
    return None if frames is None else [int(f) for f in torch.as_tensor(frames).reshape(-1).tolist()]
