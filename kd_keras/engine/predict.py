"""Batched prediction, validation scores and the evaluation of a model on records: one implementation each.

- :func:`score_logits`: accuracy or ROC AUC of logits against labels (the per-epoch validation score).
- :func:`predict`: logits, labels and example indices of a records table or a batched stream, batch by batch
  (``predict_on_batch``; never a whole volume in one eager call: 24 GB for ResNet50 on 128 images).
- :func:`evaluate_model`: accuracy, AUC and more with patient-clustered bootstrap CIs
  (:func:`kd_keras.evaluation.evaluate_predictions`); multi-label: per-label AUC with unknown (``-1``) labels
  left out label by label.
- :func:`make_score_fn`: ``model -> score`` on records, the callable validation of :func:`kd_keras.engine.train`.

Example:

```python
from kd_keras.engine import evaluate_model, make_score_fn, predict

out = predict(student, test_records, config, batch_size=64)
out.score("auc")
metrics = evaluate_model(student, test_records, config, n_boot=1000)
validation = make_score_fn(val_records, config, "auc")  # train(..., validation=validation)
```
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.data.tasks import HeadSpec, evaluation_task
from kd_keras.engine.distiller import Distiller
from kd_keras.engine.distribute import predict_on_batch
from kd_keras.evaluation.metrics import accuracy, binary_auc, probabilities_from_logits, roc_auc
from kd_keras.evaluation.summary import evaluate_predictions

MONITORS = ("accuracy", "auc")


def student_of(model: keras.Model) -> keras.Model:
    """The classifier inside ``model``: a Distiller's student, or the model itself."""
    return model.student if isinstance(model, Distiller) else model


def infer_task(logits: np.ndarray, labels: np.ndarray) -> str:
    """``"binary"`` (one logit, or two logits with class labels), ``"multiclass"`` or ``"multilabel"`` (2-D
    labels): :func:`kd_keras.data.tasks.evaluation_task` from arrays instead of records.

    Example:
        >>> infer_task(np.zeros((4, 2)), np.array([0, 1, 1, 0]))
        'binary'
    """
    return evaluation_task(int(np.asarray(logits).shape[-1]), multilabel=np.asarray(labels).ndim == 2)


def score_logits(labels: np.ndarray, logits: np.ndarray, metric: str = "accuracy") -> float:
    """Accuracy (argmax, or logit > 0 for sigmoid heads) or ROC AUC of ``logits`` against ``labels``.

    Args:
        labels: class indices ``(N,)`` or multi-hot ``(N, K)``.
        logits: ``(N, K)`` model outputs.
        metric: ``"accuracy"`` or ``"auc"`` (binary AUC of the positive class, macro one-vs-rest for
            multi-class, mean over labels for multi-label). NaN when undefined (one class only).

    Example:
        >>> score_logits(np.array([0, 1, 1]), np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]))
        0.6666666666666666
    """
    if metric not in MONITORS:
        raise ValueError(f"metric must be one of {MONITORS}, got {metric!r}")
    labels, logits = np.asarray(labels), np.asarray(logits, np.float64)
    if len(labels) == 0:
        return float("nan")
    task = infer_task(logits, labels)
    probabilities = probabilities_from_logits(logits, multilabel=task == "multilabel")
    if metric == "auc":
        return roc_auc(labels, probabilities, task)
    if task == "multilabel" or probabilities.ndim == 1:  # sigmoid outputs
        return accuracy(labels, probabilities >= 0.5)
    return accuracy(labels, probabilities.argmax(axis=1))


@dataclass
class Predictions:
    """Outputs of :func:`predict`, row-aligned.

    Attributes:
        logits: float32 ``(N, K)``.
        labels: the labels of the streamed examples (placeholders for unlabeled ones).
        indices: int64 ``(N,)`` rows of the records (the stream's ``index``; -1 when the stream has none); files
            that failed to decode are absent.
        labeled: bool ``(N,)``.
        seconds: wall time of the prediction.
    """

    logits: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    labeled: np.ndarray
    seconds: float = 0.0

    def score(self, metric: str = "accuracy") -> float:
        """:func:`score_logits` over the labeled rows."""
        return score_logits(self.labels[self.labeled], self.logits[self.labeled], metric)

    def probabilities(self) -> np.ndarray:
        """Softmax (or sigmoid) probabilities, the input of :func:`kd_keras.evaluation.evaluate_predictions`."""
        return probabilities_from_logits(self.logits, multilabel=np.asarray(self.labels).ndim == 2)


