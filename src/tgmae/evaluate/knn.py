"""Weighted k-nearest-neighbour classification of frozen features (DINO's k-NN protocol).

DINO (Caron et al. 2021, `eval_knn.py`): L2-normalised features, cosine similarity, the k nearest
training rows vote with weight exp(similarity / T) (T = 0.07). A class is voted when one of the k
neighbours has it, whatever its weight (one that underflows to 0 in float64 still votes: in exact
arithmetic it is > 0); a class without a neighbour is no prediction: top-5 looks at the (at most
min(5, k)) voted classes, as test_predictions.csv lists them. Each query's weights are taken
relative to its most similar neighbour (`knn_votes`), so a tiny T stays finite.
Several k come out of one top-max(k) search per chunk of test rows (memory [chunk, N_train]);
equal votes (0 included) rank by class id (lowest first). Inputs are cast to float32 on `device` (default: the
training features').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

DINO_KS = (10, 20, 100, 200)
DINO_TEMPERATURE = 0.07


@dataclass
class KnnResult:
    """Accuracy for one k: top-1, and top-5 (None with 5 classes or fewer, as the other probes);
    scores [M, K] float64 (votes / their sum) and voted [M, K] bool (the classes with a neighbour
    among the k) when asked for (`knn_classify`'s keep_scores)."""

    k: int
    top1: float
    top5: Optional[float]
    num_test: int
    scores: Optional[torch.Tensor] = None
    voted: Optional[torch.Tensor] = None


def _check(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
           ks: Sequence[int], temperature: float) -> list[int]:
    """Sorted unique ks, or ValueError naming what does not fit."""
    if train.dim() != 2 or test.dim() != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {tuple(train.shape)} and {tuple(test.shape)}")
    if train_labels.shape != (train.shape[0],) or test_labels.shape != (test.shape[0],):
        raise ValueError(f"labels must be [N] and [M], got {tuple(train_labels.shape)} and {tuple(test_labels.shape)}")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"k values {list(ks)}: need at least one, all >= 1")
    if int(max(ks)) > train.shape[0]:
        raise ValueError(f"k={int(max(ks))} exceeds the {train.shape[0]} training features")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    return sorted({int(k) for k in ks})


def knn_votes(sim: torch.Tensor, neighbour_labels: torch.Tensor, k: int, num_classes: int,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(votes [M, K] float64, voted [M, K] bool) of the first k neighbours: sim [M, >=k] (sorted,
    most similar first), neighbour_labels [M, >=k] int64 -> votes: the sum over the k of
    exp((sim - sim[:, 0]) / T) into each neighbour's class (DINO's exp(sim / T) over the query's
    exp(sim[:, 0] / T), a per-query factor that the ranking and the normalised scores do not see);
    voted: the classes with a neighbour among the k."""
    # exp(sim / T) overflows (inf votes, NaN scores) for a small T (e.g. 1e-4); relative to the
    # query's best neighbour the weights lie in (0, 1], the best one 1. A weight below exp(-745)
    # underflows to 0 in float64, so whether a class is voted comes from the labels, not the votes.
    sim, labels = sim[:, :k].double(), neighbour_labels[:, :k]
    weights = ((sim - sim[:, :1]) / temperature).exp()
    votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    voted = torch.zeros(sim.shape[0], num_classes, dtype=torch.bool, device=weights.device)
    return votes.scatter_add_(1, labels, weights), voted.scatter_(1, labels, True)


def rank_classes(votes: torch.Tensor, voted: torch.Tensor, top: int) -> torch.Tensor:
    """[M, top] class ids: the voted classes (voted [M, K] bool) by votes [M, K], highest first,
    then the others; equal votes (0 included) rank the lower id first."""
    # votes are >= 0: -1 puts the classes without a neighbour after every voted one
    key = torch.where(voted, votes, torch.full_like(votes, -1.0))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    return order[:, :top]


def _neighbours(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, kmax: int, chunk: int,
                device: torch.device):
    """Per chunk of test rows (start, sim [m, kmax] sorted most similar first, neighbour labels
    [m, kmax]): cosine similarity of L2-normalised float32 features on `device`."""
    bank = F.normalize(train.to(device, torch.float32), dim=1)  # [N, D]
    bank_labels = train_labels.to(device, torch.long)
    for start in range(0, test.shape[0], chunk):
        q = F.normalize(test[start: start + chunk].to(device, torch.float32), dim=1)  # [m, D]
        sim, idx = (q @ bank.T).topk(kmax, dim=1, largest=True, sorted=True)  # [m, kmax]
        yield start, sim, bank_labels[idx]


def _num_classes(train_labels: torch.Tensor, test_labels: torch.Tensor, num_classes: Optional[int]) -> int:
    if num_classes is not None:
        return int(num_classes)
    return 1 + max(int(train_labels.max()), int(test_labels.max()) if test_labels.numel() else 0)


@torch.no_grad()
def knn_classify(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 ks: Sequence[int] = DINO_KS, temperature: float = DINO_TEMPERATURE,
                 num_classes: Optional[int] = None, chunk: int = 1024,
                 device: Optional[torch.device] = None, keep_scores: Sequence[int] = ()) -> dict[int, KnnResult]:
    """{k: KnnResult} of DINO's weighted k-NN: train [N, D] features with labels [N] int in
    [0, K), test [M, D] with labels [M]. num_classes K: default 1 + the largest label. chunk:
    test rows per similarity block ([chunk, N] floats at a time). keep_scores: the ks whose
    result carries the scores it was counted from (the same neighbours, for per-video
    predictions). ValueError for shapes, a k above N, or T <= 0."""
    kset = _check(train, train_labels, test, test_labels, ks, temperature)
    device = device or train.device
    k_cls = _num_classes(train_labels, test_labels, num_classes)
    top5 = min(5, k_cls)
    hits1 = {k: 0 for k in kset}
    hits5 = {k: 0 for k in kset}
    kept: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {int(k): [] for k in keep_scores}
    for start, sim, neighbours in _neighbours(train, train_labels, test, kset[-1], chunk, device):
        y = test_labels[start: start + chunk].to(device, torch.long).view(-1, 1)
        for k in kset:
            votes, voted = knn_votes(sim, neighbours, k, k_cls, temperature)
            ranked = rank_classes(votes, voted, top5)
            hit = (ranked == y) & voted.gather(1, ranked)  # a class without a neighbour is no prediction
            hits1[k] += int(hit[:, 0].sum())
            hits5[k] += int(hit.any(dim=1).sum())
            if k in kept:
                kept[k].append((votes.cpu(), voted.cpu()))
    m = test.shape[0]
    return {k: KnnResult(k, hits1[k] / m if m else float("nan"),
                         (hits5[k] / m if m else float("nan")) if k_cls > 5 else None, m,
                         *(_as_scores(kept[k], k_cls) if k in kept else (None, None))) for k in kset}


def _as_scores(parts: list[tuple[torch.Tensor, torch.Tensor]],
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [M, K] float64: the chunks' votes, each row divided by its sum (> 0: the nearest
    neighbour weighs 1), voted [M, K] bool)."""
    if not parts:
        return torch.zeros(0, num_classes, dtype=torch.float64), torch.zeros(0, num_classes, dtype=torch.bool)
    votes, voted = torch.cat([v for v, _ in parts]), torch.cat([m for _, m in parts])
    return votes / votes.sum(dim=1, keepdim=True), voted
