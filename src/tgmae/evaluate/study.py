"""`tgmae study`: the paper's comparison (Tables 1-2, Figure 4) on one command.

For every (masking, objective, seed): pretrain -> linear probe -> finetune -> zero-shot retrieval,
then one report (`report.md`, `report.html`, `results.json`, loss curves, mask and
reconstruction figures). The synthetic set gives it data and ground truth offline, and a CLIP
trained by `tgmae train-clip` on that set gives TGM a meaningful text-image space.

Every phase leaves its own outputs and the study skips phases whose outputs exist, so a killed
study resumes where it stopped. Runs are ordinary run directories: `tgmae report` reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from tgmae.config import ConfigError, load_config
from tgmae.evaluate.attributes import attribute_probe

log = logging.getLogger("tgmae")

# masking name -> config overrides; ratios as in the paper's comparison (Table 2).
MASKINGS: dict[str, list[str]] = {
    "tube": ["masking.name=tube", "masking.ratio=0.75"],
    "random": ["masking.name=random", "masking.ratio=0.75"],
    "mgm": ["masking.name=mgm", "masking.ratio=0.75", "data.with_motion=true"],
    "tgm": ["masking.name=tgm", "masking.ratio=0.6", "masking.select=top"],
    "tgm_bottom": ["masking.name=tgm", "masking.ratio=0.6", "masking.select=bottom"],
}
OBJECTIVES = ("mae", "contrastive", "mae+contrastive")


@dataclass
class StudyConfig:
    """What the study compares and how big each phase is (YAML: configs/study_synthetic.yaml)."""

    out_dir: str = "runs/study"
    num_videos: int = 360  # synthetic videos (80/20 train/val)
    video_frames: int = 48
    video_size: int = 128
    distractors: int = 0  # synthetic difficulty: at most this many distractor shapes (2 = the original set)
    distractor_speed: float = 1.0  # ... and their speed (docs/sanity.md: the measured curve)
    maskings: list[str] = field(default_factory=lambda: ["tube", "mgm", "tgm", "tgm_bottom"])
    objectives: list[str] = field(default_factory=lambda: ["mae", "mae+contrastive"])
    seeds: list[int] = field(default_factory=lambda: [0])
    clip_steps: int = 600  # `tgmae train-clip` steps for the study's CLIP
    mask_mode: str = "dense"  # TGM similarity precompute: dense | faithful
    retrieval: str = "classes"  # zero-shot retrieval texts: classes | captions
    pretrain: list[str] = field(default_factory=list)  # dotted overrides of every pretraining run
    probe: list[str] = field(default_factory=list)  # ... of every linear probe
    finetune: list[str] = field(default_factory=list)  # ... of every finetuning run

    def __post_init__(self) -> None:
        unknown = [m for m in self.maskings if m not in MASKINGS]
        if unknown:
            raise ConfigError(f"study.maskings: unknown {unknown}; known: {sorted(MASKINGS)}")
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad:
            raise ConfigError(f"study.objectives: unknown {bad}; known: {list(OBJECTIVES)}")
        if not self.seeds:
            raise ConfigError("study.seeds: at least one seed")
        if self.mask_mode not in ("dense", "faithful"):
            raise ConfigError(f"study.mask_mode={self.mask_mode!r}: expected dense|faithful")
        if self.retrieval not in ("classes", "captions"):
            raise ConfigError(f"study.retrieval={self.retrieval!r}: expected classes|captions")


# Defaults of each phase, under the study YAML's own overrides: tiny models, short schedules.
PRETRAIN_BASE = [
    "data.format=csv", "data.train_annotations=train.csv", "data.val_annotations=val.csv",
    "data.num_frames=8", "data.frame_stride=4", "data.image_size=64", "data.flip=false",
    "data.crop_scales=[1.0, 0.875, 0.75]", "data.num_workers=2", "model.preset=tiny",
    "model.norm_pix_loss=false",  # flat synthetic shapes: the normalized target is mostly codec noise
    "optim.lr=1e-3", "optim.warmup_epochs=1", "train.epochs=10", "train.batch_size=16",
    "train.log_every=2", "checkpoint.every_steps=1000", "log.progress=false",
    "contrastive.text_projection=true", "contrastive.proj_dim=64",
]
# Absolute lrs: the recipes' batch/256 scaling assumes ImageNet-scale epochs; on a few hundred
# videos it leaves the probe's LARS head and the finetuned model barely moved from their init.
PROBE_BASE = ["train.epochs=100", "train.batch_size=32", "optim.lr=1.0", "optim.warmup_epochs=10",
              "log.progress=false"]
FINETUNE_BASE = [
    "train.epochs=6", "train.batch_size=16", "optim.lr=2e-3", "optim.warmup_epochs=1", "eval.mixup=0.0",
    "eval.cutmix=0.0",
    "data.rand_augment=null", "data.random_erase=0.0", "data.test_temporal_views=2",
    "data.finetune_crop=multiscale",  # the 8-100% random-resized crop often cuts the actor out (issue 14)
    "data.test_spatial_views=1", "log.progress=false",
]


@dataclass
class StudyPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def mask_cache(self) -> Path:
        return self.root / "similarity_cache"

    def run(self, masking: str, objective: str, seed: int) -> Path:
        return self.root / "runs" / f"{masking}__{objective.replace('+', '_')}__s{seed}"


def prepare_shared(study: StudyConfig, paths: StudyPaths, quick: bool) -> None:
    """Synthetic set, the study's CLIP, caption embeddings and TGM similarity maps (once)."""
    from tgmae.data.synthetic import generate_synthetic_dataset

    if not (paths.data / "meta.json").is_file():
        info = generate_synthetic_dataset(paths.data, num_videos=study.num_videos, frames=study.video_frames,
                                          size=study.video_size, seed=0, workers=0,
                                          distractors=study.distractors, distractor_speed=study.distractor_speed)
        log.info("study: synthetic set %d videos in %.1fs", info.num_videos, info.seconds)
    check_data_settings(study, paths)
    if not (paths.clip / "config.json").is_file():
        from tgmae.masking.clip_train import ClipTrainConfig, train_clip

        summary = train_clip(paths.data, paths.clip, ClipTrainConfig(steps=study.clip_steps), progress=False)
        log.info("study: CLIP trained: %s", {k: summary[k] for k in list(summary)[:6]})
    if any(MASKINGS[m][0] == "masking.name=tgm" for m in study.maskings):
        _precompute_masks(study, paths)


