"""Classification testing: T temporal x S spatial views per video, softmax averaged per video.

Works on any dataset whose samples carry `video` [V, C, T, H, W] (`tgmae.data.dataset.
MultiViewDataset`: 5 x 3 views by default, 2 x 3 TSN views for SSv2) or a single clip
[C, T, H, W] (V = 1, the per-epoch validation of finetuning). Videos are split across DDP ranks
and the per-video probabilities gathered in memory (`evaluate.sharded`).

`tgmae evaluate -c CONFIG.yaml model.pretrained=CLASSIFIER` tests a finetuned classifier on
`data.val_annotations` with `data.test_temporal_views` x `data.test_spatial_views` views and
writes `<train.output_dir>/test_results.json` (top-1, top-5 with more than 5 classes, mean class
accuracy, per class).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from tgmae.evaluate.metrics import per_class_accuracy, reported_ks, topk_accuracy, topk_text
from tgmae.evaluate.sharded import default_device, map_dataset
from tgmae.train.precision import autocast

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

    def summary(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready dict (per-class accuracies keyed by class name when given)."""
        names = list(class_names) if len(class_names) == len(self.per_class) else [str(i) for i in range(len(self.per_class))]
        top5 = {} if self.top5 is None else {"top5": self.top5}
        return {
            "top1": self.top1, **top5, "mean_class_accuracy": self.mean_class_accuracy,
            "loss": self.loss, "num_videos": self.num_videos, "num_views": self.num_views,
            "load_failures": self.load_failures,
            "per_class": {n: (None if math.isnan(a) else a) for n, a in zip(names, self.per_class)},
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
    averaged over its views. batch_size counts clips per forward pass."""
    device = device or default_device(model)
    was_training = model.training
    model.eval()
    per_loader = max(1, batch_size // views_per_sample(dataset))

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

    try:
        return map_dataset(dataset, fn, batch_size=per_loader, device=device, num_workers=num_workers,
                           progress=progress, desc="testing")
    finally:
        model.train(was_training)


def classification_result(probs: torch.Tensor, labels: torch.Tensor, views: int = 1,
                          load_failures: int = 0) -> ClassificationResult:
    """Metrics of view-averaged probabilities [N, K] against labels [N]."""
    k = probs.shape[1]
    acc = topk_accuracy(probs, labels, reported_ks(k))
    per_class = per_class_accuracy(probs.argmax(dim=1), labels, k)
    present = per_class[~per_class.isnan()]
    nll = -torch.log(probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12)).mean()
    return ClassificationResult(
        top1=acc[1], top5=acc.get(5), mean_class_accuracy=float(present.mean()) if present.numel() else float("nan"),
        per_class=[float(a) for a in per_class], loss=float(nll), num_videos=int(labels.shape[0]),
        num_views=views, load_failures=load_failures, probs=probs, labels=labels)


def evaluate_classifier(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, precision: str = "fp32",
                        num_workers: int = 0, device: Optional[torch.device] = None,
                        progress: bool = False) -> ClassificationResult:
    """Test `model` (video [B, C, T, H, W] -> logits [B, K]) on `dataset`, all ranks together."""
    out = predict_views(model, dataset, batch_size=batch_size, precision=precision, num_workers=num_workers,
                        device=device, progress=progress)
    return classification_result(out["probs"], out["label"], int(out["views"].max()),
                                 int(out["load_failures"].sum()))


def evaluate_checkpoint(cfg, classifier: Optional[nn.Module] = None, *, progress: bool = True) -> ClassificationResult:
    """Multi-view test of a classifier (given, or `cfg.model.pretrained`) on the val annotations.

    Every rank must call it; rank 0 writes `<train.output_dir>/test_results.json`.
    """
    from tgmae.data.dataset import build_dataset
    from tgmae.evaluate.classifier import load_classifier
    from tgmae.evaluate.sharded import world
    from tgmae.train.distributed import init_distributed
    from tgmae.train.precision import resolve_precision

    dist_info = init_distributed(cfg.train.device)
    if classifier is None:
        if not cfg.model.pretrained:
            raise ValueError("model.pretrained must name a finetuned classifier to test")
        classifier = load_classifier(cfg.model.pretrained, cfg.data.num_frames, cfg.data.image_size)
    classifier = classifier.to(dist_info.device)
    dataset = build_dataset(cfg.data, "val", multi_view=True, seed=cfg.train.seed)
    precision = resolve_precision(cfg.train.precision, dist_info.device)
    result = evaluate_classifier(classifier, dataset, batch_size=cfg.train.batch_size, precision=precision,
                                 num_workers=cfg.data.num_workers, device=dist_info.device,
                                 progress=progress and cfg.log.progress)
    if world()[0] == 0:
        names = getattr(dataset, "class_names", None) or getattr(classifier, "class_names", [])
        out = Path(cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary = result.summary(names)
        summary["views"] = f"{dataset.num_temporal}x{dataset.num_spatial}"
        (out / "test_results.json").write_text(json.dumps(summary, indent=2))
        log.info("multi-view test (%s views, %d videos): %s, mean class %.4f", summary["views"],
                 result.num_videos, topk_text(result.top1, result.top5), result.mean_class_accuracy)
    return result


def main(argv: list[str]) -> int:
    from tgmae.cli import parse_run_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg, _ = parse_run_args("evaluate", argv, description=__doc__.splitlines()[0])
    result = evaluate_checkpoint(cfg)
    print(f"{topk_text(result.top1, result.top5)}  mean class {result.mean_class_accuracy:.4f}  "
          f"({result.num_videos} videos x {result.num_views} views)")
    return 0


__all__ = ["ClassificationResult", "predict_views", "evaluate_classifier", "classification_result",
           "evaluate_checkpoint", "views_per_sample", "main"]
