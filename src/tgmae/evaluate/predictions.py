"""Per-video predictions as a CSV (`test_predictions.csv`), for error analysis.

One row per scored video: `video_id, true_label, pred_1, score_1, ..., pred_k, score_k`, labels as
class names (else ids), scores the class probabilities (6 decimals) best first; rows that are not
a distribution (a value outside [0, 1] or a sum off 1 by > 1e-4) are softmaxed first. Equal scores
rank by class id (as `metrics.topk_correct`). voted [N, K] bool (k-NN): only the voted classes are
predictions (a voted class may score 0.000000: its weight underflowed), the others' slots stay empty.
Written atomically.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from tgmae.atomic import atomic_write_text


def as_probabilities(scores: torch.Tensor) -> torch.Tensor:
    """[N, K] probabilities (float64): the rows themselves when every row already is a
    distribution, else the softmax of the rows (logits)."""
    s = scores.detach().to("cpu", torch.float64)
    is_probs = bool(((s >= 0) & (s <= 1)).all()) and bool(((s.sum(dim=1) - 1).abs() <= 1e-4).all())
    return s if is_probs else s.softmax(dim=1)


def prediction_rows(video_ids: Sequence[str], labels: torch.Tensor, logits_or_probs: torch.Tensor,
                    class_names: Sequence[str] = (), k: int = 5,
                    voted: Optional[torch.Tensor] = None) -> list[list[str]]:
    """The CSV rows (header first) of `write_predictions`; k is capped at the number of classes."""
    scores = logits_or_probs
    if scores.dim() != 2 or labels.shape != (scores.shape[0],) or len(video_ids) != scores.shape[0]:
        raise ValueError(f"need {scores.shape[0] if scores.dim() else '?'} video ids and labels for scores "
                         f"[N, K], got {len(video_ids)} ids, labels {tuple(labels.shape)}, scores "
                         f"{tuple(scores.shape)}")
    num_classes = scores.shape[1]
    if class_names and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    if voted is not None and voted.shape != scores.shape:
        raise ValueError(f"voted {tuple(voted.shape)} must match scores {tuple(scores.shape)}")
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    probs = as_probabilities(scores)
    k = min(k, num_classes)
    mask = torch.ones_like(probs, dtype=torch.bool) if voted is None else voted.to("cpu", torch.bool)
    # probabilities are >= 0: -1 puts the unvoted classes after every voted one (as knn.rank_classes)
    order = torch.sort(torch.where(mask, probs, torch.full_like(probs, -1.0)), dim=1, descending=True,
                       stable=True).indices[:, :k]
    header = ["video_id", "true_label"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("pred", "score")]
    rows = [header]
    for vid, y, top, p, v in zip(video_ids, labels.tolist(), order.tolist(), probs.tolist(), mask.tolist()):
        true = names[y] if 0 <= y < num_classes else str(y)
        slots = [(names[c], f"{p[c]:.6f}") if v[c] else ("", "") for c in top]
        rows.append([str(vid), true] + [x for slot in slots for x in slot])
    return rows


def write_predictions(path: str | os.PathLike, video_ids: Sequence[str], labels: torch.Tensor,
                      logits_or_probs: torch.Tensor, class_names: Sequence[str] = (), k: int = 5,
                      voted: Optional[torch.Tensor] = None) -> Path:
    """Write `path` (e.g. `<output_dir>/test_predictions.csv`) from video ids [N], true labels
    [N] int and scores [N, K] (logits or probabilities); returns the path. ValueError when the
    lengths disagree or the names do not count K. voted: as the module doc."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(prediction_rows(video_ids, labels, logits_or_probs,
                                                                    class_names, k, voted))
    atomic_write_text(path, buf.getvalue())
    return Path(path)
