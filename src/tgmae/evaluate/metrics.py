"""Evaluation metrics as pure functions: top-k and per-class accuracy, retrieval Recall@K.

Classification: scores [N, K] (logits or probabilities), labels [N] int64 in [0, K).
Retrieval: a similarity matrix sim [Q, G] (queries x gallery) and relevance [Q, G] bool (True =
gallery item g is a correct answer for query q; several may be). Ties are counted against the
query: an irrelevant item scoring exactly as high as the best relevant one ranks before it, so a
collapsed model (all similarities equal) scores the chance floor, never a perfect recall.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """{k: fraction of rows whose label is among the k highest scores}; k is capped at K. The
    Python float of correct / rows (a float32 mean would store 2/5 as 0.4000000059604645)."""
    correct = topk_correct(scores, labels, ks)
    return {k: int(c.sum()) / c.numel() if c.numel() else float("nan") for k, c in correct.items()}


def reported_ks(num_classes: int) -> tuple[int, ...]:
    """Which top-k accuracies a report states: (1, 5) with more than 5 classes, else (1,) (top-5
    of 5 classes or fewer is always 1.0 and says nothing)."""
    return (1, 5) if num_classes > 5 else (1,)


def topk_text(top1: float, top5: Optional[float]) -> str:
    """'top-1 0.4200  top-5 0.8100', or 'top-1 0.4200' when top-5 is not reported (None)."""
    return f"top-1 {top1:.4f}" + ("" if top5 is None else f"  top-5 {top5:.4f}")


def left_out_text(left_out: int, total: int, subset: str, listed_in: str) -> str:
    """'N of M <subset> videos left out (unreadable, listed in <listed_in>)', or '' when N is 0: the
    one wording of the final line of every evaluation command (probe, finetune, evaluate)."""
    if left_out <= 0:
        return ""
    return f"{left_out} of {total} {subset} videos left out (unreadable, listed in {listed_in})"


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """{k: [N] bool, label among the top-k scores of its row}; k is capped at K. Equal scores rank
    the lower class id first, as test_predictions.csv lists them (topk's order of ties is unspecified)."""
    _check_scores(scores, labels)
    kmax = min(max(ks), scores.shape[1])
    top = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kmax]  # [N, kmax]
    hit = top == labels.view(-1, 1)
    return {k: hit[:, :min(k, kmax)].any(dim=1) for k in ks}


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """pred, labels [N] int -> [num_classes] float64 accuracy per class (NaN for absent classes):
    each the exact fraction right / total, as a Python float of it stores."""
    if pred.shape != labels.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.long()
    total = torch.bincount(labels, minlength=num_classes).double()
    right = torch.bincount(labels[pred.long() == labels], minlength=num_classes).double()
    acc = right / total
    return torch.where(total > 0, acc, torch.full_like(acc, float("nan")))


def mean_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean of the per-class accuracies over the classes present in `labels`."""
    acc = per_class_accuracy(pred, labels, num_classes)
    present = acc[~acc.isnan()]
    return float(present.mean()) if present.numel() else float("nan")


def _check_scores(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.dim() != 2 or labels.dim() != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores must be [N, K] and labels [N], got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got [{int(labels.min())}, {int(labels.max())}]")


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------


def retrieval_ranks(sim: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """[Q] int64: 1-based rank of each query's best relevant gallery item.

    rank = 1 + number of irrelevant items with similarity >= the best relevant similarity
    (ties count against the query). Queries without any relevant item are an error.
    """
    if sim.shape != relevant.shape or sim.dim() != 2:
        raise ValueError(f"sim and relevant must both be [Q, G], got {tuple(sim.shape)} and {tuple(relevant.shape)}")
    relevant = relevant.bool()
    none = ~relevant.any(dim=1)
    if bool(none.any()):
        raise ValueError(f"{int(none.sum())} queries have no relevant gallery item (first: row {int(none.nonzero()[0])})")
    sim = sim.float()
    neg_inf = torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device)
    best = torch.where(relevant, sim, neg_inf).max(dim=1, keepdim=True).values  # [Q, 1]
    ahead = (~relevant) & (sim >= best)
    return 1 + ahead.sum(dim=1)


def recall_at_k(sim: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """{k: fraction of queries with a relevant item among their k highest-similarity items}, the
    Python float of hits / queries (as `topk_accuracy`)."""
    ranks = retrieval_ranks(sim, relevant)
    return {k: int((ranks <= k).sum()) / ranks.numel() if ranks.numel() else float("nan") for k in ks}


def relevance_from_ids(query_ids: Sequence | torch.Tensor, gallery_ids: Sequence | torch.Tensor) -> torch.Tensor:
    """[Q, G] bool: query q and gallery item g share an id (a class id, or a caption text id)."""
    q = torch.as_tensor(query_ids).view(-1, 1)
    g = torch.as_tensor(gallery_ids).view(1, -1)
    return q == g