def predict(
    model: keras.Model,
    data: Records | tf.data.Dataset,
    config: PreprocessConfig | None = None,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Predictions:
    """Logits of ``model`` on every example of ``data``, one batch at a time, unaugmented.

    Args:
        model: a classifier (or a Distiller: its student).
        data: :class:`~kd_keras.data.records.Records` (streamed in order with ``config``), or a batched
            ``tf.data`` stream of schema dicts (``image``, ``label``, ``index``, optional ``labeled``).
        config: the preprocessing, required with records.
        batch_size: images per model call (bounds memory: never a whole volume at once).
        progress: called with the number of examples of each batch done (e.g. a tqdm bar's ``update``).

    Returns:
        :class:`Predictions`.

    Raises:
        ValueError: no example could be read (every file failed to decode), or records without ``config``.

    Example:
        >>> out = predict(student, test_records, PreprocessConfig((64, 64), channels=1), batch_size=64)
        >>> out.score("auc")
    """
    from kd_keras.data.pipeline import make_dataset  # the data pipeline imports TF-heavy modules

    size = len(data) if isinstance(data, Records) else None
    if isinstance(data, Records):
        if config is None:
            raise ValueError("predict: pass the PreprocessConfig with records")
        data = make_dataset(data, config, batch_size, shuffle=False)
    elif not isinstance(data, tf.data.Dataset):
        raise TypeError(f"predict: data must be Records or a tf.data.Dataset, got {type(data).__name__}")
    net = student_of(model)
    start = time.perf_counter()
    logits, labels, indices, labeled = [], [], [], []
    for batch in data:
        if not isinstance(batch, Mapping) or schema.IMAGE not in batch:
            raise ValueError(f"predict: the stream must yield dicts with {schema.IMAGE!r} (kd_keras.data.schema)")
        images = batch[schema.IMAGE]
        n = int(images.shape[0])
        # A stream batch larger than batch_size is split, so memory stays bounded whatever the stream does.
        for first in range(0, n, batch_size):
            logits.append(predict_on_batch(net, images[first : first + batch_size]))
        labels.append(np.asarray(batch[schema.LABEL]) if schema.LABEL in batch else np.zeros(n, np.int32))
        indices.append(np.asarray(batch[schema.INDEX], np.int64) if schema.INDEX in batch else np.full(n, -1))
        labeled.append(np.asarray(batch[schema.LABELED]) > 0 if schema.LABELED in batch else np.ones(n, bool))
        if progress is not None:
            progress(n)
    if not logits:
        of = f" of {size} records" if size is not None else ""
        raise ValueError(f"predict: no readable example{of} (every file failed to decode: see records.report)")
    return Predictions(
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
        indices=np.concatenate(indices),
        labeled=np.concatenate(labeled),
        seconds=time.perf_counter() - start,
    )


def evaluate_model(
    model: keras.Model,
    records: Records,
    config: PreprocessConfig,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy, AUC (and more) of ``model`` on ``records`` with patient-clustered bootstrap CIs.

    Single-label tasks: :func:`kd_keras.evaluation.evaluate_predictions` (``{"n", "task", "accuracy":
    {"estimate", "low", "high"}, "auc": {...}, ...}``). Multi-label: ``{"n", "task", "auc_per_label": {name:
    auc}, "auc": {"estimate": mean}}``, each label's AUC over the rows where it is known (``-1`` = unknown left
    out) and has both classes; no bootstrap.

    Args:
        model: a classifier (a Distiller: its student).
        records: labeled records (their task decides the evaluation task, :class:`~kd_keras.data.tasks.HeadSpec`).
        config: the preprocessing.
        n_boot: bootstrap resamples (0: point estimates only, fast enough for a per-epoch validation).
        seed: bootstrap seed.
        batch_size: images per model call.

    Example:
        >>> metrics = evaluate_model(student, test_records, config, n_boot=1000)
        >>> metrics["auc"]["estimate"], metrics["auc"]["low"]
    """
    out = predict(model, records, config, batch_size)
    head = HeadSpec.of(records)
    labels = records.labels[out.indices]
    probabilities = probabilities_from_logits(out.logits, multilabel=head.eval_task == "multilabel")
    if head.eval_task != "multilabel":
        return evaluate_predictions(labels, probabilities, records.patients[out.indices], task=head.eval_task,
                                    n_boot=n_boot, seed=seed)
    per_label = {}
    for j, name in enumerate(records.class_names):
        known = labels[:, j] >= 0
        if len(np.unique(labels[known, j])) == 2:
            per_label[name] = float(binary_auc(labels[known, j].astype(int), probabilities[known, j]))
    mean = float(np.mean(list(per_label.values()))) if per_label else float("nan")
    return {"n": int(len(labels)), "task": head.eval_task, "auc_per_label": per_label, "auc": {"estimate": mean}}


def estimate(metrics: Mapping[str, Any], name: str) -> float:
    """The point estimate of ``metrics[name]`` (a CI dict or a number; NaN when absent).

    Example:
        >>> estimate({"auc": {"estimate": 0.9, "low": 0.8, "high": 0.95}}, "auc")
        0.9
    """
    value = metrics.get(name)
    if isinstance(value, Mapping):
        return float(value["estimate"])
    return float("nan") if value is None else float(value)


def make_score_fn(
    records: Records, config: PreprocessConfig, metric: str = "auc", batch_size: int = 64
) -> Callable[[keras.Model], float]:
    """A callable validation for :func:`kd_keras.engine.train`: ``model -> metric`` of :func:`evaluate_model` on
    ``records`` without bootstrap (multi-label: the mean per-label AUC); an undefined score (one class only)
    counts as -1 so it never wins.

    Example:
        >>> result = train(student, make_stream, epochs=5, validation=make_score_fn(val_records, config, "auc"))
    """

    def score(model: keras.Model) -> float:
        value = estimate(evaluate_model(model, records, config, n_boot=0, batch_size=batch_size), metric)
        return value if math.isfinite(value) else -1.0

    return score
