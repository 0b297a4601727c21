"""`tgmae study`: the paper's comparison (Tables 1-2, Figure 4) on one command.

For every (masking, objective, seed): pretrain -> linear probe -> finetune -> zero-shot retrieval,
then one report (`tgmae.study.report`), on the synthetic set with a CLIP trained by
`tgmae train-clip` on it. Reference rows per seed: "none" (a random encoder, probed and finetuned)
and "scratch" (supervised from random initialisation for a cell's whole epoch budget). Ablations
(Table 5) run under a `variant` name (docs/study.md). Every phase reads through one decoded-clip
cache and is skipped when its outputs exist, so a killed study resumes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tgmae.atomic import atomic_write_text
from tgmae.config import CACHE_MODES, OBJECTIVES, RETRIEVAL_TEXTS, ConfigError, check_choice, check_known, from_dict, load_config, parse_override, read_config_file, refuse_repeated_overrides, to_dict
from tgmae.study.cells import MASKINGS, PHASES, PHASES_FILE, REFERENCES, SCRATCH_FINETUNE, pretrain_cell_overrides
from tgmae.study.attributes import attribute_probe
from tgmae.study.frozen_probes import asked_probes, check_probes, frozen_probe_configs, missing, run_frozen_probes
from tgmae.study.report import RECON_CHECK_DIR, lost_sources, phase_done

log = logging.getLogger("tgmae")

# each phase's default overrides (configs/study_phases.yaml, `tgmae.study.cells`)
PRETRAIN_BASE: list[str] = PHASES["pretrain"]
PROBE_BASE: list[str] = PHASES["probe"]
FINETUNE_BASE: list[str] = PHASES["finetune"]


@dataclass
class StudyConfig:
    """What the study compares and how big each phase is. The defaults are the measured study
    (`make demo`, docs/study.md); configs/study_synthetic.yaml pins them (tests check they agree)."""

    out_dir: str = "runs/study"
    # half held out (stratified): the val videos' sampling dominates a probe gain's spread (docs/study.md)
    num_videos: int = 2304  # synthetic videos
    val_fraction: float = 0.5  # of them held out for validation
    video_frames: int = 16  # an 8-frame clip at stride 2 then sees the whole action
    video_size: int = 64
    # synthetic difficulty (docs/sanity.md): 0 distractors is learnable from scratch
    distractors: int = 0  # at most this many distractor shapes
    distractor_speed: float = 1.0  # ... and their speed
    maskings: list[str] = field(default_factory=lambda: ["tube", "mgm", "tgm", "tgm_bottom"])
    objectives: list[str] = field(default_factory=lambda: ["mae", "mae+contrastive"])
    seeds: list[int] = field(default_factory=lambda: [0])  # configs/study_fidelity.yaml: [0, 1, 2]
    clip_steps: int = 400  # `tgmae train-clip` steps for the study's CLIP
    # weight of train-clip's clip-caption loss through its motion tower (teaches its text tower the verbs);
    # 0 = frames only, enough for TGM when text_model is not the CLIP
    clip_motion_weight: float = 0.0
    # captions.text_model of every run: "words" = a random word-level encoder built on the captions
    # (tgmae.captions.tiny.save_word_encoder); empty = the study's CLIP; else a text model's name or path
    text_model: str = "words"
    # lower (random encoder) and upper (supervised from scratch) reference rows per seed
    references: list[str] = field(default_factory=lambda: ["none", "scratch"])
    scratch_epochs: int = 0  # "scratch" reference's finetuning epochs; 0 = pretraining + finetuning epochs
    variant: str = ""  # name of an ablation (e.g. "ratio 0.9"): its runs get their own folders and rows
    cache: str = "disk"  # decoded-clip cache of every phase (data.cache): disk (shared, under out_dir) | memory | none
    # cells run at once, each in its own process with (CPU cores // jobs) torch threads; results do not depend on it
    jobs: int = 2
    mask_mode: str = "dense"  # TGM similarity precompute: dense | faithful
    retrieval: str = "classes"  # zero-shot retrieval texts: classes | captions
    # class texts of "classes" retrieval: "descriptions" (data/descriptions.json, averaged per class) or
    # "names" (eval.class_prompt with the class name; docs/study.md, "Zero-shot retrieval at chance")
    retrieval_prompts: str = "descriptions"
    # retrieval through a head aligned afterwards on each frozen encoder for this many epochs (eval.retrieval_align_epochs,
    # LiT): the pretraining's own head stays at colour (docs/study.md, issue 27); MAE-only cells then get
    # retrieval too, through the same head (MAE vs MAE + video-text). 0 = the contrastive cells' own heads
    retrieval_align_epochs: int = 60
    # overrides of every pretraining run after configs/study_phases.yaml's (why each: docs/sanity.md, docs/study.md)
    pretrain: list[str] = field(default_factory=lambda: [
        "model.preset=micro", "data.frame_stride=2", "data.num_workers=0", "contrastive.view_ratio=0",
        "contrastive.weight=0.05"])
    # ... of every linear probe: CLIP's L-BFGS probe reads these tiny encoders' features where LARS stays at chance
    probe: list[str] = field(default_factory=lambda: ["data.num_workers=0", "eval.probe_optimizer=lbfgs"])
    # ... of every finetuning run: 30 epochs (finetuning takes off after 4-12), head_init_scale 1.0, the
    # multi-view test after the last epoch
    finetune: list[str] = field(default_factory=lambda: [
        "data.num_workers=0", "train.epochs=30", "eval.head_init_scale=1.0", "train.eval_every=5"])
    # steps of the reconstruction check (`tgmae.study.recon_check`), once per study folder; 0 = off
    recon_check_steps: int = 3200
    # frozen-backbone probes: linear (always) and optionally knn and attentive (tgmae.study.frozen_probes)
    probes: list[str] = field(default_factory=lambda: ["linear"])

    def __post_init__(self) -> None:
        check_known("study.maskings", self.maskings, sorted(MASKINGS))
        check_known("study.objectives", self.objectives, OBJECTIVES)
        if not self.seeds:
            raise ConfigError("study.seeds: at least one seed")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in self.seeds):
            raise ConfigError(f"study.seeds={self.seeds}: integers >= 0")
        check_choice("study.mask_mode", self.mask_mode, ("dense", "faithful"))
        check_choice("study.retrieval", self.retrieval, RETRIEVAL_TEXTS)
        check_choice("study.retrieval_prompts", self.retrieval_prompts, ("descriptions", "names"))
        if isinstance(self.retrieval_align_epochs, bool) or self.retrieval_align_epochs < 0:
            raise ConfigError(f"study.retrieval_align_epochs={self.retrieval_align_epochs}: must be >= 0")
        check_known("study.references", self.references, list(REFERENCES))
        check_choice("study.cache", self.cache, CACHE_MODES)
        if self.clip_motion_weight < 0:
            raise ConfigError(f"study.clip_motion_weight={self.clip_motion_weight}: must be >= 0")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"study.val_fraction={self.val_fraction}: must be in (0, 1)")
        if not 1 <= round(self.num_videos * self.val_fraction) <= self.num_videos - 1:
            raise ConfigError(f"study.val_fraction={self.val_fraction} of study.num_videos={self.num_videos} leaves "
                              "no validation or no training videos")
        if self.jobs < 1:
            raise ConfigError(f"study.jobs={self.jobs}: must be >= 1")
        if self.scratch_epochs < 0:
            raise ConfigError(f"study.scratch_epochs={self.scratch_epochs}: must be >= 0 (0 = automatic)")
        check_probes(self.probes)
        for key in ("maskings", "objectives", "seeds", "references", "probes"):
            values = getattr(self, key)
            twice = sorted({repr(v) for v in values if values.count(v) > 1})
            if twice:  # a repeated seed would be counted as two seeds in the table's mean and std
                raise ConfigError(f"study.{key}: {', '.join(twice)} given more than once")
        if self.recon_check_steps < 0:
            raise ConfigError(f"study.recon_check_steps={self.recon_check_steps}: must be >= 0 (0 = off)")


@dataclass
class StudyPaths:
    """A study folder's layout: data, clip, word_encoder, similarity_cache, clip_cache, the
    reconstruction check; `run(...)` and `report(...)` below."""

    root: Path

    def __post_init__(self) -> None:
        self.data, self.clip, self.word_encoder = self.root / "data", self.root / "clip", self.root / "word_encoder"
        self.mask_cache, self.clip_cache = self.root / "similarity_cache", self.root / "clip_cache"
        self.recon_check = self.root / RECON_CHECK_DIR

    def run(self, masking: str, objective: str, seed: int, variant: str = "") -> Path:
        tag = f"__{_slug(variant)}" if variant else ""
        return self.root / "runs" / f"{masking}__{objective.replace('+', '_')}__s{seed}{tag}"

    def report(self, variant: str = "") -> Path:
        """Where an invocation's report goes: the study folder, or variants/<name> for an ablation
        (`tgmae report STUDY_DIR` puts every variant's runs in one table)."""
        return self.root / "variants" / _slug(variant) if variant else self.root


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def prepare_shared(study: StudyConfig, paths: StudyPaths, clip: bool = True) -> None:
    """Synthetic set, the study's CLIP (unless `clip` is False: `prepare_clip` then runs later),
    caption embeddings and TGM similarity maps (once)."""
    from tgmae.data.synthetic import generate_synthetic_dataset

    if not (paths.data / "meta.json").is_file():
        info = generate_synthetic_dataset(paths.data, num_videos=study.num_videos, frames=study.video_frames,
                                          size=study.video_size, seed=0, workers=0, val_fraction=study.val_fraction,
                                          distractors=study.distractors, distractor_speed=study.distractor_speed)
        log.info("study: synthetic set %d videos in %.1fs", info.num_videos, info.seconds)
    check_data_settings(study, paths)
    if not (paths.data / "descriptions.json").is_file():  # a set written before the file existed
        from tgmae.data.synthetic.generate import write_class_descriptions

        write_class_descriptions(paths.data)
    if clip:
        prepare_clip(study, paths)
    if study.text_model == "words" and not (paths.word_encoder / "config.json").is_file():
        from tgmae.captions.store import read_store
        from tgmae.captions.tiny import save_word_encoder

        classes = json.loads((paths.data / "meta.json").read_text())["classes"]
        corpus = [c for r in read_store(paths.data / "captions.jsonl").records for c in r.captions]
        save_word_encoder(paths.word_encoder, corpus + [f"a video of {c}." for c in classes])
    text_probe(study, paths)


def prepare_clip(study: StudyConfig, paths: StudyPaths) -> None:
    """The study's CLIP (`tgmae train-clip`) and, for TGM, its similarity maps (once)."""
    from tgmae.study.clip.train import ClipTrainConfig, train_clip

    clip_cfg = ClipTrainConfig(steps=study.clip_steps, motion_weight=study.clip_motion_weight)
    if not (paths.clip / "train_clip.json").is_file():
        # the study's own folder: an unfinished CLIP there is retrained; train_clip.json is its last
        # file (config.json its first: a kill while saving left one without weights or summary)
        summary = train_clip(paths.data, paths.clip, clip_cfg, progress=False, what="study out_dir", overwrite=True)
        log.info("study: CLIP trained: %s", {k: summary[k] for k in list(summary)[:6]})
    check_clip_settings(clip_cfg, paths)
    if any(_needs_clip(m) for m in study.maskings):
        _precompute_masks(study, paths)


def _needs_clip(masking: str) -> bool:
    return MASKINGS.get(masking, [""])[0] == "masking.name=tgm"


def target_text_model(study: StudyConfig, paths: StudyPaths) -> str:
    """captions.text_model of the study's runs: the study key, "words" resolved to its folder."""
    return str(paths.word_encoder) if study.text_model == "words" else study.text_model


def check_clip_settings(cfg, paths: StudyPaths) -> None:
    """Refuse a study CLIP trained with other settings (ConfigError naming the study key): its
    similarity maps and caption embeddings would belong to another study."""
    saved = json.loads((paths.clip / "train_clip.json").read_text()).get("config", {})
    keys = {"steps": "clip_steps", "motion_weight": "clip_motion_weight"}
    for field_name, key in keys.items():
        have = saved.get(field_name, 0.0 if field_name == "motion_weight" else None)  # before the motion tower
        if have != getattr(cfg, field_name):
            raise ConfigError(f"study.{key}={getattr(cfg, field_name)} but {paths.clip} holds a CLIP trained with "
                              f"{have}: use another study out_dir, or delete {paths.clip} and "
                              f"{paths.mask_cache} to train it again")


def text_probe(study: StudyConfig, paths: StudyPaths) -> dict:
    """How well the contrastive targets' text space separates the actions (`text_action_probe` on
    held-out captions) next to bag of words; cached in text_probe.json keyed by the weights' fingerprint."""
    from tgmae.captions.embed import TextEmbedder
    from tgmae.hub import weights_fingerprint
    from tgmae.captions.store import read_store
    from tgmae.study.attributes import bag_of_words, text_action_probe

    model = target_text_model(study, paths) or str(paths.clip)
    out = paths.root / "text_probe.json"
    weights = weights_fingerprint(model) or ""
    if out.is_file():
        saved = json.loads(out.read_text())
        if (saved.get("model"), saved.get("weights")) == (model, weights):
            return saved
    corpus = [c for r in read_store(paths.data / "captions.jsonl").records for c in r.captions]
    result = {"model": model, "weights": weights, "text_model": text_action_probe(paths.data, TextEmbedder(model)),
              "bag_of_words": text_action_probe(paths.data, bag_of_words(corpus))}
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    log.info("study: text probe of the action from held-out captions: %.1f%% (%s), bag of words %.1f%%",
             100 * result["text_model"]["action"], model, 100 * result["bag_of_words"]["action"])
    return result


def check_data_settings(study: StudyConfig, paths: StudyPaths) -> None:
    """ConfigError naming the study key when the synthetic set was written with other settings (sets
    older than the difficulty knobs hold 2 distractors at speed 1)."""
    meta = json.loads((paths.data / "meta.json").read_text())
    have = {"num_videos": meta["num_videos"], "video_frames": meta["frames"], "video_size": meta["height"],
            "distractors": meta.get("distractors", 2), "distractor_speed": meta.get("distractor_speed", 1.0),
            "val_fraction": meta.get("val_fraction", 0.2)}
    for key, value in have.items():
        if value != getattr(study, key):
            raise ConfigError(f"study.{key}={getattr(study, key)} but {paths.data} holds a set with {value}: "
                              f"use another study.out_dir or delete {paths.data}")


def _precompute_masks(study: StudyConfig, paths: StudyPaths) -> None:
    from tgmae.clip.features import load_clip
    from tgmae.masking.precompute import PrecomputeOptions, precompute
    from tgmae.data.formats import load_annotations

    records, _ = load_annotations("csv", paths.data, "annotations.csv")
    videos = [(r.video_id, r.path) for r in records]
    pre = run_configs(study, paths, "tgm", "mae", study.seeds[0], quick=False)[0]  # the grid the TGM cells train on
    opts = PrecomputeOptions(mode=study.mask_mode, frame_stride=2, image_size=pre.data.image_size,
                             patch_size=pre.model.patch_size, map_scale=2)
    counts = precompute(videos, str(paths.data / "captions.jsonl"), load_clip(str(paths.clip)),
                        paths.mask_cache, opts, progress=False,
                        way_out=f"use another study out_dir, or delete {paths.mask_cache} to build it again")
    log.info("study: similarity maps %s", counts)


def _phase(key: str, build):
    """build() of one phase's RunConfig; its ConfigError names the study key of that phase's
    overrides (study.pretrain / probe / finetune), where such a mistake comes from."""
    try:
        return build()
    except ConfigError as e:
        raise ConfigError(f"study.{key}: {e}") from None


def check_cells(study: StudyConfig, paths: StudyPaths, cells: Sequence[tuple]) -> None:
    """Build every cell's phase configs (without --quick, which would hide a bad value) before any
    set-up runs: a mistake in study.pretrain / probe / finetune is refused naming that key."""
    from tgmae.distributed import resolve_device

    for key in ("pretrain", "probe", "finetune"):
        if any(str(o).replace(" ", "").startswith("train.output_dir=") for o in getattr(study, key)):
            raise ConfigError(f"study.{key}: train.output_dir is the study's (runs/<cell>/{key}); use study.out_dir")
    for masking, objective in sorted({(m, o) for m, o, _ in cells}):
        for key, cfg in zip(("pretrain", "probe", "finetune"),
                            run_configs(study, paths, masking, objective, study.seeds[0], quick=False)):
            if cfg is not None:
                _phase(key, lambda: resolve_device(cfg.train.device))


def run_configs(study: StudyConfig, paths: StudyPaths, masking: str, objective: str, seed: int,
                quick: bool):
    """(pretrain, probe, finetune) RunConfigs of one cell; a reference row's pretraining config only sets
    the geometry ("none" saves its random initialisation), and "scratch" has no probe (None)."""
    from tgmae.evaluate.recipes import FINETUNE_RECIPE, PROBE_RECIPE, with_recipe

    run = paths.run(masking, objective, seed, study.variant)
    shared = [f"data.root={paths.data}", f"train.seed={seed}",
              f"captions.file={paths.data / 'captions.jsonl'}", f"captions.clip_model={paths.clip}",
              f"captions.text_model={target_text_model(study, paths)}",
              f"data.cache={study.cache}", f"data.cache_dir={paths.clip_cache}"]
    quick_o = ["train.epochs=1", "train.batch_size=8"] if quick else []  # every phase's --quick overrides
    pre = _phase("pretrain", lambda: load_config(None, PRETRAIN_BASE + shared + pretrain_cell_overrides(
        masking, objective, paths.mask_cache) + [f"train.output_dir={run / 'pretrain'}"] + study.pretrain + quick_o))
    geometry = [f"data.{k}={v}" for k, v in (("num_frames", pre.data.num_frames), ("image_size", pre.data.image_size),
                                              ("frame_stride", pre.data.frame_stride))]
    geometry.append(f"model.preset={pre.model.preset}")  # the scratch reference's size; a checkpoint's must match
    eval_shared = PRETRAIN_BASE[:4] + shared + geometry + ["data.flip=false", "data.num_workers=2",
                                                          f"model.pretrained={run / 'pretrain' / 'model.safetensors'}"]
    probe = _phase("probe", lambda: with_recipe(PROBE_RECIPE, None, eval_shared + PROBE_BASE
                                                + [f"train.output_dir={run / 'probe'}"] + study.probe + quick_o))
    fine = _phase("finetune", lambda: with_recipe(FINETUNE_RECIPE, None, eval_shared + FINETUNE_BASE
                                                  + [f"train.output_dir={run / 'finetune'}"] + study.finetune
                                                  + quick_o))
    if masking == "scratch":  # the labels alone, for a cell's whole budget of epochs (SCRATCH_FINETUNE)
        epochs = study.scratch_epochs or pre.train.epochs + fine.train.epochs
        pretrained, budget = SCRATCH_FINETUNE
        fine = _phase("finetune", lambda: with_recipe(
            FINETUNE_RECIPE, None, [o for o in eval_shared if not o.startswith(f"{pretrained}=")]
            + FINETUNE_BASE + [f"train.output_dir={run / 'finetune'}"] + study.finetune
            + [f"{budget}={epochs}"] + quick_o))
        probe = None
    return pre, probe, fine


def save_random_encoder(pre, path: Path) -> None:
    """The "none" reference: the pretraining model of `pre`'s geometry at its random initialisation
    (seeded by train.seed), saved where a pretraining run leaves its weights."""
    import torch

    from tgmae.models import build_pretraining_model
    from tgmae.weights.model_card import section_settings
    from tgmae.weights.pretraining import save_pretraining_model

    if path.is_file():
        return
    torch.manual_seed(pre.train.seed)
    model = build_pretraining_model(pre.model, pre.data.num_frames, pre.data.image_size,
                                    pixel_mean=tuple(pre.data.mean), pixel_std=tuple(pre.data.std))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pretraining_model(model, path, data=section_settings("data", pre.data))


def _num_classes(paths: StudyPaths) -> int:
    return len(json.loads((paths.data / "meta.json").read_text())["classes"])


def check_phase_settings(cfg, probe: bool = False) -> None:
    """ConfigError, one line per key, when a phase folder's config.yaml differs from `cfg` in a key
    outside `RESUMABLE_KEYS` (the attentive probe: its loop config): a changed study would otherwise
    report the old run's numbers. probe: `cfg` is a probe phase's, and the other probe kinds' keys
    (`unused_probe_keys` of its kind, which the probe's own rerun check leaves out too) do not count."""
    import yaml

    from tgmae.config import RunConfig, to_dict
    from tgmae.weights.checkpoint import config_differences

    from tgmae.evaluate.attentive_probe import loop_config
    from tgmae.evaluate.probe import probe_kind, unused_probe_keys

    saved = Path(cfg.train.output_dir) / "config.yaml"
    if not saved.is_file():
        return
    unused = unused_probe_keys(probe_kind(cfg)) if probe else ()
    if cfg.eval.probe == "attentive":  # its folder holds the loop's config: the recipe as batch and optimizer
        cfg = loop_config(cfg)
    diffs = config_differences(yaml.safe_load(saved.read_text()) or {}, to_dict(cfg), to_dict(RunConfig()), unused)
    if diffs:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in diffs)
        raise ConfigError(f"{saved.parent} holds a run made with other settings (that run -> this study):\n{lines}\n"
                          "Use another study out_dir, or delete that folder to rerun it.")


