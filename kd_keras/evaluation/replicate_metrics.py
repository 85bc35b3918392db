"""The metrics of :mod:`kd_keras.evaluation.metrics` on many bootstrap replicates at once, in NumPy.

A clustered-bootstrap replicate is the data set with each example repeated as often as its cluster was drawn,
so it is fully described by a row of integer multiplicities. ``counts`` is a ``(replicates, n)`` matrix of them
(float64; its rows need not sum to ``n``), and each function here returns one value per row: exactly what the
scikit-learn-backed function of the same name in :mod:`kd_keras.evaluation.metrics` returns on the expanded
replicate (``y[np.repeat(np.arange(n), counts[b])]``), NaN in the same undefined cases. The sums involved are
of integers (and halves), exact in float64, so the results agree with scikit-learn to rounding (``tests/
test_evaluation.py`` checks 1e-12 on random cases with ties and one-class replicates).

Why not scikit-learn per replicate: it validates its inputs on every call (0.4 ms for an accuracy, 2 ms for an
AUC), which made a 1000-replicate bootstrap of the four binary rates take seconds; see
:mod:`kd_keras.evaluation.bootstrap` for the figures. Point estimates and the public metric functions stay
scikit-learn's; only the replicate loop uses these.

Example:

```python
import numpy as np
from kd_keras.evaluation.replicate_metrics import binary_auc_per_replicate

y, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.6, 0.9])
counts = np.array([[1.0, 1, 1, 1], [2, 0, 1, 1], [1, 1, 0, 0]])
binary_auc_per_replicate(y, scores, counts)   # array([0.875, 1.0, nan])
```
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy_per_replicate",
    "binary_auc_per_replicate",
    "roc_auc_per_replicate",
    "sensitivity_specificity_per_replicate",
]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, NaN where the denominator is 0 (an undefined rate), without a warning."""
    out = np.full(np.shape(denominator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _as_counts(counts: np.ndarray, n: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != n:
        raise ValueError(f"counts must be a (replicates, {n}) matrix, got shape {counts.shape}")
    return counts


def accuracy_per_replicate(y_true: np.ndarray, y_pred: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`~kd_keras.evaluation.metrics.accuracy` of each replicate: the weighted fraction of exact matches;
    for 2-D multi-label arrays, of matching entries. NaN for an empty replicate.

    Args:
        y_true: ``(n,)`` class indices or ``(n, labels)`` multi-hot labels.
        y_pred: predictions of the same shape.
        counts: ``(replicates, n)`` multiplicity of each example in each replicate.

    Example:
        >>> accuracy_per_replicate(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([[1.0, 1, 1], [0, 2, 1]]))
        array([0.66666667, 0.66666667])
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    counts = _as_counts(counts, len(y_true))
    matches = (y_true == y_pred).astype(np.float64)
    if matches.ndim == 2:
        # Multi-label: the mean over labels of each example, so the total is sum_i w_i * L * mean_i.
        matches = matches.mean(axis=1)
    return _ratio(counts @ matches, counts.sum(axis=1))


def sensitivity_specificity_per_replicate(
    y_true: np.ndarray, y_pred: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~kd_keras.evaluation.metrics.sensitivity_specificity` of each replicate: recall of class 1 and of
    class 0, NaN where the replicate lacks that class.

    Args:
        y_true: ``(n,)`` binary labels (1 = positive).
        y_pred: ``(n,)`` binary predictions (or booleans).
        counts: ``(replicates, n)`` multiplicity of each example in each replicate.

    Example:
        >>> sens, spec = sensitivity_specificity_per_replicate(
        ...     np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), np.array([[1.0, 1, 1, 1], [1, 0, 0, 0]]))
        >>> sens.tolist(), spec.tolist()
        ([1.0, nan], [0.5, 1.0])
    """
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    counts = _as_counts(counts, len(y_true))
    positive, negative = (y_true == 1).astype(np.float64), (y_true == 0).astype(np.float64)
    hit = (y_true == y_pred).astype(np.float64)
    sensitivity = _ratio(counts @ (positive * hit), counts @ positive)
    specificity = _ratio(counts @ (negative * hit), counts @ negative)
    return sensitivity, specificity


def binary_auc_per_replicate(y_true: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`~kd_keras.evaluation.metrics.binary_auc` of each replicate (``roc_auc_score``: a tied
    positive-negative pair counts one half); NaN where the replicate has one class only.

    The Mann-Whitney form: with examples grouped by distinct score, AUC = sum over groups of (positive weight)
    x (negative weight below the group + half the negative weight in it), over (positives x negatives).

    Args:
        y_true: ``(n,)`` labels; nonzero = positive.
        scores: ``(n,)`` positive-class scores.
        counts: ``(replicates, n)`` multiplicity of each example in each replicate.

    Example:
        >>> binary_auc_per_replicate(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.6, 0.9]),
        ...                          np.array([[1.0, 1, 1, 1], [2, 0, 1, 1], [1, 1, 0, 0]])).tolist()
        [0.875, 1.0, nan]
    """
    positive = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    counts = _as_counts(counts, len(positive))
    if positive.size == 0:
        return np.full(len(counts), np.nan)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_counts = counts[:, order]
    pos_weight = np.add.reduceat(sorted_counts * positive[order], group_starts, axis=1)
    neg_weight = np.add.reduceat(sorted_counts * ~positive[order], group_starts, axis=1)
    neg_below = np.cumsum(neg_weight, axis=1) - neg_weight
    wins = np.einsum("rg,rg->r", pos_weight, neg_below + 0.5 * neg_weight)
    return _ratio(wins, pos_weight.sum(axis=1) * neg_weight.sum(axis=1))


def roc_auc_per_replicate(
    y_true: np.ndarray, scores: np.ndarray, counts: np.ndarray, task: str = "binary"
) -> np.ndarray:
    """:func:`~kd_keras.evaluation.metrics.roc_auc` of each replicate: binary, or the macro one-vs-rest mean
    (``"multiclass"``) or macro mean (``"multilabel"``) over the classes defined in that replicate.

    Args:
        y_true: class indices (multi-hot matrix for ``"multilabel"``).
        scores: positive-class scores (binary) or a ``(n, classes)`` matrix.
        counts: ``(replicates, n)`` multiplicity of each example in each replicate.
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.

    Example:
        >>> y, p = np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.1
        >>> roc_auc_per_replicate(y, p, np.ones((1, 4)), "multiclass").round(6).tolist()
        [0.861111]
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if task == "binary":
        return binary_auc_per_replicate(y_true, scores if scores.ndim == 1 else scores[:, 1], counts)
    if task == "multiclass":
        per_class = [binary_auc_per_replicate(y_true == k, scores[:, k], counts) for k in range(scores.shape[1])]
    elif task == "multilabel":
        per_class = [binary_auc_per_replicate(y_true[:, k], scores[:, k], counts) for k in range(scores.shape[1])]
    else:
        raise ValueError(f"task must be binary, multiclass or multilabel, got {task!r}")
    aucs = np.stack(per_class, axis=1)
    defined = ~np.isnan(aucs)
    # Same order of summation as np.mean over the defined classes in metrics.roc_auc, so equal to rounding.
    return _ratio(np.where(defined, aucs, 0.0).sum(axis=1), defined.sum(axis=1).astype(np.float64))
