"""Classification testing: T temporal x S spatial views per video, softmax averaged per video.

Samples carry `video` [V, C, T, H, W] (`MultiViewDataset`) or [C, T, H, W] (V = 1); videos are
split across DDP ranks and gathered in memory (`evaluate.sharded`). `tgmae evaluate` tests
`model.pretrained` on `data.val_annotations` and writes `<train.output_dir>/test_results.json`
(top-1, top-5 with more than 5 classes, mean class accuracy, per class, `written_by`, `settings`);
another run's results there are refused naming the file and keys (`refuse_other_results`) unless
`checkpoint.resume=ignore_config`. Unreadable videos are left out and listed (`eval.strict=true`:
`VideoLoadError`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import ConfigError
from tgmae.errors import count
from tgmae.evaluate.classes import align_classes, data_class_count
from tgmae.evaluate.metrics import per_class_accuracy, reported_ks, topk_accuracy, topk_text
from tgmae.evaluate.sharded import default_device, map_eval, split_unreadable
from tgmae.train.precision import autocast
from tgmae.train.resume import locks_run_folder

log = logging.getLogger("tgmae")


@dataclass
class ClassificationResult:
    """Per-video results of a test pass; `probs` [N, K] and `labels` [N] in dataset order."""

    top1: float
    top5: Optional[float]  # None with 5 classes or fewer (it would always be 1.0)
    mean_class_accuracy: float
    per_class: list[float]  # accuracy per class id (NaN: class absent from the test set)
    loss: float  # NLL of the view-averaged probabilities
    num_videos: int
    num_views: int
    load_failures: int
    probs: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    unreadable: list[dict] = field(default_factory=list)  # left out: {index, video_id, label, reason}
    class_names: list[str] = field(default_factory=list)  # name of each column of probs (`evaluate.classes`)
    video_ids: list[str] = field(default_factory=list)  # id of each scored video, in probs' row order

    @property
    def num_unreadable(self) -> int:
        return len(self.unreadable)

    def summary(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready dict (per-class accuracies keyed by class name when given). `num_videos`
        counts the scored (readable) videos; `per_class_videos` gives each class's scored and
        unreadable counts, so a class whose videos could not be read stays visible."""
        k = len(self.per_class)
        class_names = list(class_names) or self.class_names
        names = list(class_names) if len(class_names) == k else [str(i) for i in range(k)]
        scored = torch.bincount(self.labels, minlength=k).tolist()
        missing = [0] * k
        for u in self.unreadable:
            if 0 <= u["label"] < k:
                missing[u["label"]] += 1
        top5 = {} if self.top5 is None else {"top5": self.top5}
        return {
            "top1": self.top1, **top5, "mean_class_accuracy": self.mean_class_accuracy,
            "loss": self.loss, "num_videos": self.num_videos, "num_unreadable": self.num_unreadable,
            "num_views": self.num_views, "load_failures": self.load_failures,
            "per_class": {n: (None if math.isnan(a) else a) for n, a in zip(names, self.per_class)},
            "per_class_videos": {n: {"scored": s, "unreadable": m} for n, s, m in zip(names, scored, missing)
                                 if s or m},
            "unreadable": [{**u, "class": names[u["label"]] if 0 <= u["label"] < k else None} for u in self.unreadable],
        }


def views_per_sample(dataset: Dataset) -> int:
    """V of a dataset's samples, from its view counts when it declares them, else 1."""
    t, s = getattr(dataset, "num_temporal", None), getattr(dataset, "num_spatial", None)
    return int(t) * int(s) if t and s else 1


