"""One call that turns predictions on a labelled set into every number a report needs.

Point estimates are scikit-learn's (:mod:`kd_keras.evaluation.metrics`); the bootstrap replicates of each rate
are computed all at once by its twin in :mod:`kd_keras.evaluation.replicate_metrics` (see
:mod:`kd_keras.evaluation.bootstrap` for why and how fast).
"""

from __future__ import annotations

import numpy as np

from kd_keras.evaluation.bootstrap import clustered_bootstrap_many
from kd_keras.evaluation.metrics import (
    accuracy,
    binary_auc,
    confusion_matrix,
    positive_scores,
    roc_auc,
    sensitivity_specificity,
    weighted_f1,
)
from kd_keras.evaluation.replicate_metrics import (
    accuracy_per_replicate,
    binary_auc_per_replicate,
    roc_auc_per_replicate,
    sensitivity_specificity_per_replicate,
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

    def with_cis(rates: dict, arrays: tuple) -> dict:
        """name -> (metric, replicate twin): every rate's CI from the same replicates, drawn once."""
        if n_boot <= 0:
            return {name: {"estimate": float(metric(*arrays))} for name, (metric, _) in rates.items()}
        cis = clustered_bootstrap_many(rates, arrays, clusters, n_boot=n_boot, seed=seed)
        return {name: ci.as_dict() for name, ci in cis.items()}

    if task == "binary":
        scores = positive_scores(probabilities)
        y_pred = (scores >= threshold).astype(np.int64)
        sens, spec = sensitivity_specificity(y_true, y_pred)
        rates = {
            "accuracy": (
                lambda y, p: accuracy(y, p >= threshold),
                lambda y, p, counts: accuracy_per_replicate(y, p >= threshold, counts),
            ),
            "auc": (binary_auc, binary_auc_per_replicate),
            "sensitivity": (
                lambda y, p: sensitivity_specificity(y, p >= threshold)[0],
                lambda y, p, counts: sensitivity_specificity_per_replicate(y, p >= threshold, counts)[0],
            ),
            "specificity": (
                lambda y, p: sensitivity_specificity(y, p >= threshold)[1],
                lambda y, p, counts: sensitivity_specificity_per_replicate(y, p >= threshold, counts)[1],
            ),
        }
        out.update(
            threshold=float(threshold),
            **with_cis(rates, (y_true, scores)),
            weighted_f1=weighted_f1(y_true, y_pred),
            confusion_matrix=confusion_matrix(y_true, y_pred, 2).tolist(),
        )
        out["sensitivity"]["estimate"], out["specificity"]["estimate"] = sens, spec
    elif task == "multiclass":
        y_pred = probabilities.argmax(axis=1)
        rates = {
            "accuracy": (
                lambda y, p: accuracy(y, p.argmax(axis=1)),
                lambda y, p, counts: accuracy_per_replicate(y, p.argmax(axis=1), counts),
            ),
            "auc": (
                lambda y, p: roc_auc(y, p, "multiclass"),
                lambda y, p, counts: roc_auc_per_replicate(y, p, counts, "multiclass"),
            ),
        }
        out.update(
            **with_cis(rates, (y_true, probabilities)),
            weighted_f1=weighted_f1(y_true, y_pred),
            confusion_matrix=confusion_matrix(y_true, y_pred, probabilities.shape[1]).tolist(),
        )
    elif task == "multilabel":
        rates = {
            "accuracy": (
                lambda y, p: accuracy(y, p >= threshold),
                lambda y, p, counts: accuracy_per_replicate(y, p >= threshold, counts),
            ),
            "auc": (
                lambda y, p: roc_auc(y, p, "multilabel"),
                lambda y, p, counts: roc_auc_per_replicate(y, p, counts, "multilabel"),
            ),
        }
        out.update(
            threshold=float(threshold),
            **with_cis(rates, (y_true, probabilities)),
            per_label_auc=[binary_auc(y_true[:, k], probabilities[:, k]) for k in range(y_true.shape[1])],
        )
    else:
        raise ValueError(f"task must be binary, multiclass or multilabel, got {task!r}")
    return out
