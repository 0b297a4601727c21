"""Multinomial logistic regression on frozen features, full batch with L-BFGS (CLIP's linear probe,
Radford et al. 2021, appendix A.3).

Features standardized with the training rows' mean and std (+1e-6), zero init, `LBFGS` with a
strong-Wolfe line search, loss = mean cross-entropy + l2 x sum(W^2) (bias not penalized), float64
by default: a fit is a function of its inputs alone. `select_l2`: k-fold CV on the training rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class LogisticFit:
    """A fitted probe: logits = ((x - mean) / std) @ weight + bias. Calling it gives the logits."""

    weight: torch.Tensor  # [D, K]
    bias: torch.Tensor  # [K]
    mean: torch.Tensor  # [D], of the training features
    std: torch.Tensor  # [D], of the training features, +1e-6
    l2: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> logits [N, K] in the fit's dtype, on the fit's device."""
        x = x.to(self.weight)
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    __call__ = logits

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> predicted class [N] int64 (first of equal logits)."""
        return self.logits(x).argmax(dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """{weight, bias, mean, std}, contiguous CPU tensors (for safetensors)."""
        return {k: getattr(self, k).detach().cpu().contiguous() for k in ("weight", "bias", "mean", "std")}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, num_classes: int, max_iter: int = 500,
                 dtype: torch.dtype = torch.float64) -> LogisticFit:
    """Fit on features x [N, D] (N >= 2) with labels y [N] int in [0, num_classes), on x's device.

    l2 > 0 (a weight on sum(W^2), added to the mean cross-entropy); max_iter: L-BFGS iterations.
    ValueError for shapes or labels that do not fit."""
    if x.dim() != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2 and labels [N], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if l2 <= 0:
        raise ValueError(f"l2={l2}: must be > 0")
    y = y.long().to(x.device)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    x = x.detach().to(dtype)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticFit(w.detach(), b.detach(), mean, std, float(l2))


def fold_ids(n: int, folds: int, seed: int) -> torch.Tensor:
    """[n] int64 fold of each row: a seeded random permutation dealt round-robin into `folds`
    folds (sizes differ by at most 1). The same (n, folds, seed) always gives the same folds."""
    if not 2 <= folds <= n:
        raise ValueError(f"folds={folds}: need 2 <= folds <= {n} (the number of rows)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ids = torch.empty(n, dtype=torch.long)
    ids[perm] = torch.arange(n) % folds
    return ids


def select_l2(x: torch.Tensor, y: torch.Tensor, grid: Sequence[float], folds: int, seed: int,
              num_classes: int, max_iter: int = 500) -> tuple[float, dict[float, float]]:
    """k-fold cross-validation of `fit_logistic` over the L2 values of `grid`, on x [N, D], y [N]
    (the training features only). Each fold is fitted on the other folds (standardized with their
    statistics) and scored on itself. Returns (chosen l2, {l2: top-1 over all held-out rows}, l2
    ascending). Ties go to the stronger l2, so the choice does not depend on the grid's order."""
    values = sorted({float(v) for v in grid})
    if not values or values[0] <= 0:
        raise ValueError(f"l2 grid {list(grid)}: needs at least one value, all > 0")
    ids = fold_ids(x.shape[0], folds, seed).to(x.device)
    y = y.long().to(x.device)
    scores: dict[float, float] = {}
    for l2 in values:
        correct = 0
        for f in range(folds):
            held = ids == f
            fit = fit_logistic(x[~held], y[~held], l2, num_classes, max_iter)
            correct += int((fit.predict(x[held]) == y[held]).sum())
        scores[l2] = correct / x.shape[0]
    best = max(reversed(values), key=lambda v: scores[v])  # max keeps the first: the strongest of equals
    return best, scores