QUICK_ALIGN_BATCH = 8  # --quick's alignment batch: its sets hold a dozen training videos


def retrieval_config(study: StudyConfig, paths: StudyPaths, probe, run: Path, quick: bool = False):
    """The retrieval phase's RunConfig: the probe's, with the set's class descriptions when
    `study.retrieval_prompts` is "descriptions", and `study.retrieval_align_epochs`; writing to
    <run>/retrieval (the pretraining's head) or <run>/retrieval_aligned (an aligned head: a folder of
    its own, so a finished study's results of the pretraining's head are kept, not refused)."""
    descriptions = str(paths.data / "descriptions.json") if study.retrieval_prompts == "descriptions" else ""
    aligned = study.retrieval_align_epochs > 0
    align = {"retrieval_align_epochs": study.retrieval_align_epochs}
    if quick:
        align["retrieval_align_batch_size"] = QUICK_ALIGN_BATCH
    out = run / ("retrieval_aligned" if aligned else "retrieval")
    return dataclasses.replace(probe, train=dataclasses.replace(probe.train, output_dir=str(out)),
                               eval=dataclasses.replace(probe.eval, class_descriptions=descriptions, **align))


def retrieves(study: StudyConfig, objective: str) -> bool:
    """Whether a cell of `objective` gets retrieval figures: one that trained a video-text head, and
    with an aligned head (`study.retrieval_align_epochs`) every pretrained cell, MAE-only ones too."""
    return objective in ("contrastive", "mae+contrastive") or (study.retrieval_align_epochs > 0 and objective == "mae")