@torch.no_grad()
def predict_views(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, precision: str = "fp32",
                  num_workers: int = 0, device: Optional[torch.device] = None,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """{probs [N, K], label [N], index [N], views [N], load_failures [N]}: per video, the softmax
    averaged over its views (and `unreadable` [N] / `load_error` from a dataset of
    `tgmae.data.dataset`: rows of videos that could not be read hold no prediction to score).
    batch_size counts clips per forward pass."""
    device = device or default_device(model)
    per_loader = max(1, batch_size // views_per_sample(dataset))
    # (unreadable videos come back as placeholders marked `unreadable`, never as another video)

    def fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        video = batch["video"]
        if video.dim() == 5:  # single clip per video
            video = video.unsqueeze(1)
        b, v = video.shape[:2]
        clips = video.flatten(0, 1)
        logits = []
        for chunk in clips.split(batch_size):
            with autocast(precision, device):
                logits.append(model(chunk).float())
        probs = torch.cat(logits).softmax(dim=-1).view(b, v, -1).mean(dim=1)
        return {"probs": probs, "views": torch.full((b,), v, dtype=torch.int64)}

    return map_eval(model, dataset, fn, batch_size=per_loader, device=device, num_workers=num_workers,
                    progress=progress, desc="testing")


def classification_result(probs: torch.Tensor, labels: torch.Tensor, views: int = 1,
                          load_failures: int = 0, unreadable: Sequence[dict] = (),
                          class_names: Sequence[str] = (), video_ids: Sequence[str] = ()) -> ClassificationResult:
    """Metrics of view-averaged probabilities [N, K] against labels [N] (columns in the labels' class
    order; `class_names` names them)."""
    k = probs.shape[1]
    acc = topk_accuracy(probs, labels, reported_ks(k))
    per_class = per_class_accuracy(probs.argmax(dim=1), labels, k)
    present = per_class[~per_class.isnan()]
    nll = -torch.log(probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12)).mean()
    return ClassificationResult(
        top1=acc[1], top5=acc.get(5), mean_class_accuracy=float(present.mean()) if present.numel() else float("nan"),
        per_class=[float(a) for a in per_class], loss=float(nll), num_videos=int(labels.shape[0]),
        num_views=views, load_failures=load_failures, probs=probs, labels=labels, unreadable=list(unreadable),
        class_names=list(class_names), video_ids=list(video_ids))


def evaluate_classifier(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, precision: str = "fp32",
                        num_workers: int = 0, device: Optional[torch.device] = None,
                        progress: bool = False, strict: bool = False,
                        head_names: Optional[Sequence[str]] = None, head: str = "the classifier",
                        data: str = "the test set") -> ClassificationResult:
    """Test `model` (video [B, C, T, H, W] -> logits [B, K]) on `dataset`, all ranks together.

    The head's classes (`head_names`, default `model.class_names`) are matched to the dataset's
    `class_names` by name (`evaluate.classes.align_classes`: ClassMismatchError, naming `head` and
    `data`, for classes the head does not know). Only readable videos are scored; the others are
    in `result.unreadable`. strict: an unreadable video raises `VideoLoadError` instead."""
    if head_names is None:
        head_names = getattr(model, "class_names", ())
    data_names = list(getattr(dataset, "class_names", None) or [])
    k_head = getattr(getattr(model, "module", model), "num_classes", None)
    if k_head is not None:  # refused before any video is read (the assumed order is said after)
        align_classes(head_names, k_head, data_names, data_class_count(dataset), head, data, say=False)
    out = predict_views(model, dataset, batch_size=batch_size, precision=precision, num_workers=num_workers,
                        device=device, progress=progress)
    out, unreadable = split_unreadable(out, dataset, strict, "multi-view test")
    if not len(out["label"]):
        from tgmae.data.dataset import VideoLoadError

        raise VideoLoadError(f"none of the {len(unreadable)} test videos can be read: "
                             + "; ".join(u["reason"] for u in unreadable[:3]))
    classes = align_classes(head_names, out["probs"].shape[1], data_names, data_class_count(dataset, out["label"]),
                            head, data)
    ids = video_ids(dataset, out["index"])
    return classification_result(classes.apply(out["probs"]), out["label"], int(out["views"].max()),
                                 int(out["load_failures"].sum()), unreadable, classes.names, ids)


def video_ids(dataset: Dataset, index: torch.Tensor) -> list[str]:
    """The id of each dataset row in `index` [N] (its record's `video_id`, else the row number)."""
    records = getattr(dataset, "records", None)
    rows = [int(i) for i in index.tolist()]
    if records is None:
        return [str(i) for i in rows]
    return [str(getattr(records[i], "video_id", i)) for i in rows]


def refuse_test_of_training_videos(cfg, trains: bool = False) -> None:
    """ConfigError (`refuse_training_videos_as_test`) when the val/test list `cfg.data` names is made
    of the videos `cfg.model.pretrained` trained on: the list its run's saved config.yaml names, when
    it lies in such a run; else (a bare file, an HF folder: unknown) `data.train_annotations`, the
    best guess. trains: this command trains on `data.train_annotations` too (retrieve's aligned
    head), which is then checked as well. Reads annotation lists and that config, no weights."""
    from tgmae.data.dataset import refuse_training_videos_as_test

    known = refuse_checkpoint_training_videos(cfg, own_checked=trains)
    if trains or not known:
        refuse_training_videos_as_test(cfg.data)


def refuse_checkpoint_training_videos(cfg, test=None, own_checked: bool = True) -> bool:
    """The val/test set (`test`, else the list `cfg.data` names) against the list
    `cfg.model.pretrained`'s run trained on (its saved config), for finetune and the probes too: an
    encoder pretrained on the test videos is scored on them. own_checked: the caller checks
    `data.train_annotations` as well (the same list is then said once). Whether that run's config was read."""
    from tgmae.data.dataset import refuse_training_videos_as_test
    from tgmae.weights.model_card import find_run_dir, run_config

    run = find_run_dir(cfg.model.pretrained) if cfg.model.pretrained else None
    saved = run_config(run)[0] if run is not None else None
    if saved is not None:  # a config.yaml that does not read says nothing of the training videos
        where = f"{run / 'config.yaml'} (model.pretrained's run)"
        refuse_training_videos_as_test(cfg.data, test, trained_on=(saved.data, where), own_checked=own_checked)
    return saved is not None


def own_settings(checkpoint: str | Path, arch: Any = None, kind: str = "",
                 assumed: Collection[str] = ()) -> tuple[dict[str, Any], str]:
    """({data key: value} model.pretrained was trained with, where they come from): its run folder's
    config.yaml's `RUN_DATA_KEYS` (frames, image size, stride, sampling, mean, std), as `tgmae
    visualize` takes a run's own settings; else those recorded with its weights (our file's metadata,
    an export-hf folder's config.json `tgmae_data`: `model_card.known_settings`); else the frames
    and image size stored with its weights (`arch`, the `EncoderSource`'s; `kind` "official": a .pth,
    whose are a guess: none; `assumed`: the fields a conversion assumed, likewise left out), with a
    warning that its stride, sampling and normalization are not known (the config's are used)."""
    from tgmae.weights.model_card import known_settings

    known, where = known_settings(checkpoint)
    if known:
        tupled = {k: tuple(v) if isinstance(v, list) else v for k, v in known.items()}  # as DataConfig holds them
        return tupled, where if where.endswith("config.yaml") else f"recorded in {where}"
    if arch is None or kind == "official":
        return {}, ""
    log.warning("%s records no frame stride, sampling or normalization (a checkpoint outside a run, or one "
                "written by an older tgmae): the test uses the config's; set data.frame_stride, "
                "data.sampling, data.mean and data.std as it was finetuned", checkpoint)
    # a geometry a conversion assumed (`weights.official`) is a guess, not the model's: the config's stands
    stored = {k: getattr(arch, k) for k in ("num_frames", "image_size") if k not in assumed}
    return stored, f"the geometry stored in {checkpoint}"


def with_own_settings(cfg, given: Optional[Collection[str]], own: dict[str, Any], source: str,
                      use: str = "tested"):
    """`cfg` with model.pretrained's own data settings (`own`, from `source`) for each key the user did
    not set (`given`: dotted keys of -c and the overrides; None: all are set); the keys set to other
    values are kept (the encoder's positions are interpolated to other frames / sizes: a feature)
    and said in one warning naming both values, the ones taken in one log line. use: what the
    caller does with the model at those settings, as the warning says it ("tested", "read", ...)."""
    import dataclasses

    differ = {k: v for k, v in own.items() if getattr(cfg.data, k) != v}
    kept = [k for k in differ if given is None or f"data.{k}" in given]
    taken = {k: v for k, v in differ.items() if k not in kept}
    shown = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  # as the user writes it
    if kept:
        log.warning("%s: model.pretrained=%s is %s at the settings given, not those it was trained with "
                    "(%s); leave the keys unset for its own",
                    ", ".join(f"data.{k}={shown(getattr(cfg.data, k))} (its own: {shown(differ[k])})" for k in kept),
                    cfg.model.pretrained, use, source)
    if taken:
        log.info("model.pretrained=%s: %s, as it was trained (%s)", cfg.model.pretrained,
                 ", ".join(f"data.{k}={shown(v)}" for k, v in taken.items()), source)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **taken)) if taken else cfg


