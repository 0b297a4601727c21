"""tgmae.evaluate.chance: a random guesser's exact 95% band for top-1 and Recall@K."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from tgmae.evaluate.chance import (ChanceBand, accuracy_band, band, hits_distribution, recall_band, recall_chance,
                                   retrieval_bands)


def test_accuracy_band_is_the_central_binomial_interval():
    # the figure: 1,152 videos, 10 classes -> about 8.3-11.7% (96 and 136 hits)
    b = accuracy_band(1152, 10)
    assert (b.n, b.p) == (1152, pytest.approx(0.1))
    assert round(b.lo * 1152) == 96 and round(b.hi * 1152) == 136
    # the definition: P(X < lo) < 2.5% <= P(X <= lo), the same at the top
    lo, hi = round(b.lo * 1152), round(b.hi * 1152)
    assert binom.cdf(lo - 1, 1152, 0.1) < 0.025 <= binom.cdf(lo, 1152, 0.1)
    assert binom.cdf(hi - 1, 1152, 0.1) < 0.975 <= binom.cdf(hi, 1152, 0.1)
    assert b.contains(0.106) and b.contains(96 / 1152) and not b.contains(0.14) and not b.contains(0.08)
    # ten queries: steps of 10 points, 0-30% at p = .1 (P(X <= 3) = .987)
    ten = accuracy_band(10, 10)
    assert (ten.lo, ten.hi) == (0.0, 0.3) and ten.contains(np.float32(0.3)) and not ten.contains(0.4)
    with pytest.raises(ValueError, match="num_classes=0"):
        accuracy_band(10, 0)


def test_poisson_binomial_matches_the_binomial_and_brute_force():
    assert hits_distribution([0.3] * 6) == pytest.approx(binom.pmf(range(7), 6, 0.3))
    probs = [0.1, 0.5, 0.9]
    brute = np.zeros(4)
    for outcome in range(8):
        hits = [(outcome >> i) & 1 for i in range(3)]
        brute[sum(hits)] += math.prod(p if h else 1 - p for p, h in zip(probs, hits))
    assert hits_distribution(probs) == pytest.approx(brute)
    # unequal probabilities take the exact Poisson-binomial quantiles
    b = band([0.1] * 5 + [0.2] * 5)
    cdf = np.cumsum(hits_distribution([0.1] * 5 + [0.2] * 5))
    assert b.p == pytest.approx(0.15) and b.lo == 0.0 and cdf[round(b.hi * 10) - 1] < 0.975 <= cdf[round(b.hi * 10)]
    with pytest.raises(ValueError, match="at least one query"):
        band([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        band([1.5])


def test_recall_chance_is_hypergeometric():
    assert recall_chance(10, 1, 1) == pytest.approx(0.1)
    assert recall_chance(10, 1, 5) == pytest.approx(0.5)
    assert recall_chance(10, 1, 10) == 1.0 and recall_chance(10, 0, 3) == 0.0
    # 2 relevant among 5, top 2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert recall_chance(5, 2, 2) == pytest.approx(0.7)
    # against a simulation of random rankings
    g = torch.Generator().manual_seed(0)
    ranks = torch.stack([torch.randperm(50, generator=g) for _ in range(20000)])  # position of each item
    hit = (ranks[:, :4] < 3).any(dim=1).float().mean()  # items 0..3 relevant, top 3
    assert float(hit) == pytest.approx(recall_chance(50, 4, 3), abs=0.01)
    with pytest.raises(ValueError, match="relevant=6"):
        recall_chance(5, 6, 1)


def test_retrieval_bands_use_the_queries_of_each_direction():
    # 100 videos of 10 classes, 10 class texts + one text no video has (not a T->V query)
    rel = torch.cat([torch.arange(100)[:, None] % 10 == torch.arange(10)[None], torch.zeros(100, 1, dtype=torch.bool)], 1)
    bands = retrieval_bands(rel, (1, 5))
    v1, t1 = bands["video_to_text"][1], bands["text_to_video"][1]
    assert v1.n == 100 and v1.p == pytest.approx(1 / 11)  # 1 relevant among 11 texts
    assert t1.n == 10 and t1.p == pytest.approx(0.1)  # 10 relevant among 100 videos
    assert bands["text_to_video"][5].p == pytest.approx(recall_chance(100, 10, 5))
    assert recall_band(rel, 1) == v1
    assert ChanceBand.from_dict(v1.as_dict()) == v1