def cell_retrieval(study: StudyConfig, paths: StudyPaths, probe, run: Path, quick: bool) -> dict:
    """The retrieval summary of one cell (`evaluate_retrieval`) with the texts it ranked (`prompts`) and
    `align_epochs` (0: the pretraining's own head, read from the latest pretraining checkpoint)."""
    from tgmae.evaluate.retrieval import evaluate_retrieval, load_video_text_model

    model = None
    if study.retrieval_align_epochs == 0:
        from tgmae.weights import checkpoint as ckpt

        model = load_video_text_model(ckpt.find_latest(run / "pretrain" / "checkpoints"))
    result = evaluate_retrieval(retrieval_config(study, paths, probe, run, quick), model=model,
                                mode=study.retrieval, progress=False)
    return dict(result.summary(), prompts=study.retrieval_prompts, align_epochs=study.retrieval_align_epochs)


def stale_retrieval(study: StudyConfig, record: dict) -> bool:
    """A finished cell's record lacks the retrieval this study asks for (another align_epochs; records
    written before it was kept: 0)."""
    if not retrieves(study, record["objective"]) or record["masking"] in REFERENCES:
        return False
    done = record.get("retrieval") or {}
    return not done or done.get("align_epochs", 0) != study.retrieval_align_epochs


def cell_phases(study: StudyConfig, paths: StudyPaths, masking: str, objective: str, seed: int, quick: bool):
    """(pre, probe, fine, the phases the cell runs, {kind: config} of its extra frozen probes)."""
    pre, probe, fine = run_configs(study, paths, masking, objective, seed, quick)
    if probe is not None and probe.eval.probe != "linear":  # the LP phase runs `linear_probe` alone
        raise ConfigError(f"study.probe sets eval.probe={probe.eval.probe}: the study's LP column is its linear "
                          f"probe; add the other kinds with study.probes=[linear, {probe.eval.probe}] (their own "
                          "folders and columns)")
    run = paths.run(masking, objective, seed, study.variant)
    phases = [fine] if masking == "scratch" else [probe, fine] if masking == "none" else [pre, probe, fine]
    extra = frozen_probe_configs(study.probes, probe, fine, run, quick) if probe is not None else {}
    return pre, probe, fine, phases, extra