def with_run_settings(cfg, given: Optional[Collection[str]], use: str):
    """`cfg` with model.pretrained's own clip settings (its run's config.yaml, or those recorded with
    its weights: `own_settings`) for each data key the user did not set (`given`); `cfg` as it is
    without model.pretrained or `given` (a library caller: every key counts as set). For the
    commands that read a pretrained encoder (probe, extract, retrieve, finetune; `use`: as in
    `with_own_settings`): a config without a clip size read a 4-frame, 32-px model's videos at the
    defaults, 16 x 224 (re-trials 25 S2, 26A S2)."""
    if given is None or not cfg.model.pretrained:
        return cfg
    own, source = own_settings(cfg.model.pretrained)  # no weights read (no arch): no geometry guessed
    return with_own_settings(cfg, given, own, source, use) if own else cfg


def load_tested_classifier(cfg, given: Optional[Collection[str]] = None):
    """(the classifier `model.pretrained` names, eval mode, at the data settings of the test; `cfg` with
    its own settings where the user set none: data keys `with_own_settings`, model.preset / patch_size /
    tubelet_size / num_heads its weights' (`with_checkpoint_model`)). ConfigError when model.pretrained
    is empty or a model key set is not its weights' (`check_checkpoint_geometry`, naming the key)."""
    import dataclasses

    from tgmae.models.arch import check_checkpoint_geometry, with_checkpoint_model
    from tgmae.weights.classifier import build_classifier
    from tgmae.weights.files import require_pretrained
    from tgmae.weights.sources import load_encoder_source

    require_pretrained(cfg.model.pretrained, "a finetuned classifier to test")
    src = load_encoder_source(cfg.model.pretrained, num_heads=cfg.model.num_heads)  # an official .pth stores none
    cfg = with_own_settings(cfg, given, *own_settings(cfg.model.pretrained, src.arch, src.kind, src.assumed))
    model, note = with_checkpoint_model(cfg.model, src.arch, given)
    if note:
        log.info("model.pretrained=%s: %s", cfg.model.pretrained, note)
        cfg = dataclasses.replace(cfg, model=model)
    classifier = build_classifier(src, num_frames=cfg.data.num_frames, image_size=cfg.data.image_size,
                                  keep_head=True).eval()
    check_checkpoint_geometry(cfg.model, classifier.arch, cfg.model.pretrained)
    return classifier, cfg


