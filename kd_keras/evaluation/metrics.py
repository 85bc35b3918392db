"""Clinical classification metrics in plain NumPy.

Written out rather than wrapped from scikit-learn so the clustered bootstrap can call them thousands of times
cheaply; the tests check every function against scikit-learn on fixed arrays.

Conventions: ``y_true`` holds integer class indices (binary: 1 = abnormal / positive), ``scores`` hold the
probability of the positive class (binary), a ``(n, classes)`` probability matrix (multi-class), or a ``(n,
labels)`` matrix with a multi-hot ``y_true`` (multi-label). :func:`probabilities_from_logits` turns model logits
into these.
"""

from __future__ import annotations

import numpy as np


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
    """Fraction of exact matches."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if y_true.size else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``cm[i, j]`` = number of examples of true class ``i`` predicted as ``j``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = num_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0)) + 1)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Binary sensitivity (recall of class 1) and specificity (recall of class 0); NaN when a class is absent."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    pos, neg = y_true == 1, y_true == 0
    sens = float(np.mean(y_pred[pos] == 1)) if pos.any() else float("nan")
    spec = float(np.mean(y_pred[neg] == 0)) if neg.any() else float("nan")
    return sens, spec


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 per class weighted by the class's support (scikit-learn's ``average="weighted"``)."""
    cm = confusion_matrix(y_true, y_pred)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(np.sum(f1 * support) / support.sum()) if support.sum() else float("nan")


def binary_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half); NaN with one class only."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, scores: np.ndarray, task: str = "binary") -> float:
    """ROC AUC for ``task`` ``"binary"``, ``"multiclass"`` (macro one-vs-rest) or ``"multilabel"`` (mean over
    labels that have both outcomes)."""
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
    """False-positive rates, true-positive rates and thresholds (decreasing), one point per distinct score."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def threshold_for_sensitivity(y_true: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (``scores >= threshold``) reaches ``target``."""
    y_true = np.asarray(y_true).astype(bool)
    pos = np.sort(np.asarray(scores, dtype=np.float64)[y_true])[::-1]
    if pos.size == 0:
        raise ValueError("no positive examples to set a sensitivity operating point on")
    k = int(np.ceil(target * pos.size)) - 1
    return float(pos[min(max(k, 0), pos.size - 1)])