def check_cell_settings(phases: Sequence, probe, extra: dict) -> None:
    """`check_phase_settings` of each phase: results of other settings are never reused; a probe phase
    as the probe's own rerun check (another probe kind's knobs do not count)."""
    for phase in list(phases) + list(extra.values()):
        check_phase_settings(phase, probe=phase is probe or any(phase is e for e in extra.values()))


def check_retrieval_folder(study: StudyConfig, paths: StudyPaths, probe, run: Path, quick: bool) -> None:
    """ConfigError when the cell's retrieval folder holds results of other settings (e.g. another
    study.retrieval_align_epochs), named with the study's way out, before any cell runs."""
    from tgmae.evaluate.retrieval import refuse_other_retrieval, retrieval_settings

    cfg = retrieval_config(study, paths, probe, run, quick)
    refuse_other_retrieval(Path(cfg.train.output_dir), retrieval_settings(cfg, study.retrieval),
                           ways="use another study out_dir, or delete that folder to rerun it")


class PhaseTimes:
    """Wall seconds of a cell's phases, kept in its folder's phase_seconds.json as each ends: a cell
    killed after some phases ran, before its study_record.json, counts their time when a rerun finds
    them done (not the ~0 s of finding them). Phases of older folders, never timed, count 0."""

    def __init__(self, run: Path) -> None:
        self.path = run / "phase_seconds.json"
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if phase_done(self.path) else {}
        self.now: set[str] = set()  # the phases this invocation ran

    def ran(self, phase: str, seconds: float) -> float:
        """Keep `phase`'s `seconds` (it ran now); returns them."""
        self.seconds[phase] = seconds
        self.now.add(phase)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.seconds, indent=2))
        return seconds

    def earlier(self) -> float:
        """Seconds of the phases an earlier invocation ran and this one found done."""
        return sum(v for k, v in self.seconds.items() if k not in self.now)