@locks_run_folder
def evaluate_checkpoint(cfg, classifier: Optional[nn.Module] = None, *, progress: bool = True,
                        given: Optional[Collection[str]] = None) -> ClassificationResult:
    """Multi-view test of a classifier (given, or `cfg.model.pretrained`) on the val annotations.

    Every rank must call it; rank 0 writes `<train.output_dir>/test_results.json` (RunFolderError
    for a train.output_dir in a run's checkpoints, `locks.refuse_in_checkpoints`, or holding a run
    stopped before its first checkpoint, `locks.refuse_stopped_run`). A test list of
    training videos or without labels is refused first (ConfigError). given: the dotted keys the
    user set; model.pretrained's own data settings fill the others (`with_own_settings`; None: every
    key counts as set, a difference is only warned of).
    """
    from tgmae.data.dataset import build_dataset
    from tgmae.distributed import init_distributed, rank_world
    from tgmae.train.precision import resolve_precision

    refuse_test_of_training_videos(cfg)  # never a test on the training videos; before any folder or weights
    from tgmae.data.dataset import refuse_unlabelled

    refuse_unlabelled(cfg.data, "val", use="the test scores predictions against them")  # re-trial 29B T2
    dist_info = init_distributed(cfg.train.device)
    if rank_world()[0] == 0:  # fail before the test, not after it
        from tgmae.atomic import check_writable
        from tgmae.locks import refuse_in_checkpoints, refuse_stopped_run

        refuse_in_checkpoints(cfg.train.output_dir, "train.output_dir")  # beside a run, never in its checkpoints
        refuse_stopped_run(cfg.train.output_dir, "train.output_dir", "evaluate")  # nor beside one without any
        check_writable(Path(cfg.train.output_dir) / "test_results.json", keep_new_folders=False)  # refused: none made
    if classifier is None:
        classifier, cfg = load_tested_classifier(cfg, given)
    settings = test_settings(cfg)
    from tgmae.weights.sources import tensors_digest

    weights = tensors_digest(classifier.state_dict())  # other weights under the same path: other results
    if rank_world()[0] == 0:  # before the test: another run's results are not replaced
        from tgmae.weights.checkpoint import IGNORE_CONFIG

        refuse_other_results(Path(cfg.train.output_dir), EVALUATE, settings,
                             replace=cfg.checkpoint.resume == IGNORE_CONFIG, weights=weights)
    classifier = classifier.to(dist_info.device)
    dataset = build_dataset(cfg.data, "val", multi_view=True, seed=cfg.train.seed)
    where = dict(head=cfg.model.pretrained or "the classifier", data=cfg.data.val_annotations or "the test set")
    head_names = list(getattr(classifier, "class_names", []))
    precision = resolve_precision(cfg.train.precision, dist_info.device)
    result = evaluate_classifier(classifier, dataset, batch_size=cfg.train.batch_size, precision=precision,
                                 num_workers=cfg.data.num_workers, device=dist_info.device,
                                 progress=progress and cfg.log.progress, strict=cfg.eval.strict,
                                 head_names=head_names, **where)
    if rank_world()[0] == 0:
        out = Path(cfg.train.output_dir)
        summary = write_test_results(result, out, f"{dataset.num_temporal}x{dataset.num_spatial}",
                                     written_by=EVALUATE, settings=settings, weights=weights)
        log.info("multi-view test (%s views, %s): %s, mean class %.4f", summary["views"],
                 count(result.num_videos, "video"), topk_text(result.top1, result.top5), result.mean_class_accuracy)
        if result.unreadable:
            log.warning("%d of %d test videos could not be read and were not scored (listed in %s)",
                        result.num_unreadable, result.num_videos + result.num_unreadable, out / "test_results.json")
    return result


