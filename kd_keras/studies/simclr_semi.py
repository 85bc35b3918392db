"""Study 003's choices around its semi-supervised parts, as pure functions: the teacher's operating point for the
pseudo-labels and the settings of the FixMatch and MixMatch baselines.

The paper labels the pool with "a threshold of 0.5" on the teacher's positive-class probability. A teacher
fine-tuned on 2% of the labels can be badly calibrated (issue #21: a demo teacher called all 76 pool images
"referable", 42% agreement with the truth), so ``pseudo_label_threshold`` also takes a rule that picks the
threshold from the data: ``prevalence`` (the pool gets the labeled set's share of positives) or ``youden``
(Youden's J on the labeled set). :func:`operating_point` computes it.

Example:

```python
from kd_keras.studies.simclr_semi import baseline_objective, operating_point

threshold = operating_point("prevalence", labeled_probability, labeled_truth, pool_probability)
objective = baseline_objective(config, "mixmatch")  # {"name": "mixmatch", "lambda_u": 100.0, ...}
```
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kd_keras.studies.simclr_config import PSEUDO_LABEL_RULES, SimCLRConfig

__all__ = ["SEMI_SUPERVISED", "baseline_epochs", "baseline_objective", "baseline_ratio", "operating_point",
           "pseudo_label_agreement"]

SEMI_SUPERVISED = ("fixmatch", "mixmatch")


def operating_point(rule: float | str, labeled_probability: np.ndarray, labeled_truth: np.ndarray,
                    pool_probability: np.ndarray) -> float:
    """The threshold on the teacher's positive-class probability above which a pool image is pseudo-labeled 1.

    Args:
        rule: a probability (returned as is: the paper's 0.5); ``"prevalence"``: the threshold that labels the
            labeled set's share of positives in the pool positive (the pool's quantile at ``1 - prevalence``);
            ``"youden"``: the threshold of the largest sensitivity + specificity - 1 on the labeled set.
        labeled_probability: the teacher's positive-class probability on the labeled images ``(L,)``.
        labeled_truth: their labels, 0/1 ``(L,)``.
        pool_probability: the teacher's positive-class probability on the pool ``(U,)``.

    Returns:
        A threshold in (0, 1), used as ``probability > threshold``.

    Example:
        >>> operating_point("prevalence", np.array([0.2, 0.9]), np.array([0, 1]), np.array([0.1, 0.3, 0.6, 0.7]))
        0.45
    """
    if not isinstance(rule, str):
        return float(rule)
    if rule not in PSEUDO_LABEL_RULES:
        raise ValueError(f"rule must be a probability or one of {PSEUDO_LABEL_RULES}, got {rule!r}")
    truth = np.asarray(labeled_truth).astype(int).reshape(-1)
    scores = np.asarray(labeled_probability, np.float64).reshape(-1)
    if rule == "prevalence":
        pool = np.sort(np.asarray(pool_probability, np.float64).reshape(-1))
        negatives = int(round((1.0 - truth.mean()) * len(pool)))  # pool images to leave below the threshold
        if negatives <= 0:
            threshold = pool[0] / 2.0
        elif negatives >= len(pool):
            threshold = (1.0 + pool[-1]) / 2.0
        else:
            threshold = (pool[negatives - 1] + pool[negatives]) / 2.0  # between the two neighbours
    else:
        if truth.min() == truth.max():
            raise ValueError("youden: the labeled set holds one class only; choose a probability or 'prevalence'")
        candidates = np.unique(scores)
        # "probability > t" for t just below each candidate: everything at or above it is positive.
        cuts = np.concatenate([[0.0], (candidates[:-1] + candidates[1:]) / 2.0])
        positive = scores[None, :] > cuts[:, None]
        sensitivity = (positive & (truth == 1)).sum(1) / max(1, (truth == 1).sum())
        specificity = (~positive & (truth == 0)).sum(1) / max(1, (truth == 0).sum())
        threshold = cuts[int(np.argmax(sensitivity + specificity - 1.0))]
    return float(np.clip(threshold, 1e-6, 1.0 - 1e-6))


def pseudo_label_agreement(pool_probability: np.ndarray, pool_truth: np.ndarray, threshold: float) -> dict[str, Any]:
    """The pool's pseudo-labels at ``threshold`` (``probability > threshold``) against its hidden labels.

    Used to report the paper's 0.5 beside the operating point the run used, from the same teacher outputs.

    Args:
        pool_probability: the teacher's positive-class probability on the pool ``(U,)``.
        pool_truth: the pool's hidden labels, 0/1 ``(U,)`` (never used for training).
        threshold: the operating point.

    Returns:
        ``{"threshold", "positive", "total", "agreement_with_hidden_labels"}``.

    Example:
        >>> pseudo_label_agreement(np.array([0.2, 0.6, 0.9]), np.array([0, 0, 1]), 0.5)["positive"]
        2
    """
    positive = np.asarray(pool_probability, np.float64).reshape(-1) > threshold
    truth = np.asarray(pool_truth).astype(int).reshape(-1)
    return {"threshold": float(threshold), "positive": int(positive.sum()), "total": int(len(positive)),
            "agreement_with_hidden_labels": float(np.mean(positive.astype(int) == truth)) if len(truth) else
            float("nan")}


def baseline_epochs(config: SimCLRConfig, name: str) -> int:
    """Epochs of baseline ``name``: ``supervised_epochs`` for the supervised ones when set (passes over their
    labeled images, like the teacher's fine-tune), ``baseline_epochs`` otherwise (FixMatch and MixMatch: passes
    over the pool)."""
    if name in SEMI_SUPERVISED or not config.supervised_epochs:
        return config.baseline_epochs
    return config.supervised_epochs


def baseline_ratio(config: SimCLRConfig, name: str) -> int:
    """Unlabeled examples per labeled one in a batch of the semi-supervised baseline ``name``."""
    return config.fixmatch_ratio if name == "fixmatch" else config.mixmatch_ratio


def baseline_objective(config: SimCLRConfig, name: str) -> str | dict[str, Any]:
    """The objective of baseline ``name`` (``hard_label`` for the supervised ones), with the papers' settings and
    ``reduction="per_stream"`` (the labeled and the unlabeled batches each averaged on their own).

    Example:
        >>> baseline_objective(config, "fixmatch")
        {'name': 'fixmatch', 'threshold': 0.95, 'lambda_u': 1.0, 'reduction': 'per_stream'}
    """
    if name == "fixmatch":
        return {"name": "fixmatch", "threshold": config.fixmatch_threshold, "lambda_u": config.fixmatch_lambda_u,
                "reduction": "per_stream"}
    if name == "mixmatch":
        return {"name": "mixmatch", "sharpen_temperature": config.mixmatch_temperature,
                "alpha": config.mixmatch_alpha, "lambda_u": config.mixmatch_lambda_u,
                "rampup_steps": config.mixmatch_rampup_steps, "seed": config.seed, "reduction": "per_stream"}
    return "hard_label"
