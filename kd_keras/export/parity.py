"""Parity of an exported file with the Keras model it came from, measured on real images.

Parity is measured on the logits both produce for the same images (real images: quantisation error on noise says
little about error on scans):

- ``max_abs_diff``: ``max |exported - keras|`` over all images and logits;
- ``max_relative_diff``: ``max_abs_diff / max |keras|``, the largest error relative to the largest logit the
  model produced on these images. A per-element ratio would blow up on logits near zero, which carry no decision;
  scaling by the logit range is what decides whether an error can change a decision;
- ``score_correlation``: Pearson correlation, across images, of the score the decision is taken on (binary: the
  logit margin ``z1 - z0`` or the single logit; more classes: the logits centred per image). It tells whether the
  file ranks images as Keras does even where a weakly trained model's decisions sit close to the threshold;
- ``decision_agreement``: share of images on which both take the same decision (binary: positive probability at
  or above the threshold; more classes: argmax);
- with labels: accuracy and ROC AUC (scikit-learn's ``roc_auc_score``) of each, and their change.

Gates (:class:`ParityThresholds`): float32 files must match to ``max_relative_diff <= 1e-4``; reduced-precision
files (fp16, dynamic range, int8) must agree on at least 99% of decisions. (No logit gate for fp16 by default:
float16 weights move logits by about 1e-2 of their range even in trained students; set ``fp16_relative`` to add
one.)
:func:`check_parity` raises :class:`ExportParityError` past a gate; a user who accepts less passes
``min_agreement`` explicitly, and the report records that it was lowered.

Example:

```python
report = measure_parity(keras_logits, tflite_logits, variant="int8", runtime="litert", labels=labels)
check_parity(report, "student_int8.tflite")  # raises ExportParityError if agreement < 0.99
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

FLOAT_VARIANTS = ("fp32",)
REDUCED_VARIANTS = ("fp16", "dynamic", "int8")


class ExportParityError(RuntimeError):
    """An exported file does not compute what its Keras model computes (past a parity gate).

    Attributes:
        report: the :class:`ParityReport` that failed.
    """

    def __init__(self, message: str, report: ParityReport):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityThresholds:
    """The gates an export must pass.

    Args:
        fp32_relative: largest ``max_relative_diff`` for float32 files (TFLite fp32, ONNX).
        fp16_relative: optional largest ``max_relative_diff`` for float16-weight TFLite files (``None``: none).
        min_agreement: smallest decision agreement for fp16, dynamic-range and int8 files.
    """

    fp32_relative: float = 1e-4
    fp16_relative: float | None = None
    min_agreement: float = 0.99


@dataclass
class ParityReport:
    """Parity of one exported file with its Keras model (see the module docstring for the definitions)."""

    variant: str
    runtime: str
    num_images: int
    max_abs_diff: float
    max_relative_diff: float
    mean_abs_diff: float
    max_abs_keras_logit: float
    decision_agreement: float
    score_correlation: float | None = None
    keras_accuracy: float | None = None
    exported_accuracy: float | None = None
    accuracy_change: float | None = None
    keras_auc: float | None = None
    exported_auc: float | None = None
    auc_change: float | None = None
    gates: dict[str, float] = field(default_factory=dict)
    agreement_lowered_by_user: bool = False
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


def positive_probability(logits: np.ndarray) -> np.ndarray:
    """Probability of the positive class of a binary model: sigmoid of one logit, softmax of two."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits[:, 0]))
    if logits.shape[-1] == 2:
        return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax[:, 1], stable for large gaps
    raise ValueError(f"positive_probability needs 1 or 2 logits, got {logits.shape[-1]}")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def decisions(logits: np.ndarray, threshold: float | None = 0.5) -> np.ndarray:
    """The decision a deployed model takes: binary -> ``p(positive) >= threshold`` (0/1), else argmax."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (images, classes), got shape {logits.shape}")
    if logits.shape[-1] <= 2:
        return (positive_probability(logits) >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return np.argmax(logits, axis=-1)


def decision_scores(logits: np.ndarray) -> np.ndarray:
    """What a decision thresholds: the single logit, the margin ``z1 - z0``, or per-image centred logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[-1] == 1:
        return logits[:, 0]
    if logits.shape[-1] == 2:
        return logits[:, 1] - logits[:, 0]
    return (logits - logits.mean(axis=-1, keepdims=True)).reshape(-1)


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0 or not np.all(np.isfinite(b)):
        return None  # undefined for constant scores (a collapsed output shows as None)
    return float(np.corrcoef(a, b)[0, 1])