def check_data_settings(study: StudyConfig, paths: StudyPaths) -> None:
    """Refuse a synthetic set written with other settings than the study's (ConfigError naming
    the key): its runs would report numbers of another data set. Sets written before the
    difficulty knobs existed hold the original 2 distractors at speed 1."""
    meta = json.loads((paths.data / "meta.json").read_text())
    have = {"num_videos": meta["num_videos"], "video_frames": meta["frames"], "video_size": meta["height"],
            "distractors": meta.get("distractors", 2), "distractor_speed": meta.get("distractor_speed", 1.0)}
    for key, value in have.items():
        if value != getattr(study, key):
            raise ConfigError(f"study.{key}={getattr(study, key)} but {paths.data} holds a set with {value}: "
                              f"use another study.out_dir or delete {paths.data}")


def _precompute_masks(study: StudyConfig, paths: StudyPaths) -> None:
    from tgmae.masking.clip_features import load_clip
    from tgmae.masking.precompute import PrecomputeOptions, precompute
    from tgmae.data.annotations import load_annotations

    records, _ = load_annotations("csv", paths.data, "annotations.csv")
    videos = [(r.video_id, r.path) for r in records]
    opts = PrecomputeOptions(mode=study.mask_mode, frame_stride=2, image_size=64, patch_size=16, map_scale=2)
    counts = precompute(videos, str(paths.data / "captions.jsonl"), load_clip(str(paths.clip)),
                        paths.mask_cache, opts, progress=False)
    log.info("study: similarity maps %s", counts)


def run_configs(study: StudyConfig, paths: StudyPaths, masking: str, objective: str, seed: int,
                quick: bool):
    """(pretrain, probe, finetune) RunConfigs of one study cell."""
    from tgmae.evaluate.recipes import FINETUNE_RECIPE, PROBE_RECIPE, with_recipe

    run = paths.run(masking, objective, seed)
    shared = [f"data.root={paths.data}", f"train.seed={seed}",
              f"captions.file={paths.data / 'captions.jsonl'}", f"captions.clip_model={paths.clip}"]
    quick_pre = ["train.epochs=1", "train.batch_size=8"] if quick else []
    quick_eval = ["train.epochs=1", "train.batch_size=8"] if quick else []
    masking_overrides = list(MASKINGS[masking])
    if masking.startswith("tgm"):
        masking_overrides.append(f"masking.cache_dir={paths.mask_cache}")
    pre = load_config(None, PRETRAIN_BASE + shared + masking_overrides + [
        f"contrastive.objective={objective}", f"train.output_dir={run / 'pretrain'}"] + study.pretrain + quick_pre)
    geometry = [f"data.{k}={v}" for k, v in (("num_frames", pre.data.num_frames), ("image_size", pre.data.image_size),
                                              ("frame_stride", pre.data.frame_stride))]
    eval_shared = PRETRAIN_BASE[:4] + shared + geometry + ["data.flip=false", "data.num_workers=2",
                                                          f"model.pretrained={run / 'pretrain' / 'model.safetensors'}"]
    probe = with_recipe(PROBE_RECIPE, None, eval_shared + PROBE_BASE + [f"train.output_dir={run / 'probe'}"]
                        + study.probe + quick_eval)
    fine = with_recipe(FINETUNE_RECIPE, None, eval_shared + FINETUNE_BASE + [f"train.output_dir={run / 'finetune'}"]
                       + study.finetune + quick_eval)
    return pre, probe, fine


