"""Finetuning as a Task for the shared loop: a VideoClassifier on a pretrained encoder.

`tgmae finetune -c configs/... model.pretrained=PATH` (VideoMAE's recipe, `recipes.FINETUNE_RECIPE`,
under the YAML and overrides): layer-wise lr decay (`optim.layer_decay`), drop path
(`model.drop_path`), label smoothing, mixup / cutmix (`eval.*`), warmup + cosine; top-1 / top-5 (top-5 with more than 5 classes)
on the single-view val set after every epoch; at the end `classifier.safetensors` and a
multi-view test (`data.test_temporal_views` x `data.test_spatial_views`) in `test_results.json`.
PATH: ours, an official VideoMAE .pth, a transformers directory, or a training checkpoint/run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tgmae.atomic import atomic_write_text
from tgmae.config import RunConfig
from tgmae.evaluate.metrics import topk_text
from tgmae.evaluate.mixup import mix_batch, soft_cross_entropy
from tgmae.evaluate.multiview import ClassificationResult, evaluate_classifier, refuse_checkpoint_training_videos
from tgmae.models.classifier import VideoClassifier, classifier_arch
from tgmae.train.loop import StepOutput, Trainer
from tgmae.train.optim import param_groups
from tgmae.train.precision import run_precision
from tgmae.weights.classifier import build_classifier, save_classifier
from tgmae.weights.model_card import own_run_id, section_settings
from tgmae.train.resume import locks_run_folder, refuse_other_kind
from tgmae.data.dataset import refuse_training_videos_as_test, refuse_unlabelled, subset_annotations

log = logging.getLogger("tgmae")


def head_dropout(cfg: RunConfig) -> float:
    """Dropout before the classifier head (`eval.head_dropout` where the config has it, else 0)."""
    return float(cfg.eval.head_dropout)


def resolve_num_classes(cfg: RunConfig, dataset: Dataset) -> int:
    """eval.num_classes, else the dataset's class names, else max label + 1 over its records;
    ConfigError naming eval.num_classes when it is below the data's classes or, with named
    classes, other than their count (`evaluate.classes.resolve_num_classes`)."""
    from tgmae.evaluate.classes import data_class_count, resolve_num_classes as resolve

    names = list(getattr(dataset, "class_names", None) or [])
    records = getattr(dataset, "records", None)
    top = max((int(r.label) for r in records), default=-1) if records else data_class_count(dataset) - 1
    return resolve(cfg.eval.num_classes, names, top)


class FinetuneTask:
    """batch {video [B, C, T, H, W], label [B]} -> cross-entropy (soft targets under mixup/cutmix).

    train_data / val_data: datasets to use instead of the ones `cfg.data` names (tests, the study);
    val_data None and no `data.val_annotations` = no per-epoch evaluation.
    """

    name = "finetune"
    find_unused_parameters = False

    def __init__(self, cfg: RunConfig, train_data: Optional[Dataset] = None, val_data: Optional[Dataset] = None,
                 num_classes: Optional[int] = None) -> None:
        self.cfg = cfg
        self._train = train_data
        self._val = val_data
        self._num_classes = num_classes
        self.inputs_fingerprint: Optional[str] = None  # model.pretrained's encoder digest, set by build_model

    # -- data ------------------------------------------------------------------------------------
    def train_dataset(self) -> Dataset:
        if self._train is None:
            from tgmae.data.dataset import build_dataset

            self._train = build_dataset(self.cfg.data, "train", augment="finetune", seed=self.cfg.train.seed)
        return self._train

    def val_dataset(self) -> Optional[Dataset]:
        if self._val is None and subset_annotations(self.cfg.data, "val"):
            from tgmae.data.dataset import build_dataset

            self._val = build_dataset(self.cfg.data, "val", train=False, seed=self.cfg.train.seed)
        return self._val

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._num_classes = resolve_num_classes(self.cfg, self.train_dataset())
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        return list(getattr(self.train_dataset(), "class_names", None) or [])

    # -- model -----------------------------------------------------------------------------------
    def build_model(self) -> VideoClassifier:
        c = self.cfg
        common = dict(head_init_scale=c.eval.head_init_scale, dropout=head_dropout(c))
        if c.model.pretrained:
            from tgmae.models.arch import check_checkpoint_geometry, size_from_checkpoint
            from tgmae.weights.sources import load_encoder_source

            src = load_encoder_source(c.model.pretrained, num_heads=c.model.num_heads)
            check_checkpoint_geometry(c.model, src.arch, c.model.pretrained)
            # kept in every checkpoint: a resume refuses other weights under the same path
            self.inputs_fingerprint = src.digest()
            if note := size_from_checkpoint(c.model, src.arch):
                log.info("%s: %s", c.model.pretrained, note)
            model = build_classifier(src, self.num_classes, num_frames=c.data.num_frames,
                                     image_size=c.data.image_size, drop_path=c.model.drop_path, **common)
        else:
            from tgmae.models.arch import arch_from_config

            log.warning("model.pretrained is empty: finetuning from random initialization")
            arch = classifier_arch(arch_from_config(c.model, c.data.num_frames, c.data.image_size))
            model = VideoClassifier(arch, self.num_classes, **common)
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        o = self.cfg.optim
        return param_groups(model.named_parameters(), o.weight_decay, skip=model.no_weight_decay(),
                            layer_id=model.layer_id, num_layers=model.depth, layer_decay=o.layer_decay)

    # -- step / evaluation -----------------------------------------------------------------------
    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        e = self.cfg.eval
        video, labels = batch["video"], batch["label"].long()
        if e.mixup > 0 or e.cutmix > 0:
            mixed = mix_batch(video, labels, self.num_classes, mixup_alpha=e.mixup, cutmix_alpha=e.cutmix,
                              smoothing=e.label_smoothing)
            logits = model(mixed.video)
            loss = soft_cross_entropy(logits, mixed.targets)
            return StepOutput(loss, {"mix_lambda": mixed.lam})
        logits = model(video)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=e.label_smoothing)
        return StepOutput(loss, {"train_top1": (logits.argmax(dim=1) == labels).float().mean().detach()})

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Single-view top-1 / top-5 on the val set (all ranks take part; results are global)."""
        val = self.val_dataset()
        if val is None:
            return {}
        res = self.test(model, val)
        top5 = {} if res.top5 is None else {"val_top5": res.top5}
        return {"val_top1": res.top1, **top5, "val_loss": res.loss}

    def test(self, model: nn.Module, dataset: Dataset) -> ClassificationResult:
        """Scores of `model` on `dataset`, its classes matched by name to the training set's."""
        device = next(model.parameters()).device
        return evaluate_classifier(model, dataset, batch_size=self.cfg.train.batch_size,
                                   precision=run_precision(self.cfg, device),  # the run's, kept on resume
                                   num_workers=self.cfg.data.num_workers, device=device, strict=self.cfg.eval.strict,
                                   head_names=self.class_names, head="the training set (data.train_annotations)",
                                   data=self.cfg.data.val_annotations or "the test set")

    def check_classes(self, *datasets: Optional[Dataset]) -> None:
        """At set-up: the head's class count (eval.num_classes) and the test sets' classes, which
        must all be among the training set's (ConfigError / ClassMismatchError, naming them); a class
        no training video has is one warning naming it."""
        from tgmae.evaluate.classes import check_head_classes

        where = self.cfg.data.val_annotations or "the test set"
        check_head_classes(self.train_dataset(), [(ds, where) for ds in datasets], num_classes=self.num_classes,
                           train_where=f"data.train_annotations={self.cfg.data.train_annotations}")