def write_test_results(result: ClassificationResult, out: Path, views: Optional[str] = None, *,
                       written_by: str = "", settings: Optional[dict[str, Any]] = None,
                       weights: str = "") -> dict[str, Any]:
    """`out/test_results.json` (the summary, + `views` "TxS", `written_by` the command, `settings`
    the test's, `test_settings`, `weights` the classifier's `tensors_digest`) and `out/test_predictions.csv` (per scored video: id, true label,
    top-5 labels and scores; `evaluate.predictions`). Returns the summary."""
    from tgmae.atomic import atomic_write_text
    from tgmae.evaluate.predictions import write_predictions

    summary = result.summary()
    if views is not None:
        summary["views"] = views
    if written_by:
        summary["written_by"] = written_by
    if settings is not None:
        summary["settings"] = settings
    if weights:
        summary["weights"] = weights
    atomic_write_text(out / "test_results.json", json.dumps(summary, indent=2))
    names = result.class_names if len(result.class_names) == result.probs.shape[1] else ()
    write_predictions(out / "test_predictions.csv", result.video_ids, result.labels, result.probs, names)
    return summary


EVALUATE, FINETUNE, PROBE = "tgmae evaluate", "tgmae finetune", "tgmae probe"  # `written_by` of test_results.json
RESULT_FILES = ("test_results.json", "test_predictions.csv")


