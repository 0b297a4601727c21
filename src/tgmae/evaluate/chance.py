"""What a random guesser scores: the exact 95% band of top-1 and Recall@K at chance.

A figure is "at chance" when it lies inside the central `level` interval of a uniform guesser's
score over the same queries. Hits over n queries are independent Bernoulli draws with p_i: top-1
over C classes p = 1 / C; Recall@K with r relevant of G, p = 1 - C(G - r, K) / C(G, K)
(hypergeometric; 1 when K >= G - r + 1). The count is binomial or Poisson-binomial, computed
exactly; the band is [q(a), q(1 - a)] / n with a = (1 - level) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

LEVEL = 0.95


@dataclass(frozen=True)
class ChanceBand:
    """A random guesser's score over `n` queries: mean hit probability `p` and the central
    `level` interval [lo, hi] of its score (fractions in [0, 1]; steps of 1 / n)."""

    p: float
    lo: float
    hi: float
    n: int
    level: float = LEVEL

    def contains(self, value: float) -> bool:
        """True when `value` (a fraction) is a score the guesser reaches often (inside the band;
        a 1e-6 slack: scores are stored as float32 k / n, e.g. 0.3 as 0.30000001)."""
        return self.lo - 1e-6 <= value <= self.hi + 1e-6

    def as_dict(self) -> dict:
        return {"p": self.p, "lo": self.lo, "hi": self.hi, "n": self.n, "level": self.level}

    @classmethod
    def from_dict(cls, d: dict) -> "ChanceBand":
        return cls(float(d["p"]), float(d["lo"]), float(d["hi"]), int(d["n"]), float(d.get("level", LEVEL)))


def hits_distribution(probs: Sequence[float]) -> np.ndarray:
    """[n + 1] probabilities of 0..n hits among independent queries that hit with `probs` [n]
    (Poisson-binomial): the queries grouped by equal probability, each group's binomial law
    (scipy), the groups' laws convolved (FFT past a few hundred terms, so a gallery of 100k
    caption queries with a handful of distinct relevance counts takes milliseconds)."""
    from scipy.signal import fftconvolve
    from scipy.stats import binom

    values, counts = np.unique(np.round(np.asarray(probs, dtype=np.float64), 12), return_counts=True)
    dist = np.ones(1)
    for p, c in zip(values, counts):
        law = binom.pmf(np.arange(c + 1), c, p)
        dist = fftconvolve(dist, law) if min(len(dist), len(law)) > 256 else np.convolve(dist, law)
    dist = np.clip(dist, 0.0, None)
    return dist / dist.sum()


def band(probs: Sequence[float], level: float = LEVEL) -> ChanceBand:
    """The guesser's band over queries with hit probabilities `probs` [n] (n >= 1, each in [0, 1]).
    Exact: scipy's binomial quantiles when all p are equal, the Poisson-binomial otherwise."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if n == 0:
        raise ValueError("a chance band needs at least one query")
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(f"hit probabilities must lie in [0, 1], got {probs.min()}..{probs.max()}")
    if not 0 < level < 1:
        raise ValueError(f"level={level}: must be in (0, 1)")
    tail = (1 - level) / 2
    if probs.max() - probs.min() < 1e-12:
        from scipy.stats import binom

        lo, hi = binom.ppf(tail, n, probs[0]), binom.ppf(1 - tail, n, probs[0])
    else:
        cdf = np.cumsum(hits_distribution(probs))
        lo = int(np.searchsorted(cdf, tail - 1e-12))  # smallest k with P(X <= k) >= tail
        hi = int(np.searchsorted(cdf, 1 - tail - 1e-12))
    return ChanceBand(float(probs.mean()), float(lo) / n, float(hi) / n, n, level)


def accuracy_band(num_queries: int, num_classes: int, level: float = LEVEL) -> ChanceBand:
    """Top-1 of a uniform guesser over `num_classes` classes on `num_queries` samples."""
    if num_classes < 1 or num_queries < 1:
        raise ValueError(f"num_queries={num_queries}, num_classes={num_classes}: both must be >= 1")
    return band([1.0 / num_classes] * num_queries, level)


def recall_chance(gallery: int, relevant: int, k: int) -> float:
    """Probability that a uniformly random ranking of `gallery` items puts at least one of its
    `relevant` items among the first `k`: 1 - C(G - r, k) / C(G, k)."""
    if not 0 <= relevant <= gallery or k < 1:
        raise ValueError(f"gallery={gallery}, relevant={relevant}, k={k}: need 0 <= relevant <= gallery, k >= 1")
    if relevant == 0:
        return 0.0
    if k > gallery - relevant:
        return 1.0
    # the ratio of binomials as a product, stable for large galleries
    return 1.0 - math.exp(sum(math.log((gallery - relevant - j) / (gallery - j)) for j in range(k)))


def recall_band(relevant: torch.Tensor, k: int, level: float = LEVEL) -> ChanceBand:
    """Recall@k of a random ranking for the queries of `relevant` [Q, G] bool (rows: queries,
    columns: the gallery; queries without a relevant item have p = 0)."""
    counts = relevant.sum(dim=1).tolist()
    g = int(relevant.shape[1])
    return band([recall_chance(g, int(r), k) for r in counts], level)


def retrieval_bands(relevant: torch.Tensor, ks: Sequence[int], level: float = LEVEL) -> dict[str, dict[int, ChanceBand]]:
    """{"video_to_text", "text_to_video"} -> {k: band} for `relevant` [Nv, Nt] bool, with the same
    queries as `tgmae.evaluate.retrieval.retrieval_metrics` (texts without a relevant video left out)."""
    used = relevant.any(dim=0)
    return {"video_to_text": {k: recall_band(relevant, k, level) for k in ks},
            "text_to_video": {k: recall_band(relevant.T[used], k, level) for k in ks}}
