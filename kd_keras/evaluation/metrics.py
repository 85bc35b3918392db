"""Clinical classification metrics: scikit-learn's, with the conventions and edge cases this library needs.

Accuracy, the confusion matrix, recall (sensitivity / specificity), weighted F1, ROC AUC and the ROC curve are
``sklearn.metrics``; what is ours is the plumbing around them: an undefined rate is NaN rather than an exception,
a warning or a 0 (an AUC with one class present, a sensitivity without positives), so the clustered bootstrap
(:mod:`kd_keras.evaluation.bootstrap`) can leave such replicates out; a multi-class AUC averages the classes
present; logits become probabilities; an operating point is chosen for a target sensitivity.

Cost: scikit-learn validates its inputs on every call (about 0.4 ms for an accuracy, 2 ms for an AUC), too slow
to call once per bootstrap replicate; the clustered bootstrap therefore computes its replicates with the
vectorised twins in :mod:`kd_keras.evaluation.replicate_metrics`, tested equal to these functions.

Conventions: ``y_true`` holds integer class indices (binary: 1 = abnormal / positive), ``scores`` hold the
probability of the positive class (binary), a ``(n, classes)`` probability matrix (multi-class), or a ``(n,
labels)`` matrix with a multi-hot ``y_true`` (multi-label). :func:`probabilities_from_logits` turns model logits
into these.

Example:

```python
from kd_keras.evaluation.metrics import binary_auc, probabilities_from_logits, sensitivity_specificity

scores = probabilities_from_logits(logits)          # (n,) for a one-logit head
auc = binary_auc(labels, scores)                     # NaN when only one class is present
sensitivity, specificity = sensitivity_specificity(labels, scores >= 0.5)
```
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def probabilities_from_logits(logits: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Softmax over classes, or an element-wise sigmoid for multi-label and single-logit binary heads.

    A ``(n, 1)`` logit column is treated as a binary head and returns the positive-class probability ``(n,)``;
    a ``(n, 2)`` matrix returns ``(n, 2)`` (take column 1 for the positive class).

    Example:
        >>> probabilities_from_logits(np.array([[0.0], [2.0]])).round(3)
        array([0.5  , 0.881])
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2 and logits.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-logits[:, 0]))
    if multilabel:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def positive_scores(probabilities: np.ndarray, positive_class: int = 1) -> np.ndarray:
    """The positive-class column of a probability matrix, or the vector itself for a single-logit head."""
    p = np.asarray(probabilities)
    return p if p.ndim == 1 else p[:, positive_class]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of exact matches (``sklearn.metrics.accuracy_score``); for 2-D multi-label arrays, the fraction
    of matching entries (``1 - hamming_loss``), not scikit-learn's subset accuracy. NaN when empty.

    Example:
        >>> accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]))
        0.6666666666666666
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not y_true.size:
        return float("nan")
    if y_true.ndim == 2:
        return float(1.0 - skm.hamming_loss(y_true.astype(np.int64), y_pred.astype(np.int64)))
    return float(skm.accuracy_score(y_true, y_pred))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``cm[i, j]`` = number of examples of true class ``i`` predicted as ``j`` (``sklearn.metrics.confusion_matrix``
    over the classes ``0 .. num_classes - 1``; default: up to the largest index seen).

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = num_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0)) + 1)
    if not y_true.size:
        return np.zeros((k, k), np.int64)
    return skm.confusion_matrix(y_true, y_pred, labels=np.arange(k))


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Binary sensitivity (recall of class 1) and specificity (recall of class 0), from
    ``sklearn.metrics.recall_score``; NaN when a class is absent from ``y_true``.

    Example:
        >>> sensitivity_specificity(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
        (1.0, 0.5)
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if not y_true.size:
        return float("nan"), float("nan")
    specificity, sensitivity = skm.recall_score(y_true, y_pred, labels=[0, 1], average=None, zero_division=np.nan)
    return float(sensitivity), float(specificity)


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 per class weighted by the class's support (``sklearn.metrics.f1_score(average="weighted")``); NaN when
    empty.

    Example:
        >>> round(weighted_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])), 4)
        0.7333
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not y_true.size:
        return float("nan")
    return float(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0))


def _has_both_classes(y_true: np.ndarray) -> bool:
    return bool(y_true.any()) and not bool(y_true.all())


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``: ties count one half); NaN with one class only.

    Example:
        >>> binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.6, 0.9]))
        0.875
    """
    y_true = np.asarray(y_true).astype(bool)
    if not _has_both_classes(y_true):
        return float("nan")
    return float(skm.roc_auc_score(y_true, np.asarray(scores, dtype=np.float64)))


def roc_auc(y_true: np.ndarray, scores: np.ndarray, task: str = "binary") -> float:
    """ROC AUC for ``task`` ``"binary"``, ``"multiclass"`` (macro one-vs-rest) or ``"multilabel"`` (macro).

    Classes (or labels) with one outcome only in ``y_true`` are left out of the mean, where
    ``sklearn.metrics.roc_auc_score`` would raise: a bootstrap resample often lacks a rare class. With every
    class present this is scikit-learn's ``multi_class="ovr", average="macro"`` (multi-class) and
    ``average="macro"`` (multi-label).

    Example:
        >>> roc_auc(np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 1]] * 0.8 + 0.1, "multiclass")
        0.8611111111111112
    """
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if task == "binary":
        return binary_auc(y_true, positive_scores(scores))
    if task == "multiclass":
        aucs = [binary_auc(y_true == k, scores[:, k]) for k in range(scores.shape[1])]
    elif task == "multilabel":
        aucs = [binary_auc(y_true[:, k], scores[:, k]) for k in range(scores.shape[1])]
    else:
        raise ValueError(f"task must be binary, multiclass or multilabel, got {task!r}")
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds (decreasing, the first ``inf``), one point per
    distinct score (``sklearn.metrics.roc_curve(drop_intermediate=False)``). With one class only, the rate of
    the absent class is 0 rather than scikit-learn's NaN and warning, so the curve can still be drawn.

    Example:
        >>> fpr, tpr, thresholds = roc_curve(np.array([0, 1, 1]), np.array([0.2, 0.4, 0.9]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if _has_both_classes(y_true):
        fpr, tpr, thresholds = skm.roc_curve(y_true, scores, drop_intermediate=False)
        return fpr, tpr, thresholds
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    thresholds = np.r_[np.inf, np.unique(sorted_scores)[::-1]]
    positives = np.array([(y_true & (scores >= t)).sum() for t in thresholds[1:]], np.float64)
    predicted = np.array([(scores >= t).sum() for t in thresholds[1:]], np.float64)
    tpr = np.r_[0.0, positives / max(y_true.sum(), 1)]
    fpr = np.r_[0.0, (predicted - positives) / max((~y_true).sum(), 1)]
    return fpr, tpr, thresholds


def threshold_for_sensitivity(y_true: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (``scores >= threshold``) reaches ``target``."""
    y_true = np.asarray(y_true).astype(bool)
    pos = np.sort(np.asarray(scores, dtype=np.float64)[y_true])[::-1]
    if pos.size == 0:
        raise ValueError("no positive examples to set a sensitivity operating point on")
    k = int(np.ceil(target * pos.size)) - 1
    return float(pos[min(max(k, 0), pos.size - 1)])
