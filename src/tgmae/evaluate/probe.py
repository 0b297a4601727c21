"""Linear probe on a frozen encoder's cached features: MAE's protocol on the shared loop, or CLIP's.

MAE (`recipes.PROBE_RECIPE`): mean-pooled features of the centre clip / centre crop, cached by
`evaluate.features`; BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal std 0.01) trained
with LARS or SGD (`eval.probe_optimizer`), lr 0.1 x batch/256 (floor `optim.lr_floor`), no weight
decay, warmup + cosine; val top-1 / top-5 every epoch; results in `probe_results.json`.
`eval.probe_optimizer=lbfgs` (CLIP, Radford et al. 2021): L-BFGS multinomial logistic regression in
float64 (`evaluate.logistic`), L2 from `eval.probe_l2` by `eval.probe_folds`-fold CV (seed
`train.seed`); adds `l2` and `cv_top1` to the results and writes `probe_head.safetensors`
(weight [D, K], bias [K], mean [D], std [D]; logits = ((x - mean) / std) @ weight + bias).
Every probe writes the val videos' `test_predictions.csv` (`evaluate.predictions`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tgmae.atomic import atomic_path, atomic_write_text
from tgmae.config import ConfigError, OptimConfig, RunConfig, save_config
from tgmae.evaluate.lars import LARS
from tgmae.evaluate.logistic import LogisticFit, fit_logistic, select_l2
from tgmae.evaluate.metrics import reported_ks, topk_accuracy, topk_text
from tgmae.train.loop import StepOutput, Trainer
from tgmae.train.optim import param_groups, peak_lr
from tgmae.weights import checkpoint as ckpt
from tgmae.weights.files import require_pretrained
from tgmae.weights.model_card import own_run_id
from tgmae.train.resume import locks_run_folder
from tgmae.data.dataset import build_dataset, refuse_training_videos_as_test, refuse_unlabelled, subset_annotations

log = logging.getLogger("tgmae")

HEAD_FILE = "probe_head.safetensors"  # the lbfgs probe's fitted head
LOOP = "loop (LARS / SGD)"  # the linear probe trained on the shared loop (`_probe_kind`)
PROBED = "the checkpoint whose encoder is probed"  # what model.pretrained must name


def probe_keys(kind: str) -> tuple[str, ...]:
    """The `eval.*` keys only this kind of probe (`_probe_kind`: k-NN, L-BFGS, attentive, LOOP) reads."""
    from tgmae.config import EvalConfig

    attentive = tuple(f"eval.{f.name}" for f in dataclasses.fields(EvalConfig) if f.name.startswith("attentive_"))
    return {"k-NN": ("eval.knn_k", "eval.knn_temperature"), "L-BFGS": ("eval.probe_l2", "eval.probe_folds"),
            "attentive": attentive}.get(kind, ())


def unused_probe_keys(kind: str) -> tuple[str, ...]:
    """The `eval.*` keys a probe of `kind` never reads (the other kinds' knobs): a rerun or resume
    in its folder may change them."""
    own = set(probe_keys(kind))
    other = [k for o in ("k-NN", "L-BFGS", "attentive", LOOP) if o != kind for k in probe_keys(o) if k not in own]
    return tuple(other) + (("eval.probe_optimizer",) if kind in ("k-NN", "attentive") else ())


class ProbeHead(nn.Module):
    """features [B, D] -> logits [B, K]: BatchNorm1d without affine (eps 1e-6), then Linear."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(features))


class FeatureDataset(Dataset):
    """Cached features as a dataset: {features [D], label, index, load_failures}."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"{features.shape[0]} feature rows but {labels.shape[0]} labels")
        self.features = features.float()
        self.labels = labels.long()
        self.unreadable: list[dict] = []  # videos left out of the features: {index, video_id, label, reason}
        self.video_ids: list[str] = [str(i) for i in range(len(self.labels))]  # of each row (probe_features)
        self.encoder = ""  # digest of the encoder weights that made them (probe_features; "" = not known)
        self.videos = ""  # `videos_fingerprint` of its videos' files (probe_features; "" = not known)

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "label": self.labels[i], "index": i, "load_failures": 0}


def build_probe_optimizer(groups: list[dict], kind: str, optim_cfg: OptimConfig) -> torch.optim.Optimizer:
    """LARS (momentum 0.9, trust 0.001; biases and norms skip the adaptation) or SGD (momentum 0.9)."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if kind == "sgd":  # `eval.probe_optimizer`, validated by the config (lbfgs fits without an optimizer)
        return torch.optim.SGD(clean, lr=optim_cfg.base_lr, momentum=0.9, weight_decay=optim_cfg.weight_decay)
    return LARS(clean, lr=optim_cfg.base_lr, weight_decay=optim_cfg.weight_decay, momentum=0.9,
                trust_coefficient=0.001)


def tensors_fingerprint(parts: Sequence[Optional[tuple[torch.Tensor, ...]]], num_classes: int) -> str:
    """sha256 over each part's tensors (shape, dtype, bytes; None for a missing part) and the class count."""
    h = hashlib.sha256(f"classes={num_classes}".encode())
    for part in parts:
        if part is None:
            h.update(b"none")
            continue
        for t in part:
            t = t.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# what the loop probes' `features_fingerprint` covers, one name per part (`resume.input_changes`)
PROBE_INPUTS = ("model.pretrained's weights", "the train / val lists (rows, labels, video files)")


def features_fingerprint(train: FeatureDataset, val: Optional[FeatureDataset], num_classes: int) -> str:
    """"DIGEST.WEIGHTS.LISTS", kept in the loop probes' checkpoints: DIGEST, the `tensors_fingerprint`
    of the train / val features (or token grids) and labels, is what a resume compares (as before
    the parts: older checkpoints resume); then sha256 of the encoder weights' digest and of each
    set's rows (video ids), labels and video files, so the refusal names which changed (`PROBE_INPUTS`;
    neither: the features alone, e.g. in-memory videos, and both are named) (re-trial 26B M1)."""
    sets = (train, val)
    digest = tensors_fingerprint([(d.features, d.labels) if d is not None else None for d in sets], num_classes)
    lists = [None if d is None else [d.video_ids, d.labels.tolist(), d.videos] for d in sets]
    return ".".join([digest] + [hashlib.sha256(json.dumps(x).encode()).hexdigest() for x in (train.encoder, lists)])


def probe_step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
    """A probe's training step: cross-entropy of model(inputs) -> logits [B, K] against labels [B]
    (no smoothing), with the batch's top-1 as a metric."""
    logits = model(inputs)
    labels = labels.long()
    loss = F.cross_entropy(logits.float(), labels)
    return StepOutput(loss, {"train_top1": (logits.argmax(dim=1) == labels).float().mean().detach()})


class ProbeTask:
    """batch {features [B, D], label [B]} -> cross-entropy of the linear head."""

    name = "probe"
    find_unused_parameters = False
    inputs_named = PROBE_INPUTS  # `inputs_fingerprint`'s parts

    def __init__(self, cfg: RunConfig, train: FeatureDataset, val: Optional[FeatureDataset], num_classes: int):
        self.cfg = cfg
        self.train = train
        self.val = val
        self.num_classes = num_classes
        # The loop stores this in every checkpoint and refuses to resume on other features
        # (e.g. new weights written over the same model.pretrained path).
        self.inputs_fingerprint = features_fingerprint(train, val, num_classes)
        self.class_names: list[str] = []  # label order; set by linear_probe, kept in checkpoints
        self.unused_keys = unused_probe_keys(LOOP)  # a resume may change the other probes' knobs

    def build_model(self) -> ProbeHead:
        return ProbeHead(self.train.features.shape[1], self.num_classes)

    def train_dataset(self) -> Dataset:
        return self.train

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model.named_parameters(), self.cfg.optim.weight_decay)

    def build_optimizer(self, groups: list[dict], optim_cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
        return build_probe_optimizer(groups, self.cfg.eval.probe_optimizer, optim_cfg)

    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        return probe_step(model, batch["features"], batch["label"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.val is None:
            return {}
        return {f"val_{k}": v for k, v in score_probe(model, self.val).items()}


@torch.no_grad()
def probe_logits(model: nn.Module, data: FeatureDataset, batch_size: int = 4096) -> torch.Tensor:
    """logits [N, K] float32 on the CPU of a probe head on a feature set (eval mode: BN running
    statistics)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = torch.cat([model(f.to(device)).float().cpu() for f in data.features.split(batch_size)])
    model.train(was_training)
    return logits


@torch.no_grad()
def score_probe(model: nn.Module, data: FeatureDataset, batch_size: int = 4096) -> dict[str, float]:
    """{top1, top5, loss} of a probe head on a feature set (eval mode: BN running statistics);
    top5 only with more than 5 classes."""
    return score_logits(probe_logits(model, data, batch_size), data.labels)


def score_logits(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits [N, K], labels [N] -> {top1, top5, loss}; top5 only with more than 5 classes."""
    logits = logits.float().cpu()
    acc = topk_accuracy(logits, labels, reported_ks(logits.shape[1]))
    return {f"top{k}": v for k, v in acc.items()} | {"loss": float(F.cross_entropy(logits, labels))}


@dataclass
class ProbeResult:
    output_dir: Path
    top1: float
    top5: Optional[float]  # None with 5 classes or fewer
    best_top1: float
    history: list[dict]
    model: nn.Module | LogisticFit  # features [B, D] (attentive: tokens [B, L, D]) -> logits [B, K]
    best_epoch: Optional[int] = None  # epoch (0-based) of best_top1; None without a val set (or for lbfgs)
    val_left_out: int = 0  # val videos left out (unreadable), of
    val_videos: int = 0  # the val videos listed


def val_counts(val: Optional["FeatureDataset"]) -> dict[str, int]:
    """{val_left_out, val_videos} of a val feature set (its unreadable videos and all it lists)."""
    if val is None:
        return {"val_left_out": 0, "val_videos": 0}
    return {"val_left_out": len(val.unreadable), "val_videos": len(val) + len(val.unreadable)}


def frozen_probe_encoder(cfg: RunConfig, device: torch.device,
                         given: Optional[Collection[str]] = None) -> tuple[nn.Module, str]:
    """(`cfg.model.pretrained`'s encoder, frozen, in eval mode on `device`, built for
    `cfg.data`'s clip geometry; its weights' digest). given: the dotted keys the user set; the
    model keys among the others become the weights' (`with_checkpoint_model`; None: none), set on
    `cfg.model` in place, as `size_from_checkpoint`'s head count, so config.yaml records them.
    ConfigError without model.pretrained or when a model key set does not fit the checkpoint."""
    from tgmae.evaluate.extract import frozen_encoder
    from tgmae.models.arch import check_checkpoint_geometry, size_from_checkpoint, with_checkpoint_model
    from tgmae.weights.sources import load_encoder_source

    require_pretrained(cfg.model.pretrained, PROBED)
    src = load_encoder_source(cfg.model.pretrained, num_heads=cfg.model.num_heads)
    cfg.model, note = with_checkpoint_model(cfg.model, src.arch, given)
    if note:
        log.info("model.pretrained=%s: %s", cfg.model.pretrained, note)
    check_checkpoint_geometry(cfg.model, src.arch, cfg.model.pretrained)
    if note := size_from_checkpoint(cfg.model, src.arch):
        log.info("%s: %s", cfg.model.pretrained, note)
    return frozen_encoder(src, cfg.data.num_frames, cfg.data.image_size, device), src.digest()


def refuse_unlabelled_lists(cfg: RunConfig, train_data: Optional[Dataset], val_data: Optional[Dataset]) -> None:
    """Every probe first (linear, L-BFGS, k-NN, attentive; before any checkpoint, video or feature is
    read): ConfigError naming the list's key when the training set (`train_data`, else
    data.train_annotations) or the val set (`val_data`, else the val list) has unlabelled videos:
    none labelled (a test list; re-trial 29B S2: k-NN top-1 0.0, exit 0) or some, naming the first
    (re-trial 29B T1), as `data.dataset.refuse_unlabelled` refuses them."""
    refuse_unlabelled(cfg.data, "train", train_data, use="a probe trains on them")
    refuse_unlabelled(cfg.data, "val", val_data, use="a probe scores the val videos against them")


def probe_features(cfg: RunConfig, train_data: Optional[Dataset] = None, val_data: Optional[Dataset] = None,
                   cache_dir: Optional[str | Path] = None, progress: bool = True, tokens: bool = False,
                   num_classes: Optional[int] = None, check: Optional[Callable[[Any, Dataset], None]] = None,
                   check_train: Optional[Callable[[FeatureDataset], None]] = None,
                   given: Optional[Collection[str]] = None) -> tuple[FeatureDataset, Optional[FeatureDataset], list[str]]:
    """(train, val or None, class names): features of `cfg.model.pretrained`'s frozen encoder, via the cache.

    Datasets default to `cfg.data`'s annotations with the evaluation transform; in-memory datasets are
    cached only under an explicit `cache_dir`, keyed by length and encoder. Unreadable videos are left
    out and listed in `unreadable` (`eval.strict=true`: `VideoLoadError`). tokens: token grids [N, L, D]
    instead of means [N, D], and the default val set is multi-view ([N, V, L, D]). Classes are checked
    before extraction as finetuning checks them (`evaluate.classes.check_head_classes`), or after it for
    in-memory datasets without class names or records. check(arch, train_data): the caller's own
    refusals (ConfigError) of the encoder's `VideoMAEArch` and the training set, also before
    anything is extracted or any folder made. check_train(train features): the refusals that hang
    on the readable training videos, before the val set is extracted (a training set with unreadable
    videos is not cached: no new file or folder). given: as `frozen_probe_encoder`'s."""
    from tgmae.distributed import init_distributed
    from tgmae.evaluate.classes import check_head_classes, data_class_count
    from tgmae.evaluate.features import POOLING, cached_features, feature_cache_key
    from tgmae.evaluate.multiview import refuse_checkpoint_training_videos, views_per_sample
    from tgmae.train.precision import resolve_precision

    device = init_distributed(cfg.train.device).device
    encoder, digest = frozen_probe_encoder(cfg, device, given)  # reads only: the checkpoint's geometry first
    refuse_other_weights(cfg, digest)  # before anything is extracted
    from_cfg = {"train": train_data is None, "val": val_data is None}
    if train_data is None:
        train_data = build_dataset(cfg.data, "train", train=False, seed=cfg.train.seed)
    if val_data is None and subset_annotations(cfg.data, "val"):
        val_data = build_dataset(cfg.data, "val", train=False, seed=cfg.train.seed, multi_view=tokens)
    if val_data is not None:  # never a probe scored on its training videos (nor the pretraining's)
        refuse_training_videos_as_test(cfg.data, val_data, train_data)
        refuse_checkpoint_training_videos(cfg, val_data)
    if data_class_count(train_data) > 0:  # fail before extracting, as finetune fails before training
        check_head_classes(train_data, [(val_data, cfg.data.val_annotations or "the val set")],
                           num_classes=num_classes, configured=cfg.eval.num_classes,
                           train_where=f"data.train_annotations={cfg.data.train_annotations}")
    if check is not None:
        check(encoder.arch, train_data)
    root = Path(cache_dir) if cache_dir else Path(cfg.eval.feature_cache or Path(cfg.train.output_dir) / "features")
    precision = resolve_precision(cfg.train.precision, device)

    def get(subset: str, data: Dataset) -> FeatureDataset:
        views = views_per_sample(data)
        view_tag = f"{data.num_temporal}x{data.num_spatial}" if views > 1 else ""
        if from_cfg[subset]:
            key, inputs = feature_cache_key(digest, cfg.data, subset, "tokens" if tokens else POOLING, view_tag,
                                            videos=[r.path for r in getattr(data, "records", [])], precision=precision,
                                            classes=list(getattr(data, "class_names", None) or []))
            path: Optional[Path] = root / f"{subset}-{key}.safetensors"
        elif cache_dir is not None:
            inputs = {"encoder": digest, "subset": subset, "in_memory": len(data), "num_frames": cfg.data.num_frames,
                      "image_size": cfg.data.image_size, "precision": precision, **({"tokens": True} if tokens else {})}
            key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]
            path = root / f"{subset}-{key}.safetensors"
        else:
            path, inputs = None, {}
        skipped: list = []
        feats, labels = cached_features(
            encoder, data, path, inputs, strict=cfg.eval.strict, unreadable=skipped,
            batch_size=max(1, cfg.train.batch_size // views), precision=precision,
            num_workers=cfg.data.num_workers, device=device, progress=progress and cfg.log.progress,
            **({"tokens": True} if tokens else {}))
        features = FeatureDataset(feats, labels)
        features.unreadable = skipped
        features.video_ids = scored_video_ids(data, skipped)
        features.encoder = digest
        features.videos = inputs.get("data", {}).get("videos_sha256", "")
        return features

    train = get("train", train_data)
    if check_train is not None:
        check_train(train)
    val = get("val", val_data) if val_data is not None else None
    names = list(getattr(train_data, "class_names", None) or [])
    if val is not None:
        val.labels = val_labels_in_train_order(names, train, val_data, val.labels,
                                               cfg.data.val_annotations or "the val set")
    return train, val, names


def scored_video_ids(data: Dataset, unreadable: list[dict]) -> list[str]:
    """Video ids of a dataset's rows that have features (in order, the unreadable left out):
    `records[i].video_id` of a `tgmae.data.dataset` dataset, else the row number."""
    records = getattr(data, "records", None)
    left_out = {u["index"] for u in unreadable}
    return [records[i].video_id if records is not None else str(i) for i in range(len(data)) if i not in left_out]


def write_val_predictions(out: Path, val: Optional[FeatureDataset], scores: Optional[torch.Tensor],
                          names: list[str], voted: Optional[torch.Tensor] = None) -> None:
    """`out/test_predictions.csv` (`tgmae.evaluate.predictions`) of the val videos: scores [N, K]
    logits or probabilities, row i = val.video_ids[i]. Class names only when they count K.
    voted [N, K] bool (k-NN): only these classes are predictions (the others' slots stay empty)."""
    from tgmae.evaluate.predictions import write_predictions

    if val is None or scores is None:
        return
    write_predictions(out / "test_predictions.csv", val.video_ids, val.labels, scores,
                      names if len(names) == scores.shape[1] else (), voted=voted)


def val_labels_in_train_order(train_names: list[str], train: FeatureDataset, val_data: Dataset,
                              labels: torch.Tensor, where: str) -> torch.Tensor:
    """Val labels [N] as ids of the training set's classes (the head's), matched by name
    (`evaluate.classes`; ClassMismatchError naming val classes the training set lacks)."""
    from tgmae.evaluate.classes import align_classes, data_class_count

    val_names = list(getattr(val_data, "class_names", None) or [])
    k_train = max(len(train_names), int(train.labels.max()) + 1 if len(train) else 0)
    classes = align_classes(train_names, k_train, val_names, data_class_count(val_data, labels),
                            "the training set (data.train_annotations)", where)
    if classes.order is None:
        return labels
    return classes.order[labels.long()] if len(labels) else labels


@locks_run_folder
def linear_probe(cfg: RunConfig, hooks=None, *, train_data: Optional[Dataset] = None,
                 val_data: Optional[Dataset] = None, num_classes: Optional[int] = None,
                 cache_dir: Optional[str | Path] = None, given: Optional[Collection[str]] = None) -> ProbeResult:
    """Extract (or load) features, train the probe with the shared loop (or fit it with L-BFGS,
    `eval.probe_optimizer=lbfgs`: `hooks` then go unused), write probe_results.json. given: as
    `probe_features`."""
    from tgmae.evaluate.classes import resolve_num_classes

    refuse_other_probe(cfg)
    refuse_unlabelled_lists(cfg, train_data, val_data)
    lbfgs = cfg.eval.probe_optimizer == "lbfgs"
    if lbfgs:  # before extraction: a folder of another kind of run (the loop refuses those itself)
        refuse_other_run(Path(cfg.train.output_dir))
    # L-BFGS: its CV folds; LARS: the loop's batch and lrs (which the loop would refuse only after extraction).
    # Against the listed videos before any is read, again against the readable ones before the val set.
    fits, readable = (check_folds, "training features") if lbfgs else (check_batch, "training videos")
    train, val, names = probe_features(
        cfg, train_data, val_data, cache_dir, num_classes=num_classes,
        check=lambda arch, data: fits(cfg, len(data), "training videos"),
        check_train=lambda t: fits(cfg, len(t), readable, len(t.unreadable)), given=given)
    if num_classes is None:
        num_classes = resolve_num_classes(cfg.eval.num_classes, names, int(train.labels.max()) if len(train) else -1)
    if cfg.eval.probe_optimizer == "lbfgs":
        return logistic_probe(cfg, train, val, num_classes, names)
    # The features are in memory: DataLoader worker processes would only add start-up cost.
    probe_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=0))
    task = ProbeTask(probe_cfg, train, val, num_classes)
    task.class_names = names  # kept in its checkpoints: a resume refuses other names / order
    trainer = Trainer(task, probe_cfg, hooks=hooks)
    fit = trainer.fit()
    if trainer.dist.is_main:  # a finished run reused after an lbfgs probe in this folder: config.yaml says lars again
        save_config(probe_cfg, fit.output_dir / "config.yaml")
    logits = probe_logits(fit.model, val) if val is not None else None
    final = score_logits(logits, val.labels) if val is not None else {"top1": float("nan")}
    best, best_epoch = best_of(fit.history, final)
    if trainer.dist.is_main:
        (fit.output_dir / HEAD_FILE).unlink(missing_ok=True)  # an lbfgs head of an earlier run is not this one
        write_val_predictions(fit.output_dir, val, logits, names)
        # last: probe_results.json says the probe is done (the study skips it then)
        write_results(cfg, fit.output_dir, train, val, final, best, best_epoch)
        log.info("linear probe: %s (best top-1 %.4f, epoch %s)", topk_text(final["top1"], final.get("top5")), best,
                 best_epoch)
    return ProbeResult(fit.output_dir, final["top1"], final.get("top5"), best, fit.history, fit.model, best_epoch,
                       **val_counts(val))


def best_of(history: list[dict], final: dict[str, float]) -> tuple[float, Optional[int]]:
    """(best val top-1, its epoch) over the loop's records (the first of equal bests); without
    records (final top-1, None)."""
    scored = [r for r in history if "val_top1" in r]
    best_record = max(scored, key=lambda r: r["val_top1"]) if scored else None
    return (best_record["val_top1"], best_record["epoch"]) if best_record else (final["top1"], None)


def write_results(cfg: RunConfig, out: Path, train: FeatureDataset, val: Optional[FeatureDataset],
                  final: dict[str, float], best: float, best_epoch: Optional[int], **extra: Any) -> None:
    """`out/probe_results.json`: the final and best val scores, the inputs' sizes, `extra` keys."""
    summary = {"top1": final["top1"], **({"top5": final["top5"]} if "top5" in final else {}),
               "best_top1": best, "best_epoch": best_epoch,
               "probe": cfg.eval.probe, "optimizer": {"linear": cfg.eval.probe_optimizer, "attentive": "adamw"}.get(
                   cfg.eval.probe), "feature_dim": int(train.features.shape[-1]),
               "num_train": len(train), "num_val": len(val) if val is not None else 0,
               "num_unreadable_train": len(train.unreadable),
               "num_unreadable_val": len(val.unreadable) if val is not None else 0,
               "unreadable": {"train": train.unreadable, "val": val.unreadable if val is not None else []},
               "pretrained": cfg.model.pretrained, **({"encoder": train.encoder} if train.encoder else {}), **extra}
    atomic_write_text(out / "probe_results.json", json.dumps(summary, indent=2))


def logistic_probe(cfg: RunConfig, train: FeatureDataset, val: Optional[FeatureDataset],
                   num_classes: int, names: Sequence[str] = ()) -> ProbeResult:
    """CLIP's probe: L2 by CV on `train` (one value: no CV), L-BFGS fit on all of `train`, scored on `val`;
    writes config.yaml, probe_results.json and probe_head.safetensors. ConfigError for more folds than
    training rows or labels past num_classes; CheckpointError for a folder holding another kind of run."""
    from safetensors.torch import save_file

    from tgmae.distributed import init_distributed

    out = Path(cfg.train.output_dir)
    refuse_other_run(out)
    top = max(int(d.labels.max()) for d in (train, val) if d is not None and len(d))
    if top >= num_classes:
        raise ConfigError(f"eval.num_classes={num_classes}: the features' labels reach {top}")
    grid = sorted(cfg.eval.probe_l2)  # distinct: the config refuses repeats
    cv: dict[float, float] = {}
    check_folds(cfg, len(train), "training features", len(train.unreadable))
    if len(grid) == 1:
        l2 = grid[0]
    else:
        l2, cv = select_l2(train.features, train.labels, grid, cfg.eval.probe_folds, cfg.train.seed, num_classes)
        log.info("linear probe (L-BFGS): L2 %g chosen by %d-fold CV on the training features (top-1 per L2: %s)",
                 l2, cfg.eval.probe_folds, ", ".join(f"{k:g}: {v:.4f}" for k, v in cv.items()))
    head = fit_logistic(train.features, train.labels, l2, num_classes)
    logits = head.logits(val.features) if val is not None else None
    final = score_logits(logits, val.labels) if val is not None else {"top1": float("nan")}
    if init_distributed(cfg.train.device).is_main:  # every rank fits alike; one writes
        out.mkdir(parents=True, exist_ok=True)
        own_run_id(out)  # every run folder's (`model_card.run_of`), as a training loop's
        save_config(cfg, out / "config.yaml")
        with atomic_path(out / HEAD_FILE, own_folder=True) as tmp:  # save_file makes a temp of its own
            save_file(head.state_dict(), str(tmp), metadata={"l2": repr(l2), "format": "tgmae-logistic-probe"})
        write_val_predictions(out, val, logits, list(names))
        # last: probe_results.json says the probe is done (the study skips it then)
        write_results(cfg, out, train, val, final, final["top1"], None, l2=l2, cv_top1=cv,
                      cv_folds=cfg.eval.probe_folds if cv else None)
        log.info("linear probe (L-BFGS, L2 %g): %s", l2, topk_text(final["top1"], final.get("top5")))
    history = [{f"val_{k}": v for k, v in final.items()} | {"l2": l2}]
    return ProbeResult(out, final["top1"], final.get("top5"), final["top1"], history, head, None, **val_counts(val))


def check_batch(cfg: RunConfig, rows: int, what: str, unreadable: int = 0) -> None:
    """ConfigError naming train.batch_size when one batch of the LARS probe's loop (x accumulation
    x processes, as `Trainer` counts it) holds more than `rows` (`what`: the training videos;
    `unreadable`: the videos left out of those), or the loop's lr check at that batch (`peak_lr`:
    optim.min_lr / optim.warmup_lr above the peak)."""
    from tgmae.distributed import init_distributed

    accum, world = cfg.train.accum_steps, init_distributed(cfg.train.device).world_size
    peak_lr(cfg.optim, cfg.train.batch_size * accum * world)
    if cfg.train.batch_size * accum * world > rows:
        times = (f" x train.accum_steps={accum}" if accum > 1 else "") + (f" x {world} processes" if world > 1 else "")
        left = f" ({unreadable} unreadable left out)" if unreadable else ""
        raise ConfigError(f"train.batch_size={cfg.train.batch_size}{times}: more than the {rows} {what}{left}")


def check_folds(cfg: RunConfig, rows: int, what: str, unreadable: int = 0) -> None:
    """ConfigError naming eval.probe_folds when the L2 grid (two values or more) is chosen by more
    CV folds than `rows` (`what`: the listed training videos, or their features; `unreadable`:
    the videos left out of those)."""
    if len(cfg.eval.probe_l2) > 1 and cfg.eval.probe_folds > rows:
        left = f" ({unreadable} unreadable training videos left out)" if unreadable else ""
        raise ConfigError(f"eval.probe_folds={cfg.eval.probe_folds}: more folds than the {rows} {what}{left}")


def probe_kind(cfg: RunConfig) -> str:
    """The kind of probe `cfg` runs (`_probe_kind`: k-NN, L-BFGS, attentive or LOOP)."""
    return _probe_kind(cfg.eval.probe, cfg.eval.probe_optimizer if cfg.eval.probe == "linear" else None) or LOOP


def _probe_kind(probe: Optional[str], optimizer: Optional[str]) -> Optional[str]:
    """k-NN, attentive, L-BFGS or loop; None: unknown (results written before `optimizer` was)."""
    if probe == "knn":
        return "k-NN"
    if probe == "attentive":
        return "attentive"
    return None if optimizer is None else ("L-BFGS" if optimizer == "lbfgs" else LOOP)


def refuse_other_probe(cfg: RunConfig, checkpoints: bool = True) -> None:
    """CheckpointError when train.output_dir holds another kind of probe (eval.probe, or a linear one
    fitted the other way), unless checkpoint.resume=ignore_config. checkpoints=False: step checkpoints
    without results are left to the loop's run-kind check (the attentive probe). model.pretrained is
    found first (`require_pretrained`): a mistyped path is not a probe of other inputs
    (re-trial 26B M3)."""
    from tgmae.evaluate.multiview import PROBE, refuse_other_results

    require_pretrained(cfg.model.pretrained, PROBED)
    out = Path(cfg.train.output_dir)
    # its test_predictions.csv would replace those of a finetune run's or evaluate's test there
    refuse_other_results(out, PROBE, replace=cfg.checkpoint.resume == ckpt.IGNORE_CONFIG, predictions=False)
    stored_probe: Optional[str] = None
    stored: Optional[str] = None
    results = out / "probe_results.json"
    if results.is_file():
        try:
            saved = json.loads(results.read_text())
            stored_probe, stored = saved.get("probe") or "linear", saved.get("optimizer")
        except (OSError, ValueError, AttributeError):
            stored_probe, stored = None, None
    if stored is None and stored_probe in (None, "linear") and (out / HEAD_FILE).is_file():
        stored_probe, stored = "linear", "lbfgs"
    if (checkpoints and stored is None and stored_probe in (None, "linear")
            and ckpt.find_latest(out / "checkpoints") is not None):
        # an unfinished attentive probe is named as a probe (eval.probe), another kind of run as such
        stored_probe = "attentive" if checkpoint_task(out) == "attentive_probe" else None
        if stored_probe is None:
            refuse_other_run(out)
            stored_probe, stored = "linear", "lars"
    now_probe = cfg.eval.probe
    now = cfg.eval.probe_optimizer if now_probe == "linear" else None
    have, want = _probe_kind(stored_probe, stored), _probe_kind(now_probe, now)
    if cfg.checkpoint.resume == ckpt.IGNORE_CONFIG:
        return
    if have == want and results.is_file():
        _refuse_other_inputs(cfg, out, want)
    if have in (None, want):
        return
    what = (f"eval.probe: {stored_probe!r} -> {now_probe!r}" if stored_probe != now_probe
            else f"eval.probe_optimizer: {stored!r} -> {now!r}")
    raise ckpt.CheckpointError(
        f"train.output_dir={str(out)!r} holds a probe made with other settings ({what}): start a new run "
        f"with another train.output_dir, or replace it with checkpoint.resume={ckpt.IGNORE_CONFIG}")


def _refuse_other_inputs(cfg: RunConfig, out: Path, kind: Optional[str]) -> None:
    """CheckpointError when a finished probe's config.yaml differs in `data.*` keys that matter
    (`config_differences`), `model.pretrained`, eval.num_classes or, for the probes without a loop
    (k-NN, L-BFGS: the loop checks its own runs), the keys of `probe_keys(kind)` (and train.seed,
    which draws L-BFGS's CV folds; eval.probe_folds only when an L2 grid is cross-validated): its
    results would be replaced silently."""
    import yaml

    from tgmae.config import to_dict

    saved = out / "config.yaml"
    if not saved.is_file():
        return
    keys = {"model.pretrained", "eval.num_classes"} | set(probe_keys(kind) if kind in ("k-NN", "L-BFGS") else ())
    keys |= {"train.seed"} if kind == "L-BFGS" else set()
    if len(cfg.eval.probe_l2) < 2:  # one fixed L2: no cross-validation, its folds unused
        keys.discard("eval.probe_folds")  # (an L2 grid before differs in eval.probe_l2 itself)
    diffs = [d for d in ckpt.config_differences(yaml.safe_load(saved.read_text()) or {}, to_dict(cfg),
                                                to_dict(RunConfig())) if d[0].startswith("data.") or d[0] in keys]
    if diffs:
        what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
        raise ckpt.CheckpointError(
            f"train.output_dir={str(out)!r} holds a probe of other inputs or settings ({what}): start a new run with "
            f"another train.output_dir, or replace it with checkpoint.resume={ckpt.IGNORE_CONFIG}")


def refuse_other_weights(cfg: RunConfig, digest: str) -> None:
    """CheckpointError naming model.pretrained's weights when train.output_dir's probe_results.json was
    made by other encoder weights (its `encoder` digest; results written before it was kept are not
    checked): the same path holding another file would replace them silently (the loop probes'
    checkpoints refuse it by their inputs' fingerprint). checkpoint.resume=ignore_config replaces."""
    from tgmae.evaluate.multiview import read_results

    out = Path(cfg.train.output_dir)
    stored = read_results(out / "probe_results.json").get("encoder")
    if cfg.checkpoint.resume == ckpt.IGNORE_CONFIG or not stored or stored == digest:
        return
    raise ckpt.CheckpointError(
        f"train.output_dir={str(out)!r} holds a probe of other weights (model.pretrained's weights changed: "
        f"{cfg.model.pretrained}, digest {stored[:12]} -> {digest[:12]}): start a new run with another "
        f"train.output_dir, or replace it with checkpoint.resume={ckpt.IGNORE_CONFIG}")


def checkpoint_task(out: Path) -> Optional[str]:
    """The task name stored in `out/checkpoints`' latest checkpoint (None: none, or not kept)."""
    source = ckpt.find_latest(out / "checkpoints")
    return None if source is None else ckpt.load_checkpoint(source).extra.get("task")


def refuse_other_run(out: Path) -> None:
    """CheckpointError when `out/checkpoints` holds a run that is no probe (an lbfgs probe would
    overwrite its config.yaml); RunFolderError when `out` holds a run stopped before its first
    checkpoint (`locks.refuse_stopped_run`: a killed pretraining or attentive probe, whose metrics
    and marker the results would join; re-trial 32A S4)."""
    from tgmae.locks import refuse_stopped_run

    source = ckpt.find_latest(out / "checkpoints")
    if source is None:
        refuse_stopped_run(out, "train.output_dir", "a k-NN or L-BFGS probe")
        return
    loaded = ckpt.load_checkpoint(source)
    fits = {k.split(".")[0] for k in loaded.model_state} <= {"bn", "head"}
    ckpt.check_run_kind(source, loaded.extra.get("task"), ProbeTask.name, str(out), fits=fits)