def test_settings(cfg) -> dict[str, Any]:
    """What decides a multi-view test's numbers: the classifier (`model.pretrained` as given) and
    the `data` keys that choose the videos and the pixels of their views; {key: value}."""
    from tgmae.data.dataset import subset_annotations

    d = cfg.data
    root = str(Path(d.root).resolve()) if d.root else ""
    return {"model.pretrained": str(cfg.model.pretrained), "data.format": d.format, "data.root": root,
            "data.val_annotations": subset_annotations(d, "val"), "data.split": d.split,
            "data.num_frames": d.num_frames, "data.frame_stride": d.frame_stride, "data.sampling": d.sampling,
            "data.image_size": d.image_size, "data.test_temporal_views": d.test_temporal_views,
            "data.test_spatial_views": d.test_spatial_views, "data.mean": list(d.mean), "data.std": list(d.std)}


def read_results(path: Path) -> dict:
    """A results JSON as a dict; {} when it cannot be read or is not an object."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def setting_diffs(stored: dict, settings: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each of `settings` that `stored` records otherwise."""
    return [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in settings.items() if stored.get(k) != v]


REPLACE_WAYS = "choose another train.output_dir, or replace it with checkpoint.resume=ignore_config"


def not_replaced(out: Path, name: str, what: str, ways: str = REPLACE_WAYS) -> ConfigError:
    """The refusal to replace `out/name` (`what`: whose results they are), with the ways out (`ways`:
    the caller's own, e.g. a study's)."""
    return ConfigError(f"train.output_dir={str(out)!r} holds {name} {what}: it is not replaced; {ways}")


def refuse_other_results(out: Path, writer: str, settings: Optional[dict[str, Any]] = None,
                         replace: bool = False, predictions: bool = True, weights: str = "") -> None:
    """ConfigError naming the file (and the differing keys) when `out` holds test results `writer` with
    `settings` did not write (no `written_by`: `FINETUNE`'s). settings None: any of writer's are its
    own. replace: asked to replace them. predictions: a stray test_predictions.csv is another run's
    too (False for a probe, whose own they are). weights: the classifier's digest; results of other
    weights (model.pretrained's file replaced under the same path) are refused too (results
    written before the digest was kept are not checked)."""
    if replace:
        return
    results = out / RESULT_FILES[0]
    if not results.is_file():
        stray = out / RESULT_FILES[1]
        if predictions and stray.is_file():
            raise not_replaced(out, stray.name, "of another test")
        return
    old = read_results(results)
    by = old.get("written_by", FINETUNE)
    diffs = setting_diffs(old.get("settings") or {}, settings) if by == writer and settings is not None else []
    stored = old.get("weights") if by == writer else None
    if weights and stored and stored != weights:
        diffs.append(f"model.pretrained's weights changed: digest {stored[:12]} -> {weights[:12]}")
    if by != writer or diffs:
        raise not_replaced(out, results.name, f"written by {by}" if by != writer else
                           "of other settings (" + "; ".join(diffs) + ")")