def run_cell(study: StudyConfig, paths: StudyPaths, masking: str, objective: str, seed: int,
             quick: bool) -> dict:
    """One (masking, objective, seed): each phase skipped when its results are there and readable
    (`report.phase_done`); a finished cell whose results file of a figure is gone or damaged since
    (`report.lost_sources`) reruns that phase and writes its record anew."""
    from tgmae.evaluate.finetune import finetune
    from tgmae.evaluate.probe import linear_probe
    from tgmae.train.pretrain import pretrain, pretrain_done

    pre, probe, fine, phases, extra = cell_phases(study, paths, masking, objective, seed, quick)
    run = paths.run(masking, objective, seed, study.variant)
    check_cell_settings(phases, probe, extra)
    record_path = run / "study_record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    if record is not None and not lost_sources(record, run):  # done; probes added to study.probes since run now
        if missing(record, extra):
            fields = run_frozen_probes(extra)
            record.update(fields, probe_seconds={**record.get("probe_seconds", {}), **fields["probe_seconds"]})
            atomic_write_text(record_path, json.dumps(record, indent=2))
        if probe is not None and stale_retrieval(study, record):  # e.g. study.retrieval_align_epochs set since
            record["retrieval"] = cell_retrieval(study, paths, probe, run, quick)
            atomic_write_text(record_path, json.dumps(record, indent=2))
        return record
    t0, times = time.perf_counter(), PhaseTimes(run)
    if masking == "none":
        save_random_encoder(pre, run / "pretrain" / "model.safetensors")
        times.ran("pretrain", time.perf_counter() - t0)
    elif masking != "scratch" and not pretrain_done(pre):  # also a run killed while drawing its figures
        pretrain(pre)
        times.ran("pretrain", time.perf_counter() - t0)
    t_probe = None
    if probe is not None and not phase_done(run / "probe" / "probe_results.json"):
        t_probe = time.perf_counter()
        linear_probe(probe)
        t_probe = times.ran("probe", time.perf_counter() - t_probe)
    if not phase_done(run / "finetune" / "finetune_results.json"):
        t_fine = time.perf_counter()
        finetune(fine)
        times.ran("finetune", time.perf_counter() - t_fine)
    fine_res = json.loads((run / "finetune" / "finetune_results.json").read_text())
    retrieval, probed, frozen = {}, {"linear_probe_top1": None}, {}
    if probe is not None and masking not in REFERENCES and retrieves(study, objective):
        retrieval = cell_retrieval(study, paths, probe, run, quick)
    if probe is not None:  # "scratch" has none
        probe_res = json.loads((run / "probe" / "probe_results.json").read_text())
        kind = probe_res.get("probe")  # a k-NN (or attentive) probe in the linear probe's place: named as such
        probed = {"linear_probe_top1": probe_res["top1"],
                  "probe": probe_res.get("optimizer") if kind in (None, "linear") else kind,
                  "num_val": probe_res.get("num_val"), "attribute_probe": attribute_probe(run / "probe", paths.data)}
        frozen = run_frozen_probes(extra)
        if t_probe is not None:
            frozen["probe_seconds"]["linear"] = t_probe
    record = {"masking": masking, "objective": objective, "variant": study.variant, "seed": seed,
              "mask_ratio": None if masking in REFERENCES else pre.masking.ratio, "num_classes": _num_classes(paths),
              "finetune_top1": fine_res.get("test_top1", fine_res.get("val_top1")), **probed,
              "retrieval": retrieval, "pretrain_seconds": 0.0 if probe is None else times.seconds.get("pretrain", 0.0),
              "total_seconds": time.perf_counter() - t0 + times.earlier(), "run_dir": str(run), **frozen}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, json.dumps(record, indent=2))
    return record


