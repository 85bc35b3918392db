"""One call that turns predictions on a labelled set into every number a report needs."""

from __future__ import annotations

import numpy as np

from kd_keras.evaluation.bootstrap import clustered_bootstrap
from kd_keras.evaluation.metrics import (
    accuracy,
    binary_auc,
    confusion_matrix,
    positive_scores,
    roc_auc,
    sensitivity_specificity,
    weighted_f1,
)


def evaluate_predictions(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    clusters: np.ndarray | None = None,
    task: str = "binary",
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Accuracy, ROC AUC, weighted F1, confusion matrix and, for binary tasks, sensitivity and specificity at
    ``threshold``, each rate with a clustered-bootstrap 95% CI (``clusters`` = patient or volume ids).

    Args:
        y_true: class indices (multi-hot matrix for ``task="multilabel"``).
        probabilities: from :func:`~kd_keras.evaluation.metrics.probabilities_from_logits`.
        clusters: cluster id per example; ``None`` treats examples as independent.
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        threshold: operating point on the positive-class probability (binary and multi-label).
        n_boot: bootstrap replicates (0 skips the CIs).
        seed: bootstrap seed.

    Returns:
        A JSON-ready dict. Rates are fractions in [0, 1]; CIs are ``{"estimate", "low", "high", ...}``.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    out: dict = {"n": int(len(y_true)), "task": task}
    if clusters is not None:
        out["clusters"] = int(len(np.unique(clusters)))

    def with_ci(metric, arrays) -> dict:
        if n_boot <= 0:
            return {"estimate": float(metric(*arrays))}
        return clustered_bootstrap(metric, arrays, clusters, n_boot=n_boot, seed=seed).as_dict()

    if task == "binary":
        scores = positive_scores(probabilities)
        y_pred = (scores >= threshold).astype(np.int64)
        sens, spec = sensitivity_specificity(y_true, y_pred)
        out.update(
            threshold=float(threshold),
            accuracy=with_ci(lambda y, p: accuracy(y, p >= threshold), (y_true, scores)),
            auc=with_ci(binary_auc, (y_true, scores)),
            sensitivity=with_ci(lambda y, p: sensitivity_specificity(y, p >= threshold)[0], (y_true, scores)),
            specificity=with_ci(lambda y, p: sensitivity_specificity(y, p >= threshold)[1], (y_true, scores)),
            weighted_f1=weighted_f1(y_true, y_pred),
            confusion_matrix=confusion_matrix(y_true, y_pred, 2).tolist(),
        )
        out["sensitivity"]["estimate"], out["specificity"]["estimate"] = sens, spec
    elif task == "multiclass":
        y_pred = probabilities.argmax(axis=1)
        out.update(
            accuracy=with_ci(lambda y, p: accuracy(y, p.argmax(axis=1)), (y_true, probabilities)),
            auc=with_ci(lambda y, p: roc_auc(y, p, "multiclass"), (y_true, probabilities)),
            weighted_f1=weighted_f1(y_true, y_pred),
            confusion_matrix=confusion_matrix(y_true, y_pred, probabilities.shape[1]).tolist(),
        )
    elif task == "multilabel":
        y_pred = (probabilities >= threshold).astype(np.int64)
        out.update(
            threshold=float(threshold),
            accuracy=with_ci(lambda y, p: accuracy(y, p >= threshold), (y_true, probabilities)),
            auc=with_ci(lambda y, p: roc_auc(y, p, "multilabel"), (y_true, probabilities)),
            per_label_auc=[binary_auc(y_true[:, k], probabilities[:, k]) for k in range(y_true.shape[1])],
        )
    else:
        raise ValueError(f"task must be binary, multiclass or multilabel, got {task!r}")
    return out