def _auc(labels: np.ndarray, logits: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score  # imported here: the latency workers need no scikit-learn

    num_classes = logits.shape[-1]
    if len(np.unique(labels)) < 2:
        return None  # AUC is undefined with one class present
    if num_classes <= 2:
        return float(roc_auc_score(labels, positive_probability(logits)))
    if len(np.unique(labels)) < num_classes:
        return None  # one-vs-rest needs every class
    return float(roc_auc_score(labels, softmax(logits), multi_class="ovr", labels=list(range(num_classes))))


def measure_parity(
    keras_logits: np.ndarray,
    exported_logits: np.ndarray,
    *,
    variant: str,
    runtime: str,
    labels: np.ndarray | None = None,
    threshold: float | None = 0.5,
    thresholds: ParityThresholds | None = None,
    min_agreement: float | None = None,
) -> ParityReport:
    """Compare exported logits with Keras logits for the same images and apply the variant's gates.

    Args:
        keras_logits: ``(images, classes)`` logits of the Keras model.
        exported_logits: the same from the exported file (dequantised for int8 outputs).
        variant: ``"fp32"``, ``"fp16"``, ``"dynamic"`` or ``"int8"``.
        runtime: what ran the file (``"litert"``, ``"onnxruntime"``), for the report.
        labels: optional integer labels of the images; adds accuracy and AUC and their change.
        threshold: decision threshold on the positive probability of a binary model.
        thresholds: the gates (:class:`ParityThresholds`).
        min_agreement: the user's explicit acceptance of a lower decision agreement for reduced-precision
            variants (overrides ``thresholds.min_agreement``; recorded in the report).

    Returns:
        A :class:`ParityReport`; ``report.failures`` lists every gate it missed (empty when it passed).

    Example:
        >>> report = measure_parity(np.array([[0.0, 1.0]]), np.array([[0.0, 1.00001]]), variant="fp32",
        ...                         runtime="litert")
        >>> report.passed
        True
    """
    thresholds = thresholds or ParityThresholds()
    if variant not in FLOAT_VARIANTS + REDUCED_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {FLOAT_VARIANTS + REDUCED_VARIANTS}")
    keras_logits = np.asarray(keras_logits, dtype=np.float64)
    exported_logits = np.asarray(exported_logits, dtype=np.float64)
    if keras_logits.shape != exported_logits.shape:
        raise ValueError(f"logit shapes differ: keras {keras_logits.shape}, exported {exported_logits.shape}")
    if keras_logits.ndim != 2 or len(keras_logits) == 0:
        raise ValueError(f"logits must be (images, classes) with at least one image, got {keras_logits.shape}")
    if not np.all(np.isfinite(exported_logits)):
        bad = int(np.sum(~np.isfinite(exported_logits).all(axis=1)))
        diff = np.full_like(keras_logits, np.inf)
        failures = [f"{bad} of {len(exported_logits)} images give non-finite logits"]
    else:
        diff = np.abs(exported_logits - keras_logits)
        failures = []
    scale = float(np.max(np.abs(keras_logits)))
    max_abs = float(np.max(diff))
    relative = max_abs / max(scale, np.finfo(np.float32).tiny)
    keras_decisions = decisions(keras_logits, threshold)
    exported_decisions = decisions(np.nan_to_num(exported_logits), threshold)
    agreement = float(np.mean(keras_decisions == exported_decisions))

    report = ParityReport(
        variant=variant,
        runtime=runtime,
        num_images=len(keras_logits),
        max_abs_diff=max_abs,
        max_relative_diff=relative,
        mean_abs_diff=float(np.mean(diff)),
        max_abs_keras_logit=scale,
        decision_agreement=agreement,
        score_correlation=_correlation(decision_scores(keras_logits), decision_scores(exported_logits)),
        failures=failures,
    )
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(keras_logits):
            raise ValueError(f"{len(labels)} labels for {len(keras_logits)} images")
        report.keras_accuracy = float(np.mean(keras_decisions == labels))
        report.exported_accuracy = float(np.mean(exported_decisions == labels))
        report.accuracy_change = report.exported_accuracy - report.keras_accuracy
        report.keras_auc = _auc(labels, keras_logits)
        report.exported_auc = _auc(labels, np.nan_to_num(exported_logits))
        if report.keras_auc is not None and report.exported_auc is not None:
            report.auc_change = report.exported_auc - report.keras_auc

    if variant == "fp32":
        report.gates = {"max_relative_diff": thresholds.fp32_relative}
    else:
        agreement_gate = thresholds.min_agreement if min_agreement is None else float(min_agreement)
        report.agreement_lowered_by_user = agreement_gate < thresholds.min_agreement
        report.gates = {"decision_agreement": agreement_gate}
        if variant == "fp16" and thresholds.fp16_relative is not None:
            report.gates["max_relative_diff"] = thresholds.fp16_relative
    if "max_relative_diff" in report.gates and not relative <= report.gates["max_relative_diff"]:
        report.failures.append(
            f"max relative logit difference {relative:.2e} > {report.gates['max_relative_diff']:.2e}"
        )
    if "decision_agreement" in report.gates and agreement < report.gates["decision_agreement"]:
        report.failures.append(
            f"decision agreement {agreement:.2%} < {report.gates['decision_agreement']:.2%} on "
            f"{len(keras_logits)} images (lower the gate explicitly with min_agreement / --accept-agreement)"
        )
    return report


def check_parity(report: ParityReport, exported_file: str) -> None:
    """Raise :class:`ExportParityError` (one line naming the file) when ``report`` missed a gate."""
    if report.failures:
        raise ExportParityError(
            f"{exported_file}: {report.variant} export fails parity with Keras ({report.runtime}): "
            + "; ".join(report.failures),
            report,
        )