QUICK_RECON_STEPS = 8  # --quick's reconstruction check: the files and the report section, not the result


def check_recon_settings(study: StudyConfig, paths: StudyPaths, quick: bool) -> None:
    """Refuse, before anything runs, a reconstruction check in the study folder made with other
    settings (ConfigError naming study.recon_check_steps and the differing keys)."""
    from tgmae.study.recon_check import saved_reconstruction_check

    steps = study.recon_check_steps  # 0 = off; --quick lowers it through `quick_values`
    if steps:
        try:
            saved_reconstruction_check(paths.recon_check, steps)
        except ConfigError as e:
            raise ConfigError(f"study.recon_check_steps={steps}{' (--quick)' if quick else ''}: {e}") from None


def run_recon_check(study: StudyConfig, paths: StudyPaths, quick: bool) -> Optional[Path]:
    """The reconstruction check under the study folder with 1 torch thread, reused when done -> its
    JSON; None when off."""
    import torch

    from tgmae.study.recon_check import reconstruction_check

    steps = study.recon_check_steps  # 0 = off; --quick lowers it through `quick_values`
    if not steps:
        return None
    check_recon_settings(study, paths, quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = reconstruction_check(paths.recon_check, steps=steps)
    finally:
        torch.set_num_threads(threads)  # a pool worker runs cells after it
    log.info("study: reconstruction check: held-out masked MSE %.4f vs patch means %.4f (%.2fx), %d steps",
             record["mse"], record["patch_mean_mse"], record["ratio"], record["steps"])
    return paths.recon_check / "reconstruction_check.json"


def run_study(study: StudyConfig, quick: bool = False) -> Path:
    """Run every missing phase of the study and write its report; returns the report's folder.
    A study already running in `study.out_dir` (its lock, `tgmae.locks`) is refused naming it."""
    from tgmae.locks import hold

    paths = StudyPaths(Path(study.out_dir))
    cells = [(m, o, s) for s in study.seeds for m in study.maskings for o in study.objectives]
    cells += [(ref, REFERENCES[ref], s) for s in study.seeds for ref in study.references]
    # one study per folder: a second one's phases would interleave with this one's; held before the
    # cells' folders are judged, which a running study's would fail ("delete that folder")
    with hold(paths.root, "study.out_dir", folder=True):
        check_cells(study, paths, cells)
        for cell in cells:  # a folder of other settings is named before any cell trains, not when the loop reaches it
            _, probe, _, phases, extra = cell_phases(study, paths, *cell, quick)
            check_cell_settings(phases, probe, extra)
            if probe is not None and cell[0] not in REFERENCES and retrieves(study, cell[1]):
                check_retrieval_folder(study, paths, probe, paths.run(*cell, study.variant), quick)
        return _run_study(study, paths, cells, quick)


def _run_study(study: StudyConfig, paths: StudyPaths, cells: list, quick: bool) -> Path:
    """`run_study` once the study folder is this process's (its lock held)."""
    paths.root.mkdir(parents=True, exist_ok=True)
    check_recon_settings(study, paths, quick)
    t0 = time.perf_counter()
    clip_later = study.jobs > 1 and bool(study.text_model)  # the cells' text targets do not need the CLIP
    prepare_shared(study, paths, clip=not clip_later)
    for cell in cells:  # every cell's folder once set-up is done: a report of a killed study names those never started
        paths.run(*cell, study.variant).mkdir(parents=True, exist_ok=True)
    records = []
    from tqdm.auto import tqdm

    if study.jobs > 1:
        records, recon = _run_cells_parallel(study, paths, cells, quick, clip_later)
    else:
        recon = run_recon_check(study, paths, quick)
        for masking, objective, seed in tqdm(cells, desc="study", unit="run"):
            log.info("study: %s / %s / seed %d", masking, objective, seed)
            records.append(run_cell(study, paths, masking, objective, seed, quick))
    from tgmae.study.report import drop_lost_figures, read_text_probe, write_report

    records = [asked_probes(r, study.probes) for r in records]  # not an earlier invocation's other probes
    records, lost = drop_lost_figures(records)  # as `tgmae report`: a file gone since its cell ran
    title = "tgmae study on the synthetic set" + (f": {study.variant}" if study.variant else "")
    write_report(records, paths.report(study.variant), title=title, seconds=time.perf_counter() - t0,
                 text_probe=read_text_probe(paths.root), recon_check=recon, lost=lost)
    return paths.report(study.variant)


def _init_worker(threads: int, log_queue, log_level: int, parent_pid: int) -> None:
    """A spawned cell process: ends with its parent (`tgmae.lifetime`), sets its torch threads, and
    sends its log records to the parent's handlers."""
    import logging.handlers
    import signal

    import torch

    from tgmae.lifetime import end_with_parent

    end_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: a terminal's Ctrl-C reaches a busy job (`stoppable`)
    torch.set_num_threads(threads)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(log_queue)]
    root.setLevel(log_level)


