"""Evaluation: clinical metrics, clustered-bootstrap confidence intervals, reports and plots."""

from kd_keras.evaluation.bootstrap import Interval, clustered_bootstrap, clustered_bootstrap_many
from kd_keras.evaluation.metrics import (
    accuracy,
    binary_auc,
    confusion_matrix,
    positive_scores,
    probabilities_from_logits,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
    threshold_for_sensitivity,
    weighted_f1,
)
from kd_keras.evaluation.summary import evaluate_predictions

__all__ = [
    "Interval",
    "accuracy",
    "binary_auc",
    "clustered_bootstrap",
    "clustered_bootstrap_many",
    "confusion_matrix",
    "evaluate_predictions",
    "positive_scores",
    "probabilities_from_logits",
    "roc_auc",
    "roc_curve",
    "sensitivity_specificity",
    "threshold_for_sensitivity",
    "weighted_f1",
]
