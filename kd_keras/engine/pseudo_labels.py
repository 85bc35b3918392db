"""Pseudo-labels from a teacher's logits: the one place for them (studies 002 and 003).

- :func:`hard_pseudo_labels`: the teacher's class per example and its probability. ``threshold=None``: the argmax
  class (study 002); ``threshold=t``: class 1 where the teacher's probability of the positive class is above
  ``t`` (study 003: 0.5). For a binary head both give the same labels at ``t = 0.5``.
- :func:`pseudo_label_pool`: the teacher's logits over ``labeled + pool`` computed once into the on-disk teacher
  cache (:mod:`kd_keras.engine.teacher_cache`), reused by every student and unlabeled fraction, and the hard
  pseudo-labels of the pool (:class:`PseudoLabels`).
- :func:`argmax_pseudo_labels`, :func:`threshold_pseudo_labels`, :func:`soft_targets`: the array helpers
  (also importable from :mod:`kd_keras.engine.teacher_cache`).

Example:

```python
from kd_keras.engine.pseudo_labels import pseudo_label_pool

labels = pseudo_label_pool("runs/teacher.keras", train, pool, config, "runs/teacher_cache")            # 002
labels_003 = pseudo_label_pool("runs/teacher.keras", train, pool, config, "runs/tc", threshold=0.5)    # 003
stream = make_mixed_dataset(train, pool, config, 64, 0.5, teacher_logits=labels.cache.logits)
```
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.engine.teacher_cache.build import build_teacher_cache
from kd_keras.engine.teacher_cache.store import TeacherCache  # submodules: the package re-exports this module
from kd_keras.evaluation.metrics import accuracy, probabilities_from_logits

__all__ = [
    "PseudoLabels",
    "argmax_pseudo_labels",
    "hard_pseudo_labels",
    "pseudo_label_pool",
    "soft_targets",
    "threshold_pseudo_labels",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def argmax_pseudo_labels(logits: np.ndarray) -> np.ndarray:
    """Hard pseudo-labels of a softmax head: the teacher's argmax class (study 002).

    Args:
        logits: ``(N, K)`` with ``K >= 2``.

    Returns:
        int64 ``(N,)``.

    Example:
        >>> argmax_pseudo_labels(np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])).tolist()
        [1, 0]
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"argmax pseudo-labels need (N, K>=2) logits, got {logits.shape}; "
            "use threshold_pseudo_labels for a 1-logit head"
        )
    return np.argmax(logits, axis=1).astype(np.int64)


def threshold_pseudo_labels(logits: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard pseudo-labels of sigmoid heads: 1 where ``sigmoid(z) > threshold`` (study 003: 0.5, ``z > 0``).

    Args:
        logits: ``(N, 1)`` (a binary head: returns ``(N,)``) or ``(N, L)`` multi-label (returns ``(N, L)``).
        threshold: probability threshold in (0, 1).

    Returns:
        float32 0/1 labels, the form the data layer uses for one-logit and multi-label heads.

    Example:
        >>> threshold_pseudo_labels(np.array([[2.0], [-0.5], [0.0]])).tolist()
        [1.0, 0.0, 0.0]
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, L), got {logits.shape}")
    labels = (_sigmoid(logits) > threshold).astype(np.float32)
    return labels[:, 0] if logits.shape[1] == 1 else labels


