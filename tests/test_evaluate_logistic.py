"""L-BFGS logistic regression on features and its cross-validated L2 (evaluate.logistic)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tgmae.evaluate.logistic import LogisticFit, fit_logistic, fold_ids, select_l2

GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def blobs(n: int, d: int, k: int, seed: int, spread: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """k Gaussian classes (unit noise) around centres `spread` std apart: separable for spread 4."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(99)) * spread
    return centres[y] + torch.randn(n, d, generator=g) + 5.0, y  # an offset: standardization must remove it


def correlated(seed: int, n: int = 240, d: int = 8, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean labels whose signal hides under a large nuisance shared by every dimension: the full
    regression (weak L2) cancels it, a strongly shrunk one (near the class-mean direction) cannot."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.randn(k, d, generator=g) * 0.5
    return centres[y] + 4 * torch.randn(n, 1, generator=g) + 0.3 * torch.randn(n, d, generator=g), y


def noisy(seed: int, n: int = 120, d: int = 48, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Weak signal in many dimensions, few rows, half the labels redrawn at random: overfits easily."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = (torch.randn(k, d, generator=g) * 0.4)[y] + torch.randn(n, d, generator=g)
    return x, torch.where(torch.rand(n, generator=g) < 0.5, torch.randint(0, k, (n,), generator=g), y)


def test_fit_separates_separable_classes_and_reaches_the_minimum():
    x, y = blobs(200, 16, 4, seed=0)
    xv, yv = blobs(80, 16, 4, seed=1)
    fit = fit_logistic(x, y, 1e-2, 4)
    assert fit.weight.shape == (16, 4) and fit.bias.shape == (4,) and fit.weight.dtype == torch.float64
    assert bool((fit.predict(x) == y).all()) and bool((fit.predict(xv) == yv).all())
    assert torch.equal(fit(xv), fit.logits(xv))
    # the returned parameters minimize mean cross-entropy + l2 * |W|^2: the gradient vanishes there
    w, b = fit.weight.clone().requires_grad_(), fit.bias.clone().requires_grad_()
    z = (x.double() - fit.mean) / fit.std
    loss = F.cross_entropy(z @ w + b, y) + 1e-2 * (w * w).sum()
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-5 and float(b.grad.abs().max()) < 1e-5
    # standardized with the training statistics: the offset and scale of the features do not matter
    scaled = fit_logistic(3 * x - 7, y, 1e-2, 4)
    assert torch.allclose(scaled.weight, fit.weight, atol=1e-6) and torch.equal(scaled.predict(3 * xv - 7), fit.predict(xv))
    # a stronger L2 shrinks the weights
    assert float(fit_logistic(x, y, 1.0, 4).weight.norm()) < 0.5 * float(fit.weight.norm())


def test_fit_is_deterministic_and_independent_of_the_thread_count():
    x, y = noisy(3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fit_logistic(x, y, 1e-3, 4)
        torch.set_num_threads(2)
        two = fit_logistic(x, y, 1e-3, 4)
    finally:
        torch.set_num_threads(threads)
    again = fit_logistic(x, y, 1e-3, 4)
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), again.state_dict().values()))
    assert torch.allclose(one.weight, two.weight, atol=1e-9) and torch.equal(one.predict(x), two.predict(x))


def test_fit_rejects_bad_inputs():
    x, y = blobs(10, 4, 2, seed=0)
    with pytest.raises(ValueError, match="l2=0"):
        fit_logistic(x, y, 0.0, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit_logistic(x, y + 1, 1e-3, 2)
    with pytest.raises(ValueError, match="N >= 2"):
        fit_logistic(x[:1], y[:1], 1e-3, 2)


def test_folds_are_balanced_seeded_and_checked():
    ids = fold_ids(10, 4, seed=0)
    assert sorted(torch.bincount(ids).tolist()) == [2, 2, 3, 3]
    assert torch.equal(ids, fold_ids(10, 4, seed=0)) and not torch.equal(ids, fold_ids(10, 4, seed=1))
    for folds in (1, 11):
        with pytest.raises(ValueError, match=f"folds={folds}"):
            fold_ids(10, folds, seed=0)


def test_cv_prefers_weak_l2_on_clean_correlated_features_and_strong_l2_on_noisy_labels():
    clean_l2, clean = select_l2(*correlated(0), GRID, folds=4, seed=0, num_classes=4)
    noisy_l2, noise = select_l2(*noisy(0), GRID, folds=4, seed=0, num_classes=4)
    assert list(clean) == list(GRID) and clean[clean_l2] == max(clean.values())
    assert clean_l2 <= 1e-3 and clean[clean_l2] > clean[1.0] + 0.4  # shrinking loses the signal
    assert noisy_l2 >= 0.1 and noise[noisy_l2] > noise[1e-4]  # the weakest L2 fits the noise
    # the held-out scores are counts over every training row once: k / N
    assert all(abs(v * 240 - round(v * 240)) < 1e-9 for v in clean.values())


def test_cv_breaks_ties_toward_the_stronger_l2_whatever_the_grid_order():
    x, y = blobs(80, 8, 2, seed=0, spread=6.0)  # every L2 of the grid separates these: all tie at 1.0
    best, scores = select_l2(x, y, GRID, folds=4, seed=0, num_classes=2)
    assert set(scores.values()) == {1.0} and best == 1.0
    assert select_l2(x, y, tuple(reversed(GRID)), folds=4, seed=0, num_classes=2) == (best, scores)
    with pytest.raises(ValueError, match="all > 0"):
        select_l2(x, y, (1e-3, 0.0), folds=4, seed=0, num_classes=2)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    x, y = blobs(60, 8, 3, seed=0)
    fit = fit_logistic(x, y, 1e-3, 3)
    save_file(fit.state_dict(), str(tmp_path / "head.safetensors"))
    again = LogisticFit(**load_file(str(tmp_path / "head.safetensors")), l2=1e-3)
    assert torch.equal(again.logits(x), fit.logits(x))