def _num_classes(paths: StudyPaths) -> int:
    return len(json.loads((paths.data / "meta.json").read_text())["classes"])


def run_cell(study: StudyConfig, paths: StudyPaths, masking: str, objective: str, seed: int,
             quick: bool) -> dict:
    """One (masking, objective, seed): each phase skipped when its results already exist."""
    from tgmae.evaluate.finetune import finetune
    from tgmae.evaluate.probe import linear_probe
    from tgmae.evaluate.retrieval import evaluate_retrieval, load_video_text_model
    from tgmae.train.pretrain import pretrain

    pre, probe, fine = run_configs(study, paths, masking, objective, seed, quick)
    run = paths.run(masking, objective, seed)
    record_path = run / "study_record.json"
    if record_path.is_file():  # done; records of earlier versions get the fields added since
        record = json.loads(record_path.read_text())
        record.setdefault("num_classes", _num_classes(paths))
        record.setdefault("num_val", json.loads((run / "probe" / "probe_results.json").read_text()).get("num_val"))
        if "attribute_probe" not in record:
            record["attribute_probe"] = attribute_probe(run / "probe", paths.data)
            record_path.write_text(json.dumps(record, indent=2))
        return record
    t0 = time.perf_counter()
    if not (run / "pretrain" / "model.safetensors").is_file():
        pretrain(pre)
    t_pre = time.perf_counter() - t0
    if not (run / "probe" / "probe_results.json").is_file():
        linear_probe(probe)
    if not (run / "finetune" / "finetune_results.json").is_file():
        finetune(fine)
    retrieval = {}
    if objective != "mae":
        from tgmae.train import checkpoint as ckpt

        latest = ckpt.find_latest(run / "pretrain" / "checkpoints")
        model = load_video_text_model(latest)
        ret_cfg = dataclasses.replace(probe, train=dataclasses.replace(probe.train, output_dir=str(run / "retrieval")))
        result = evaluate_retrieval(ret_cfg, model=model, mode=study.retrieval, progress=False)
        retrieval = result.summary()
    probe_res = json.loads((run / "probe" / "probe_results.json").read_text())
    fine_res = json.loads((run / "finetune" / "finetune_results.json").read_text())
    record = {
        "masking": masking, "objective": objective, "seed": seed,
        "mask_ratio": pre.masking.ratio,
        "num_classes": _num_classes(paths),
        "finetune_top1": fine_res.get("test_top1", fine_res.get("val_top1")),
        "linear_probe_top1": probe_res["top1"],
        "num_val": probe_res.get("num_val"),
        "attribute_probe": attribute_probe(run / "probe", paths.data),
        "retrieval": retrieval,
        "pretrain_seconds": t_pre, "total_seconds": time.perf_counter() - t0,
        "run_dir": str(run),
    }
    record_path.write_text(json.dumps(record, indent=2))
    return record


def run_study(study: StudyConfig, quick: bool = False) -> Path:
    paths = StudyPaths(Path(study.out_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare_shared(study, paths, quick)
    records = []
    cells = [(m, o, s) for s in study.seeds for m in study.maskings for o in study.objectives]
    from tqdm.auto import tqdm

    for masking, objective, seed in tqdm(cells, desc="study", unit="run"):
        log.info("study: %s / %s / seed %d", masking, objective, seed)
        records.append(run_cell(study, paths, masking, objective, seed, quick))
    from tgmae.evaluate.report import write_report

    write_report(records, paths.root, title="tgmae study on the synthetic set",
                 seconds=time.perf_counter() - t0)
    return paths.root


def main(argv: Sequence[str]) -> int:
    from tgmae.config import from_dict

    parser = argparse.ArgumentParser(prog="tgmae study", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="study YAML (configs/study_synthetic.yaml)")
    parser.add_argument("--quick", action="store_true", help="CI-sized: tiny set, 1-epoch phases")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the study config")
    args = parser.parse_args(list(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import yaml

    values: dict = {}
    if args.config:
        values = yaml.safe_load(Path(args.config).read_text()) or {}
    for text in args.overrides:
        key, _, raw = text.partition("=")
        values[key] = yaml.safe_load(raw)
    if args.quick:
        values.setdefault("num_videos", 40)
        values.setdefault("clip_steps", 60)
    try:
        study = from_dict(StudyConfig, values, prefix="study")
    except ConfigError as e:
        parser.exit(2, f"tgmae study: config error: {e}\n")
    try:
        out = run_study(study, quick=args.quick)
    except ConfigError as e:
        parser.exit(2, f"tgmae study: config error: {e}\n")
    print(f"study report: {out / 'report.md'}")
    return 0