def _run_cells_parallel(study: StudyConfig, paths: StudyPaths, cells: list, quick: bool,
                        clip_later: bool) -> tuple[list, Optional[Path]]:
    """`study.jobs` cells at a time in spawned processes ((CPU cores // jobs) threads each); with
    `clip_later` the CLIP is made in the pool first and the TGM cells wait for it; the
    reconstruction check is one more job. Returns the records in `cells` order and the check's JSON."""
    import logging.handlers
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // study.jobs)
    log.info("study: %d cells, %d at a time, %d torch thread(s) each", len(cells), study.jobs, threads)
    order = sorted(cells, key=lambda c: c[0] != "scratch")  # the longest run first
    ctx = multiprocessing.get_context("spawn")
    root = logging.getLogger()
    log_queue = ctx.Queue()
    listener = logging.handlers.QueueListener(log_queue, *root.handlers, respect_handler_level=True)
    listener.start()
    try:
        return _run_pool(study, paths, cells, order, quick, clip_later,
                         ProcessPoolExecutor(study.jobs, mp_context=ctx, initializer=_init_worker,
                                             initargs=(threads, log_queue, root.getEffectiveLevel(), os.getpid())))
    finally:
        listener.stop()


def _run_pool(study: StudyConfig, paths: StudyPaths, cells: list, order: list, quick: bool, clip_later: bool,
              executor) -> tuple[list, Optional[Path]]:
    """`_run_cells_parallel`'s jobs on `executor` (shut down on return)."""
    from concurrent.futures import as_completed

    from tgmae.lifetime import stop_workers, stoppable

    with executor as pool:
        try:
            clip = pool.submit(stoppable, prepare_clip, study, paths) if clip_later else None
            recon = pool.submit(stoppable, run_recon_check, study, paths, quick)
            waiting = [c for c in order if clip is not None and _needs_clip(c[0])]
            futures = {c: pool.submit(stoppable, run_cell, study, paths, *c, quick) for c in order if c not in waiting}
            if clip is not None:
                clip.result()
                futures.update({c: pool.submit(stoppable, run_cell, study, paths, *c, quick) for c in waiting})
            for done in as_completed(futures.values()):
                record = done.result()
                log.info("study: done %s / %s / seed %d", record["masking"], record["objective"], record["seed"])
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the cells stop too (their locks released), none starts
            stop_workers(pool)
            raise
        return [futures[c].result() for c in cells], recon.result()


