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


def _one_vs_rest(j: int, which: int) -> tuple:
    """(metric, replicate twin) of class ``j``'s one-vs-rest sensitivity (``which=0``) or specificity (1)."""
    return (lambda y, p: sensitivity_specificity(y == j, p.argmax(axis=1) == j)[which],
            lambda y, p, counts: sensitivity_specificity_per_replicate(y == j, p.argmax(axis=1) == j, counts)[which])


def _macro_rates(y: np.ndarray, p: np.ndarray, which: int) -> float:
    values = [sensitivity_specificity(y == j, p.argmax(axis=1) == j)[which] for j in range(p.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _macro_rates_per_replicate(y: np.ndarray, p: np.ndarray, counts: np.ndarray, which: int) -> np.ndarray:
    per_class = np.stack([sensitivity_specificity_per_replicate(y == j, p.argmax(axis=1) == j, counts)[which]
                          for j in range(p.shape[1])], axis=1)
    defined = ~np.isnan(per_class)  # a resample may lack a class: mean over the classes it has
    total = np.where(defined, per_class, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / defined.sum(axis=1)


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

    Multi-class: ``auc`` is the macro one-vs-rest AUC; ``per_class[j]`` holds class ``j``'s one-vs-rest
    sensitivity and specificity of the argmax prediction (with CIs) and AUC; ``sensitivity`` and
    ``specificity`` are their macro means (macro sensitivity = balanced accuracy).

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
        k = probabilities.shape[1]
        rates = {
            "accuracy": (
                lambda y, p: accuracy(y, p.argmax(axis=1)),
                lambda y, p, counts: accuracy_per_replicate(y, p.argmax(axis=1), counts),
            ),
            "auc": (
                lambda y, p: roc_auc(y, p, "multiclass"),
                lambda y, p, counts: roc_auc_per_replicate(y, p, counts, "multiclass"),
            ),
            # Macro means of the one-vs-rest rates below (macro sensitivity is balanced accuracy).
            "sensitivity": (lambda y, p: _macro_rates(y, p, 0), lambda y, p, c: _macro_rates_per_replicate(y, p, c, 0)),
            "specificity": (lambda y, p: _macro_rates(y, p, 1), lambda y, p, c: _macro_rates_per_replicate(y, p, c, 1)),
        }
        for j in range(k):  # class j against the rest, from the argmax prediction
            rates[f"sensitivity_{j}"] = _one_vs_rest(j, 0)
            rates[f"specificity_{j}"] = _one_vs_rest(j, 1)
        values = with_cis(rates, (y_true, probabilities))
        out.update(
            accuracy=values.pop("accuracy"), auc=values.pop("auc"), sensitivity=values.pop("sensitivity"),
            specificity=values.pop("specificity"),
            per_class=[{"sensitivity": values[f"sensitivity_{j}"], "specificity": values[f"specificity_{j}"],
                        "auc": binary_auc(y_true == j, probabilities[:, j])} for j in range(k)],
            weighted_f1=weighted_f1(y_true, y_pred),
            confusion_matrix=confusion_matrix(y_true, y_pred, k).tolist(),
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
