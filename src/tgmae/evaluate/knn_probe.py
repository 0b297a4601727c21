"""`tgmae probe eval.probe=knn`: DINO's weighted k-NN (`tgmae.evaluate.knn`) over the linear probe's
cached features (`probe_features`, the same cache key), every k of `eval.knn_k` in one pass;
nothing trains, resumes or checkpoints.

Outputs in `train.output_dir`: config.yaml; probe_results.json with `knn` = {k: {top1, top5}} and
`top1` / `top5` / `k` of the first k of `eval.knn_k` (chosen before any result);
test_predictions.csv of that k (votes / their sum; a class without a neighbour among the k is no
prediction, its slots stay empty, as the results' top-5 counts it). ConfigError naming `eval.knn_k` for a k above
the training features' count, and without `data.val_annotations`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional

from torch.utils.data import Dataset

from tgmae.config import ConfigError, RunConfig, save_config
from tgmae.evaluate.knn import KnnResult, knn_classify
from tgmae.evaluate.metrics import topk_text
from tgmae.train.resume import locks_run_folder
from tgmae.weights.model_card import own_run_id
from tgmae.data.dataset import subset_annotations

log = logging.getLogger("tgmae")


@dataclass
class KnnProbeResult:
    """The headline k's accuracy and every k's (`by_k`), and the run folder."""

    output_dir: Path
    k: int
    top1: float
    top5: Optional[float]  # None with 5 classes or fewer
    by_k: dict[int, KnnResult]
    val_left_out: int = 0  # val videos left out (unreadable), of
    val_videos: int = 0  # the val videos listed


@locks_run_folder
def knn_probe(cfg: RunConfig, *, train_data: Optional[Dataset] = None, val_data: Optional[Dataset] = None,
              num_classes: Optional[int] = None, cache_dir: Optional[str | Path] = None,
              given: Optional[Collection[str]] = None) -> KnnProbeResult:
    """Score the val features by their k nearest training features for every k of `eval.knn_k`
    and write the outputs of the module doc. Datasets, cache and `given` as `probe_features`."""
    from tgmae.distributed import init_distributed
    from tgmae.evaluate.probe import (probe_features, refuse_other_probe, refuse_other_run, refuse_unlabelled_lists,
                                      val_counts, write_results, write_val_predictions)

    ks, temperature = list(cfg.eval.knn_k), cfg.eval.knn_temperature
    if val_data is None and not subset_annotations(cfg.data, "val"):
        raise ConfigError("eval.probe=knn scores the val videos: set data.val_annotations")
    out = Path(cfg.train.output_dir)
    refuse_other_probe(cfg)  # another probe's folder named by eval.probe, as the linear probe's refusal
    refuse_other_run(out)
    refuse_unlabelled_lists(cfg, train_data, val_data)  # before the training list's videos are counted
    if train_data is None:  # refused before any feature is extracted: the list's length bounds the features
        from tgmae.data.dataset import build_dataset

        listed = len(build_dataset(cfg.data, "train", train=False, seed=cfg.train.seed))
    else:
        listed = len(train_data)
    if max(ks) > listed:
        raise ConfigError(f"eval.knn_k={ks}: k={max(ks)} exceeds the {listed} training videos")
    train, val, names = probe_features(cfg, train_data, val_data, cache_dir, num_classes=num_classes,
                                       check_train=lambda t: _check_k(ks, t), given=given)  # before the val set
    k_cls = num_classes or cfg.eval.num_classes or len(names) or 1 + int(max(train.labels.max(), val.labels.max()))
    top = max(int(train.labels.max()), int(val.labels.max()) if len(val) else 0)
    if top >= k_cls:
        raise ConfigError(f"eval.num_classes={k_cls}: the features' labels reach {top}")
    by_k = knn_classify(train.features, train.labels, val.features, val.labels, ks, temperature, k_cls,
                        keep_scores=[ks[0]])  # the CSV's scores: the neighbours the results counted
    head = by_k[ks[0]]
    if init_distributed(cfg.train.device).is_main:  # every rank scores alike; one writes
        out.mkdir(parents=True, exist_ok=True)
        own_run_id(out)  # every run folder's (`model_card.run_of`), as a training loop's
        save_config(cfg, out / "config.yaml")
        final = {"top1": head.top1, **({"top5": head.top5} if head.top5 is not None else {})}
        table = {str(k): {"top1": r.top1, **({"top5": r.top5} if r.top5 is not None else {})} for k, r in by_k.items()}
        write_val_predictions(out, val, head.scores, names, voted=head.voted)
        # last: probe_results.json says the probe is done (the study skips it then)
        write_results(cfg, out, train, val, final, head.top1, None, k=ks[0], knn=table, temperature=temperature)
        log.info("k-NN probe (T %g): %s", temperature,
                 "; ".join(f"k={k} {topk_text(r.top1, r.top5)}" for k, r in by_k.items()))
    return KnnProbeResult(out, ks[0], head.top1, head.top5, by_k, **val_counts(val))


def _check_k(ks: list[int], train) -> None:
    """ConfigError naming eval.knn_k when its largest k exceeds the training features (the
    readable videos: the listed count is checked before extraction)."""
    if max(ks) > len(train):
        left = f" ({len(train.unreadable)} unreadable training videos left out)" if train.unreadable else ""
        raise ConfigError(f"eval.knn_k={ks}: k={max(ks)} exceeds the {len(train)} training features{left}")