# `--quick`: a CI-sized study whatever the YAML says (num_videos, clip_steps, one seed, its own folder);
# run_configs(quick=True) also runs every phase for 1 epoch at batch 8, and the reconstruction check
# runs QUICK_RECON_STEPS (unless a key=value says otherwise). The videos' frames and size
# stay: the phases' clip geometry must fit them, and at 40 videos they cost seconds.
QUICK = {"num_videos": 40, "clip_steps": 60}


def quick_values(study: StudyConfig) -> dict:
    """The keys `--quick` sets over `study` (the defaults or the YAML): QUICK, the first seed, and
    out_dir + "_quick", so a quick study never runs in (or next to the runs of) the full one."""
    return QUICK | {"seeds": study.seeds[:1], "out_dir": study.out_dir.rstrip("/") + "_quick",
                    "recon_check_steps": min(study.recon_check_steps, QUICK_RECON_STEPS)}


def load_study(config: Optional[str] = None, overrides: Sequence[str] = (), quick: bool = False) -> StudyConfig:
    """`tgmae study [-c CONFIG] [--quick] [key=value ...]`: defaults < YAML < `quick_values` < overrides
    (`key+=[...]` extends a list key). ConfigError naming the key or the file."""
    own = read_config_file(config) if config else {}
    if isinstance(own.get("maskings"), dict):  # study_phases.yaml's layout: masking name -> overrides
        raise ConfigError(f"{config} holds the phases' defaults (maskings as name -> overrides, as {PHASES_FILE.name}), "
                          "not a study config: give a study YAML such as configs/study_synthetic.yaml (its maskings: a "
                          "list of names)")
    study = load_config(cls=StudyConfig, base=own, prefix="study")
    for key in ("pretrain", "probe", "finetune"):  # the file's own entries set a key once, as the command line's do
        if key in own:
            refuse_repeated_overrides([str(v) for v in getattr(study, key)], where=f"in study.{key} of {config}")
    if quick:
        study = dataclasses.replace(study, **quick_values(study))
    values, given, mine = to_dict(study), {}, {}
    for text in overrides:
        keys, value = parse_override(text)
        key, append = ".".join(keys), False
        if key.endswith("+"):
            key, append = key[:-1].strip(), True
        if key not in values:
            from_dict(StudyConfig, {key: value}, prefix="study")  # raises: unknown config key study.<key> (known: ...)
        base = given.get(key, values[key])
        if not append and key in ("pretrain", "probe", "finetune") and base:
            log.warning("study.%s=... replaces the %d default %s overrides; %s+=[...] adds to them",
                        key, len(base), key, key)
        if append:  # key+=[...]: extend the list the defaults / YAML / earlier overrides give
            if not isinstance(base, list):
                raise ConfigError(f"override {text!r}: study.{key} is not a list; use {key}=...")
            value = base + (value if isinstance(value, list) else [value])
        if key in ("pretrain", "probe", "finetune") and isinstance(value, list):
            # the user's own entries set a key once; over the defaults' entries the later one wins
            mine[key] = (mine.get(key, []) if append else []) + value[len(base) if append else 0:]
            refuse_repeated_overrides([str(v) for v in mine[key]], where=f"in study.{key}")
        given[key] = value
    return from_dict(StudyConfig, values | given, prefix="study")
