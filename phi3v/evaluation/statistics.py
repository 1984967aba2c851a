"""AUROC and percentile-bootstrap intervals, in numpy alone (the tables' environment reads them too).

numpy rather than scipy/scikit-learn: a rank-based AUROC and a percentile bootstrap are a few lines each.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def pairwise_order(scores: Sequence[float], labels: Sequence[bool]) -> np.ndarray:
    """(positives, negatives) matrix: 1 where the positive scores higher, 0.5 on a tie, else 0."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    positive, negative = scores[labels][:, None], scores[~labels][None, :]
    return (positive > negative) + 0.5 * (positive == negative)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance that a positive example scores above a negative one,
    ties counting half (the Mann-Whitney U statistic over the pairs). None without both classes."""
    order = pairwise_order(scores, labels)
    return float(order.mean()) if order.size else None


BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # fixed: a table regenerated from the same results shows the same intervals


def resample_counts(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples, n) counts: how often each example is drawn in each bootstrap resample."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)


def mean_of_counts(values: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic `mean` of each resample, given its counts."""
    values = np.asarray(values, dtype=float)
    return lambda counts: counts @ values / counts.sum(axis=1)


def auroc_of_counts(scores: Sequence[float], labels: Sequence[bool]) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic `auroc` of each resample, given its counts (nan where a class was not drawn)."""
    order, labels = pairwise_order(scores, labels), np.asarray(labels, dtype=bool)

    def statistic(counts: np.ndarray) -> np.ndarray:
        positive, negative = counts[:, labels], counts[:, ~labels]
        pairs = positive.sum(axis=1) * negative.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.einsum("rp,pq,rq->r", positive, order, negative) / pairs
    return statistic


def bootstrap_interval(statistics: Sequence[Callable[[np.ndarray], np.ndarray]], n: int,
                       level: float = 0.95) -> tuple[float, float] | None:
    """Percentile-bootstrap interval over the n evaluation examples of the mean of `statistics`
    (one per seed, evaluated on the same examples, so each resample draws the same examples for
    every seed). None when there are no examples."""
    if n == 0 or not statistics:
        return None
    counts = resample_counts(n)
    values = np.mean([statistic(counts) for statistic in statistics], axis=0)
    tail = 100 * (1 - level) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)