def soft_targets(logits: np.ndarray, temperature: float = 1.0, task: str = "auto") -> np.ndarray:
    """Temperature soft targets (Hinton et al. 2015): ``softmax(z / T)``; ``sigmoid(z / T)`` for a sigmoid.

    Args:
        logits: ``(N, K)``.
        temperature: ``T > 0`` (1: plain probabilities; larger: softer).
        task: ``"auto"`` (one logit: sigmoid, else softmax), ``"multiclass"``, ``"binary"`` or
            ``"multilabel"`` (independent sigmoids); as :mod:`kd_keras.engine.losses`.

    Returns:
        float32 ``(N, K)``: rows summing to 1 (softmax), or per-logit positive-class probabilities (sigmoid;
        the pair ``[1 - p, p]`` is ``softmax([0, z] / T)``).

    Example:
        >>> soft_targets(np.array([[0.0, np.log(3.0)]]), temperature=1.0).round(4).tolist()
        [[0.25, 0.75]]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got {logits.shape}")
    if task == "auto":
        task = "binary" if logits.shape[1] == 1 else "multiclass"
    if task in ("binary", "multilabel"):
        return _sigmoid(logits / temperature).astype(np.float32)
    if task != "multiclass":
        raise ValueError(f"task must be 'auto', 'multiclass', 'binary' or 'multilabel', got {task!r}")
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)



def hard_pseudo_labels(logits: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's hard label per example and its probability: argmax (002) or a positive-class threshold (003).

    Args:
        logits: ``(N, K)`` teacher logits; ``K = 1`` is a sigmoid head.
        threshold: ``None``: the argmax class of the softmax (a 1-logit head: ``sigmoid(z) > 0.5``); a number in
            (0, 1): class 1 where the probability of the positive class (``sigmoid(z)``, or softmax column 1
            of a two-logit head) is above it, else 0. Only for binary heads (``K <= 2``).

    Returns:
        ``(labels, confidence)``: int64 ``(N,)`` classes and float64 ``(N,)`` probability of the chosen class.

    Example:
        >>> labels, confidence = hard_pseudo_labels(np.array([[0.0, 2.0], [1.0, 0.0]]), threshold=0.9)
        >>> labels.tolist()  # softmax column 1: 0.881 (not above 0.9) and 0.269
        [0, 0]
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits must be (N, K), got {logits.shape}")
    probabilities = probabilities_from_logits(logits)
    if probabilities.ndim == 1:  # one sigmoid logit: the pair [1 - p, p]
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    if threshold is None:
        labels = probabilities.argmax(axis=1).astype(np.int64)
    else:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1) or None (argmax), got {threshold}")
        if probabilities.shape[1] != 2:
            raise ValueError(
                f"a threshold needs a binary head (1 or 2 logits), got {logits.shape[1]}; use threshold=None"
            )
        labels = (probabilities[:, 1] > threshold).astype(np.int64)
    confidence = probabilities[np.arange(len(labels)), labels] if len(labels) else np.zeros(0)
    return labels, confidence


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class PseudoLabels:
    """The teacher's outputs over ``labeled + pool`` (the index space of
    :func:`kd_keras.data.pipeline.make_mixed_dataset`), from the on-disk cache.

    Attributes:
        cache: the :class:`~kd_keras.engine.teacher_cache.TeacherCache` (``cache.logits`` rows: the labeled
            examples first, then the pool); pass ``teacher_logits=cache.logits`` to ``make_mixed_dataset``.
        num_labeled: rows of the labeled part.
        pool_labels: the teacher's class for each pool image (int64 ``(U,)``; :func:`hard_pseudo_labels`).
        pool_confidence: its probability of that class.
        labeled_accuracy: the teacher's accuracy on the labeled part with the same rule (how well it fits its
            own training data).
        seconds: wall time (about 0 when the cache was reused).
        threshold: ``None`` (argmax, study 002) or the positive-class probability threshold (study 003: 0.5).

    Example:

    ```python
    labels = pseudo_label_pool(teacher, train, pool, config, "runs/teacher_cache")
    labels.summary(("NORMAL", "ABNORMAL"))["pseudo_label_counts"]  # {'NORMAL': 812, 'ABNORMAL': 188}
    ```
    """

    cache: TeacherCache
    num_labeled: int
    pool_labels: np.ndarray
    pool_confidence: np.ndarray
    labeled_accuracy: float
    seconds: float
    threshold: float | None = None

    def summary(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready: pool size, pseudo-label counts per class, mean confidence, rule, cache path and reuse."""
        width = max(len(class_names), int(self.pool_labels.max(initial=0)) + 1)
        counts = np.bincount(self.pool_labels, minlength=width)
        names = list(class_names) or [str(k) for k in range(len(counts))]
        stats = dict(getattr(self.cache, "build_stats", {}) or {})
        return {
            "pool_size": int(len(self.pool_labels)),
            "pseudo_label_counts": {names[k]: int(c) for k, c in enumerate(counts)},
            "mean_confidence": _finite_or_none(self.pool_confidence.mean()) if len(self.pool_confidence) else None,
            "teacher_accuracy_on_labeled": _finite_or_none(self.labeled_accuracy),
            "rule": "argmax" if self.threshold is None else f"positive-class probability > {self.threshold}",
            "cache": os.fspath(self.cache.path),
            "cache_build": {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))},
            "seconds": round(self.seconds, 3),
        }


def pseudo_label_pool(
    teacher: Any,
    labeled: Records,
    pool: Records,
    config: PreprocessConfig,
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    on_shard_done: Callable[[int], None] | None = None,
    shard_size: int = 4096,
    threshold: float | None = None,
) -> PseudoLabels:
    """Run the teacher once over ``labeled + pool`` (cached on disk) and derive hard pseudo-labels.

    The cache is keyed by the teacher, the files and the preprocessing: calling again with the same inputs
    reads it back without running the teacher (every student and unlabeled fraction reuses it).

    Args:
        teacher: a ``keras.Model`` or a ``.keras`` path.
        labeled: the labeled training records.
        pool: the unlabeled pool.
        config: preprocessing (the teacher's input size and channels).
        cache_dir: parent folder of teacher caches.
        batch_size: images per teacher call.
        on_shard_done: progress callback (shard number).
        shard_size: rows per cache shard.
        threshold: ``None``: argmax pseudo-labels (study 002); a probability: class 1 where the teacher's
            probability of the positive class is above it (study 003: 0.5). See :func:`hard_pseudo_labels`.

    Returns:
        :class:`PseudoLabels`.

    Example:
        >>> labels = pseudo_label_pool("runs/teacher.keras", train, pool, config, "runs/teacher_cache")
        >>> stream = make_mixed_dataset(train, pool, config, 64, 0.5, teacher_logits=labels.cache.logits)
    """
    from kd_keras.data.pipeline import mixed_records  # TensorFlow-heavy: imported when a pool is labelled

    start = time.perf_counter()
    everything = mixed_records(labeled, pool)
    cache = build_teacher_cache(teacher, everything, config, cache_dir, batch_size=batch_size,
                                on_shard_done=on_shard_done, shard_size=shard_size)
    logits = np.asarray(cache.logits[np.arange(cache.num_examples)], np.float32)
    n = len(labeled)
    labels, confidence = hard_pseudo_labels(logits, threshold)
    truth = np.asarray(labeled.labels)
    if not n:
        labeled_accuracy = float("nan")
    elif truth.ndim == 2:  # multi-label: per-label sigmoid at 0.5
        labeled_accuracy = accuracy(truth, probabilities_from_logits(logits[:n], multilabel=True) >= 0.5)
    else:
        labeled_accuracy = accuracy(truth, labels[:n])
    return PseudoLabels(
        cache=cache,
        num_labeled=n,
        pool_labels=labels[n:],
        pool_confidence=confidence[n:],
        labeled_accuracy=labeled_accuracy,
        seconds=time.perf_counter() - start,
        threshold=threshold,
    )