def require_readable(datasets: Sequence[Optional[Dataset]], workers: int = 0) -> None:
    """eval.strict: every video the evaluation will read must be readable (and long enough for
    its dataset's clips); raises VideoLoadError naming the first few (CLI: one line, exit 2)."""
    from tgmae.data.check import unreadable_records
    from tgmae.data.dataset import VideoLoadError

    bad, seen, total = [], set(), 0
    for ds in datasets:
        records = getattr(ds, "records", None)
        if records is None:
            continue
        todo = [r for r in records if (r.path, r.start_frame, r.end_frame, ds.min_frames) not in seen]
        seen.update((r.path, r.start_frame, r.end_frame, ds.min_frames) for r in todo)
        total += len(todo)
        bad += [f"{b.path}: {b.reason}" for b in unreadable_records(todo, ds.min_frames, max(1, workers))]
    if bad:
        raise VideoLoadError(f"eval.strict=true: {len(bad)} of {total} evaluation videos cannot be read (set "
                             f"eval.strict=false to score the readable ones and list these): "
                             + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))


@dataclass
class FinetuneResult:
    output_dir: Path
    classifier_path: Optional[Path]  # rank 0 only
    history: list[dict]
    test: Optional[ClassificationResult]  # multi-view test; None without a test set


@locks_run_folder
def finetune(cfg: RunConfig, hooks=None, *, train_data: Optional[Dataset] = None,
             val_data: Optional[Dataset] = None, test_data: Optional[Dataset] = None,
             num_classes: Optional[int] = None) -> FinetuneResult:
    """Finetune, save `classifier.safetensors`, then run the multi-view test.

    test_data: the multi-view test set; default `MultiViewDataset` over `data.val_annotations`
    (none when that is empty). Writes `test_results.json` and `finetune_results.json` (rank 0).
    A training, val or test set without any label (a test list) is refused first (ConfigError,
    `data.dataset.refuse_unlabelled`).
    """
    from tgmae.evaluate.multiview import FINETUNE, refuse_other_results
    from tgmae.weights.checkpoint import IGNORE_CONFIG

    refuse_other_kind(cfg, FinetuneTask.name)  # another kind of run's folder is named as such, before its files
    # a test that `tgmae evaluate` wrote here is not replaced by this run's
    refuse_other_results(Path(cfg.train.output_dir), FINETUNE, replace=cfg.checkpoint.resume == IGNORE_CONFIG)
    # lists without labels (a test list), before any video is opened or step trained (re-trial 29B T2)
    refuse_unlabelled(cfg.data, "train", train_data, use="finetuning trains on them")
    given = [d for d in (val_data, test_data) if d is not None]
    for scored in given + ([None] if len(given) < 2 else []):  # None: the list cfg names (the other set's)
        refuse_unlabelled(cfg.data, "val", scored, use="finetuning scores its val and test videos against them")
    task = FinetuneTask(cfg, train_data, val_data, num_classes)
    if test_data is None and subset_annotations(cfg.data, "val"):
        from tgmae.data.dataset import build_dataset

        test_data = build_dataset(cfg.data, "val", multi_view=True, seed=cfg.train.seed)
    task.check_classes(task.val_dataset(), test_data)  # fail before training, not after it
    for scored in (task.val_dataset(), test_data):  # never a test on the training videos (nor the pretraining's)
        if scored is not None:
            refuse_training_videos_as_test(cfg.data, scored, task.train_dataset())
            refuse_checkpoint_training_videos(cfg, scored)
    if cfg.eval.strict:
        require_readable([task.val_dataset(), test_data], cfg.data.num_workers)
    trainer = Trainer(task, cfg, hooks=hooks)
    if cfg.model.pretrained and trainer.dist.is_main:  # here, not in build_model: FSDP gathers build it again
        log.info("finetuning the encoder of %s", cfg.model.pretrained)
    fit = trainer.fit()  # builds the model first
    out, is_main = fit.output_dir, trainer.dist.is_main
    names = task.class_names
    # saved before the test: a test that fails leaves the trained model
    # with the clip settings it is trained at: they travel with the file (convert, export-hf, evaluate)
    path = save_classifier(fit.model, out / "classifier.safetensors", names, data=section_settings("data", cfg.data),
                           run_id=own_run_id(out)) if is_main else None
    test = task.test(fit.model, test_data) if test_data is not None else None
    if is_main:
        summary: dict[str, Any] = {"classifier": str(path), "num_classes": task.num_classes}
        val = [r for r in fit.history if "val_top1" in r]
        if val:
            summary.update({k: val[-1][k] for k in ("val_top1", "val_top5") if k in val[-1]})
        if test is not None:
            from tgmae.evaluate.multiview import write_test_results

            write_test_results(test, out, f"{test_data.num_temporal}x{test_data.num_spatial}"
                               if hasattr(test_data, "num_temporal") else None, written_by=FINETUNE)
            if test.top5 is not None:
                summary["test_top5"] = test.top5
            summary.update(test_top1=test.top1, test_views=test.num_views,
                           test_mean_class_accuracy=test.mean_class_accuracy, test_videos=test.num_videos,
                           test_unreadable=test.num_unreadable)
            log.info("multi-view test: %s (%d videos x %d views)", topk_text(test.top1, test.top5),
                     test.num_videos, test.num_views)
        atomic_write_text(out / "finetune_results.json", json.dumps(summary, indent=2))
    return FinetuneResult(out, path, fit.history, test)
