"""Clustered bootstrap confidence intervals (study 002).

B-scans of one volume (or images of one patient) are correlated, so resampling single images understates the
uncertainty. The clustered bootstrap resamples whole clusters with replacement and recomputes the metric on the
union of their members; the percentile interval of the replicates is the CI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    replicates: int = 0  # replicates where the metric was defined

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{100 * self.estimate:.2f} [{100 * self.low:.2f}, {100 * self.high:.2f}]"


def clustered_bootstrap(
    metric: Callable[..., float],
    arrays: tuple[np.ndarray, ...],
    clusters: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile CI of ``metric(*arrays)`` by resampling clusters with replacement.

    Args:
        metric: a function of the arrays (e.g. ``binary_auc(y, scores)``) returning a float; NaN replicates (a
            resample without one of the classes) are left out and counted in ``replicates``.
        arrays: aligned per-example arrays (first axis = examples).
        clusters: cluster id per example (patient or volume); ``None`` makes each example its own cluster.
        n_boot: number of bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the resampling.

    Example:
        >>> from kd_keras.evaluation.metrics import binary_auc
        >>> ci = clustered_bootstrap(binary_auc, (y, p), clusters=volume_ids, n_boot=2000)
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("arrays passed to clustered_bootstrap must have the same length")
    if clusters is None:
        clusters = np.arange(n)
    _, cluster_index = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(cluster_index.max()) + 1 if n else 0
    # Members of each cluster, as one index array sorted by cluster.
    order = np.argsort(cluster_index, kind="stable")
    starts = np.searchsorted(cluster_index[order], np.arange(n_clusters + 1))

    rng = np.random.default_rng(seed)
    estimate = float(metric(*arrays))
    values = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, n_clusters, size=n_clusters)
        idx = np.concatenate([order[starts[c] : starts[c + 1]] for c in picked])
        values[b] = metric(*(a[idx] for a in arrays))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return Interval(estimate, float("nan"), float("nan"), level, 0)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(estimate, float(low), float(high), level, int(values.size))
