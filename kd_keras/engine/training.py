"""Study-agnostic training building blocks: train, keep the best epoch, search a learning-rate grid, predict,
pseudo-label a pool.

Every study recipe repeats the same loop: train a model (a plain classifier or a
:class:`~kd_keras.engine.Distiller`) for N epochs, score it on the labeled validation set after each epoch,
keep the weights of the best epoch, repeat over a learning-rate grid and a few runs, and keep the best of
everything (study 002: "the best validation accuracy over epochs, learning rates and runs"). This module does
that once.

- :func:`recalibrate_batch_norm`: "precise BatchNorm" (Wu & Johnson, 2021): the moving mean and variance of
  every ``BatchNormalization`` layer set to their exact average over a few training batches. Keras' moving
  averages (momentum 0.99) still carry their initial values (0 and 1) after a few hundred steps, so a model
  trained briefly (as on a CPU) predicts nonsense in inference mode although it has learned: measured on the
  synthetic OCT data, a small CNN after 200 steps scores test AUC 0.55 with Keras' statistics and 0.97 with
  recalibrated ones. :func:`train` recalibrates before every validation (``bn_batches``), so the chosen epoch,
  the saved weights and every later prediction use precise statistics.
- :func:`train`: one run. After every epoch :class:`ValidationTracker` predicts the validation stream in
  batches, computes ``val_accuracy`` and ``val_auc`` with :mod:`kd_keras.evaluation` (the same code as the
  final evaluation, AUC from logits, which Keras' metrics cannot do for a two-logit head), adds them to the
  epoch logs (TensorBoard sees them) and keeps the best weights. With ``directory`` the run checkpoints through
  :func:`~kd_keras.engine.fit_resumable` and the tracker persists its history and best weights there, so a
  killed run resumes and a finished run is not trained again.
- :func:`train_lr_grid`: :func:`train` for every learning rate and run; returns the best with every run's
  history.
- :func:`predict`: logits, labels and example indices of a records table or a batched stream, batch by batch
  (``predict_on_batch``; never a whole volume in one eager call: 24 GB for ResNet50 on 128 images).
- :func:`pseudo_label_pool`: the teacher's logits over ``labeled + pool`` computed once into the on-disk
  teacher cache (:mod:`kd_keras.engine.teacher_cache`), reused by every student and fraction; argmax
  pseudo-labels and a summary of them.

Example:

```python
from kd_keras.engine.training import predict, pseudo_label_pool, train_lr_grid

def make_stream():
    return pipeline.make_dataset(train_records, config, 64, repeat=True, augmenter=augmenter, seed=0)

validation = pipeline.make_dataset(val_records, config, 64, shuffle=False)
grid = train_lr_grid(lambda: build_model("squeezenet_v1_1", (64, 64, 1), 2), make_stream,
                     steps_per_epoch=20, validation=validation, epochs=20,
                     learning_rates=[1e-2, 1e-3, 1e-4], runs=2, directory="runs/baseline")
grid.best.model.save("student.keras"); grid.best.learning_rate; grid.summary()
predictions = predict(grid.best.model, test_records, config, batch_size=64)
```
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.engine.callbacks import StopOnNaN, fit_resumable
from kd_keras.engine.distiller import Distiller
from kd_keras.evaluation.metrics import accuracy, probabilities_from_logits, roc_auc

MONITORS = ("accuracy", "auc")
_HISTORY = "history.json"
_BEST_WEIGHTS = "best.weights.h5"
_CHECKPOINTS = "checkpoint"

# ----------------------------------------------------------------------------------------------- scoring


def infer_task(logits: np.ndarray, labels: np.ndarray) -> str:
    """``"binary"`` (one logit, or two logits with class labels), ``"multiclass"`` or ``"multilabel"`` (2-D
    labels).

    Example:
        >>> infer_task(np.zeros((4, 2)), np.array([0, 1, 1, 0]))
        'binary'
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return "multilabel"
    width = np.asarray(logits).shape[-1]
    return "binary" if width <= 2 else "multiclass"


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
    if task == "multilabel":
        return accuracy(labels, probabilities >= 0.5)
    if probabilities.ndim == 1:  # one sigmoid logit
        return accuracy(labels, probabilities >= 0.5)
    return accuracy(labels, probabilities.argmax(axis=1))


# --------------------------------------------------------------------------------------------- predict


@dataclass
class Predictions:
    """Outputs of :func:`predict`, row-aligned.

    Attributes:
        logits: float32 ``(N, K)``.
        labels: the labels of the streamed examples (placeholders for unlabeled ones).
        indices: int64 ``(N,)`` rows of the records (the stream's ``index``); files skipped at run time are
            absent.
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


def _student(model: keras.Model) -> keras.Model:
    return model.student if isinstance(model, Distiller) else model


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

    Example:
        >>> out = predict(student, test_records, PreprocessConfig((64, 64), channels=1), batch_size=64)
        >>> out.score("auc")
    """
    from kd_keras.data.pipeline import make_dataset  # the data pipeline imports TF-heavy modules

    if isinstance(data, Records):
        if config is None:
            raise ValueError("predict: pass the PreprocessConfig with records")
        data = make_dataset(data, config, batch_size, shuffle=False)
    elif not isinstance(data, tf.data.Dataset):
        raise TypeError(f"predict: data must be Records or a tf.data.Dataset, got {type(data).__name__}")
    net = _student(model)
    start = time.perf_counter()
    logits, labels, indices, labeled = [], [], [], []
    for batch in data:
        if not isinstance(batch, Mapping) or schema.IMAGE not in batch:
            raise ValueError(f"predict: the stream must yield dicts with {schema.IMAGE!r} (kd_keras.data.schema)")
        images = batch[schema.IMAGE]
        n = int(images.shape[0])
        # A stream batch larger than batch_size is split, so memory stays bounded whatever the stream does.
        for first in range(0, n, batch_size):
            logits.append(np.asarray(net.predict_on_batch(images[first : first + batch_size]), np.float32))
        labels.append(np.asarray(batch[schema.LABEL]) if schema.LABEL in batch else np.zeros(n, np.int32))
        indices.append(np.asarray(batch[schema.INDEX], np.int64) if schema.INDEX in batch else np.full(n, -1))
        labeled.append(np.asarray(batch[schema.LABELED]) > 0 if schema.LABELED in batch else np.ones(n, bool))
        if progress is not None:
            progress(n)
    if not logits:
        raise ValueError("predict: the stream is empty (no readable examples)")
    return Predictions(
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
        indices=np.concatenate(indices),
        labeled=np.concatenate(labeled),
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------------------ precise BatchNorm


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every ``BatchNormalization`` layer of ``model``, nested models included."""
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for child in getattr(layer, "layers", None) or []:
            visit(child)

    visit(model)
    return found


def recalibrate_batch_norm(model: keras.Model, batches: Any, max_batches: int = 10) -> int:
    """Set each BatchNorm layer's moving mean and variance to their average over ``batches`` ("precise BN").

    The model runs in training mode (batch statistics) on each batch, one eager call at a time, with the layers'
    momentum set to ``k / (k + 1)`` at batch ``k`` so the moving statistics become the exact running average;
    the momentum is restored afterwards. No weight is trained. Dropout and other random layers draw as in
    training.

    Args:
        model: a classifier (a Distiller: its student).
        batches: an iterable of image batches, or of schema dicts with ``image`` (e.g. the training stream).
        max_batches: batches to average over.

    Returns:
        The number of batches used (0 when the model has no BatchNorm layer: nothing is run).

    Example:
        >>> recalibrate_batch_norm(student, make_dataset(train_records, config, 64), max_batches=10)
        10
    """
    net = _student(model)
    layers = batch_norm_layers(net)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            images = batch[schema.IMAGE] if isinstance(batch, Mapping) else batch
            for layer in layers:
                layer.momentum = used / (used + 1.0)
            net(images, training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used


# ------------------------------------------------------------------------------------------ one training run


class ValidationTracker(keras.callbacks.Callback):
    """After each epoch: predict ``validation``, log ``val_accuracy`` / ``val_auc``, keep the best weights.

    Put it first in the callback list so later callbacks (TensorBoard, CSV logger) see the added logs. The
    weights kept are the student's (for a :class:`~kd_keras.engine.Distiller`) or the model's.

    With ``directory``, the history (``history.json``) and the best weights (``best.weights.h5``) are written
    after every epoch and read back when the tracker is created, so a resumed run keeps what the killed one had
    found.

    Args:
        validation: a batched stream of schema dicts (unaugmented, finite).
        monitor: ``"accuracy"`` or ``"auc"``: which validation score decides the best epoch.
        directory: where to persist history and best weights (optional).
        batch_size: images per model call.
        bn_stream: training batches for :func:`recalibrate_batch_norm` before each validation (``None``: keep
            Keras' moving statistics).
        bn_batches: how many of them.

    Attributes:
        history: one dict per finished epoch (``epoch`` counted from 1, the training logs, ``val_*``).
        best_score, best_epoch: the best so far (``-inf`` / 0 before any epoch).
    """

    def __init__(
        self,
        validation: tf.data.Dataset,
        monitor: str = "accuracy",
        directory: str | os.PathLike | None = None,
        batch_size: int = 64,
        bn_stream: Any = None,
        bn_batches: int = 10,
    ):
        super().__init__()
        if monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
        self.validation = validation
        self.monitor = monitor
        self.batch_size = batch_size
        self.bn_stream = bn_stream
        self.bn_batches = bn_batches
        self.directory = Path(directory) if directory is not None else None
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self._best_weights: list[np.ndarray] | None = None
        if self.directory is not None and (self.directory / _HISTORY).is_file():
            saved = json.loads((self.directory / _HISTORY).read_text())
            self.history = saved["history"]
            self.best_score = -math.inf if saved["best_score"] is None else float(saved["best_score"])
            self.best_epoch = int(saved["best_epoch"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.bn_stream is not None and self.bn_batches > 0:
            recalibrate_batch_norm(self.model, self.bn_stream, self.bn_batches)
        predictions = predict(self.model, self.validation, batch_size=self.batch_size)
        scores = {f"val_{m}": predictions.score(m) for m in MONITORS}
        logs.update(scores)  # the same dict later callbacks receive
        row = {"epoch": epoch + 1, **{k: _finite_or_none(v) for k, v in logs.items()}}
        self.history = [h for h in self.history if h["epoch"] < epoch + 1] + [row]
        score = scores[f"val_{self.monitor}"]
        if math.isfinite(score) and score > self.best_score:  # ties keep the earlier epoch
            self.best_score, self.best_epoch = score, epoch + 1
            student = _student(self.model)
            self._best_weights = [np.array(w) for w in student.get_weights()]
            if self.directory is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
                temporary = self.directory / f"partial_{_BEST_WEIGHTS}"
                student.save_weights(str(temporary))
                os.replace(temporary, self.directory / _BEST_WEIGHTS)
        if self.directory is not None:
            self._write_history()

    def _write_history(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "monitor": self.monitor,
            "best_score": _finite_or_none(self.best_score),
            "best_epoch": self.best_epoch,
            "history": self.history,
        }
        temporary = self.directory / f"{_HISTORY}.partial"
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.directory / _HISTORY)

    def restore_best(self, model: keras.Model) -> bool:
        """Load the best weights into ``model`` (a Distiller: its student); False when there are none."""
        student = _student(model)
        if self._best_weights is not None:
            student.set_weights(self._best_weights)
            return True
        if self.directory is not None and (self.directory / _BEST_WEIGHTS).is_file():
            student.load_weights(str(self.directory / _BEST_WEIGHTS))
            return True
        return False


class EpochSummaries(keras.callbacks.Callback):
    """TensorBoard event files with every epoch's logs (``loss``, ``accuracy``, ``val_accuracy``, ``val_auc``...).

    Written with TensorFlow's core summary op (``tf.summary.write`` with the "scalars" plugin tag), so writing
    needs no ``tensorboard`` package (Keras' ``TensorBoard`` callback does, and kd-keras does not depend on it);
    view them with ``tensorboard --logdir <dir>`` wherever TensorBoard is installed. Put it after
    :class:`ValidationTracker` so the validation scores are in the logs.

    Args:
        log_dir: folder of the event file (one per run).

    Example:
        >>> result = train(model, make_stream, ..., callbacks=[EpochSummaries("runs/x/tensorboard/run0")])
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        from tensorflow.core.framework import summary_pb2

        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writer.as_default():
            for name, value in (logs or {}).items():
                if value is not None and np.ndim(value) == 0 and math.isfinite(float(value)):
                    tf.summary.write(f"epoch_{name}", tf.constant(float(value), tf.float32), step=epoch + 1,
                                     metadata=metadata)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class TrainResult:
    """One training run.

    Attributes:
        model: the trained classifier (the Distiller's student) holding the **best epoch's** weights.
        monitor: the validation score that chose the epoch.
        best_score: its best value; ``best_epoch`` counted from 1.
        history: one dict per epoch (training logs and ``val_accuracy`` / ``val_auc``).
        learning_rate, run: the grid point (set by :func:`train_lr_grid`; ``run`` counted from 0).
        seconds: wall time of this call (0-ish for a finished run found on disk).
    """

    model: keras.Model
    monitor: str
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]]
    learning_rate: float | None = None
    run: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no model)."""
        return {
            "learning_rate": self.learning_rate,
            "run": self.run,
            "monitor": self.monitor,
            "best_score": _finite_or_none(self.best_score),
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 3),
            "history": self.history,
        }


def _train_metrics(model: keras.Model) -> list:
    width = _student(model).output_shape[-1]
    if width == 1:
        return [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def make_optimizer(optimizer: str | Callable[[float], Any], learning_rate: float):
    """An optimizer for ``learning_rate``: ``"adam"``, ``"sgd"`` (momentum 0.9, as study 002's teacher),
    ``"adamw"``, or a function ``lr -> optimizer``.

    Example:
        >>> make_optimizer("sgd", 0.01).momentum
        0.9
    """
    if callable(optimizer):
        return optimizer(learning_rate)
    name = str(optimizer).lower()
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    raise ValueError(f"optimizer must be 'adam', 'sgd', 'adamw' or a function lr -> optimizer, got {optimizer!r}")


def train(
    model: keras.Model,
    make_train_stream: Callable[[], tf.data.Dataset],
    *,
    steps_per_epoch: int,
    validation: tf.data.Dataset,
    epochs: int,
    learning_rate: float = 1e-3,
    optimizer: str | Callable[[float], Any] = "adam",
    objective: str | dict | Any = "hard_label",
    monitor: str = "accuracy",
    directory: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    strategy: tf.distribute.Strategy | None = None,
    save_every_steps: int = 100,
    predict_batch_size: int = 64,
    bn_batches: int = 10,
    verbose: int | str = 0,
) -> TrainResult:
    """Train ``model`` for ``epochs`` epochs, keeping the weights of the epoch with the best validation score.

    Args:
        model: a plain classifier (trained through a teacher-less ``Distiller`` with ``objective``, hard labels
            by default) or an uncompiled :class:`~kd_keras.engine.Distiller` (student + teacher). Build it (and
            its teacher) inside ``strategy.scope()`` when you pass a strategy.
        make_train_stream: a function returning a new batched stream of schema dicts, deterministic for a
            given seed (see :func:`~kd_keras.engine.fit_resumable`), e.g. ``make_dataset(..., repeat=True)``; a
            stream that is not known to be endless is ``repeat()``-ed.
        steps_per_epoch: batches per epoch.
        validation: a finite, unaugmented, batched stream of labeled schema dicts.
        epochs: epochs to train.
        learning_rate, optimizer: see :func:`make_optimizer`.
        objective: the transfer objective (:func:`~kd_keras.engine.get_objective`).
        monitor: ``"accuracy"`` or ``"auc"`` on ``validation``.
        directory: run folder: checkpoints (``checkpoint/``), ``history.json`` and ``best.weights.h5``. Calling
            again with the same folder resumes a killed run mid-epoch and does not retrain a finished one.
            ``None`` trains in memory.
        callbacks: extra callbacks (e.g. ``keras.callbacks.TensorBoard``); they see ``val_accuracy`` and
            ``val_auc`` in the epoch logs.
        strategy: a ``tf.distribute`` strategy the model was built under (compiles inside its scope).
        save_every_steps: checkpoint period in steps (with ``directory``).
        predict_batch_size: batch size of the per-epoch validation prediction.
        bn_batches: training batches averaged by :func:`recalibrate_batch_norm` before each validation (0: keep
            Keras' moving statistics, which lag far behind in short runs).
        verbose: Keras' fit verbosity.

    Returns:
        :class:`TrainResult` whose ``model`` holds the best epoch's weights.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (one line; lower the learning rate).

    Example:
        >>> result = train(build_model("mobilenet_wd4", (64, 64, 1), 2), make_stream, steps_per_epoch=10,
        ...                validation=val_stream, epochs=5, learning_rate=1e-3, monitor="auc")
        >>> result.best_epoch, result.best_score
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    start = time.perf_counter()
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        distiller = model if isinstance(model, Distiller) else Distiller(model)
        distiller.compile(
            optimizer=make_optimizer(optimizer, learning_rate),
            metrics=_train_metrics(distiller),
            objective=objective,
        )
    directory = Path(directory) if directory is not None else None

    def infinite_stream() -> tf.data.Dataset:
        # make_dataset(repeat=True) filters unreadable files after the repeat, so its cardinality is UNKNOWN,
        # which fit_resumable refuses; repeating an endless stream changes nothing, and a finite one is cycled.
        stream = make_train_stream()
        return stream if stream.cardinality() == tf.data.INFINITE_CARDINALITY else stream.repeat()

    # A fixed slice of the training stream (same seed, so the same batches in every process) for precise BN.
    bn_stream = make_train_stream().take(bn_batches) if bn_batches > 0 else None
    tracker = ValidationTracker(validation, monitor, directory, predict_batch_size, bn_stream, bn_batches)
    stop = StopOnNaN(directory / _CHECKPOINTS if directory is not None else None)
    all_callbacks = [tracker, stop, *callbacks]
    if directory is not None:
        fit_resumable(
            distiller,
            infinite_stream,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            directory=directory / _CHECKPOINTS,
            save_every_steps=save_every_steps,
            callbacks=all_callbacks,
            verbose=verbose,
        )
    else:
        distiller.fit(infinite_stream(), epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=all_callbacks,
                      verbose=verbose, shuffle=False)
    tracker.restore_best(distiller)
    return TrainResult(
        model=distiller.student,
        monitor=monitor,
        best_score=tracker.best_score,
        best_epoch=tracker.best_epoch,
        history=list(tracker.history),
        learning_rate=learning_rate,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------- learning-rate grid


@dataclass
class GridResult:
    """Every run of a learning-rate grid and the best one.

    Attributes:
        best: the run with the highest validation score (its ``model`` holds the best epoch's weights);
            ties keep the earlier run in grid order.
        runs: every run's :class:`TrainResult` (only ``best`` keeps its model; the others' are ``None`` so a
            large grid does not hold every model in memory).
    """

    best: TrainResult
    runs: list[TrainResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the best grid point and every run's history."""
        return {
            "best": {k: v for k, v in self.best.summary().items() if k != "history"},
            "runs": [run.summary() for run in self.runs],
        }


def _lr_name(learning_rate: float) -> str:
    return f"lr{learning_rate:.0e}".replace("+", "").replace("-0", "-")


def train_lr_grid(
    build: Callable[[], keras.Model],
    make_train_stream: Callable[[], tf.data.Dataset],
    *,
    learning_rates: Sequence[float],
    runs: int = 1,
    seed: int = 0,
    directory: str | os.PathLike | None = None,
    on_run_done: Callable[[TrainResult], None] | None = None,
    make_callbacks: Callable[[float, int], Sequence[keras.callbacks.Callback]] | None = None,
    **train_kwargs: Any,
) -> GridResult:
    """:func:`train` at every learning rate, ``runs`` times each; the best by validation score (study 002's
    "best validation accuracy over epochs, learning rates and runs").

    Args:
        build: returns a **fresh** model (a classifier or an uncompiled Distiller) for each run; it is called
            after seeding with ``seed + 1000 * run``, so run ``r`` starts from the same weights at every
            learning rate and differs between runs.
        make_train_stream: see :func:`train`.
        learning_rates: the grid (002: 1e-1 ... 1e-6).
        runs: repetitions per learning rate.
        seed: the grid's seed.
        directory: parent folder; each run gets ``<directory>/lr1e-3_run0/`` (resumable, see :func:`train`).
        on_run_done: called with each finished run (progress).
        make_callbacks: ``(learning_rate, run) -> callbacks`` per run (e.g. a TensorBoard log folder each).
        **train_kwargs: passed to :func:`train` (``steps_per_epoch``, ``validation``, ``epochs``, ``optimizer``,
            ``objective``, ``monitor``, ...).

    Returns:
        :class:`GridResult`. A run that diverges (NaN loss) is recorded with score ``-inf`` and the grid goes
        on; if every run diverges the last error is raised.

    Example:
        >>> grid = train_lr_grid(lambda: build_model("squeezenet_v1_1", (64, 64, 1), 2), make_stream,
        ...                      learning_rates=[1e-2, 1e-3], runs=2, steps_per_epoch=20,
        ...                      validation=val_stream, epochs=10)
        >>> grid.best.learning_rate, grid.best.best_score
    """
    from kd_keras.engine.callbacks import NonFiniteLossError

    if not learning_rates or runs < 1:
        raise ValueError("train_lr_grid needs at least one learning rate and one run")
    shared_callbacks = list(train_kwargs.pop("callbacks", ()))
    results: list[TrainResult] = []
    best: TrainResult | None = None
    last_error: Exception | None = None
    for run in range(runs):
        for learning_rate in learning_rates:
            keras.utils.set_random_seed(int(seed) + 1000 * run)
            run_dir = Path(directory) / f"{_lr_name(learning_rate)}_run{run}" if directory is not None else None
            callbacks = list(make_callbacks(learning_rate, run)) if make_callbacks is not None else []
            try:
                result = train(
                    build(),
                    make_train_stream,
                    learning_rate=learning_rate,
                    directory=run_dir,
                    callbacks=[*shared_callbacks, *callbacks],
                    **train_kwargs,
                )
            except NonFiniteLossError as error:
                last_error = error
                result = TrainResult(None, train_kwargs.get("monitor", "accuracy"), -math.inf, 0,
                                     [{"error": str(error)}], learning_rate)
            result.run = run
            if best is None or result.best_score > best.best_score:
                if best is not None:
                    best.model = None
                best = result
            else:
                result.model = None
            results.append(result)
            if on_run_done is not None:
                on_run_done(result)
    if best is None or best.model is None:
        raise last_error if last_error is not None else RuntimeError("train_lr_grid: no run finished")
    return GridResult(best=best, runs=results)


# ----------------------------------------------------------------------------------------- pseudo-labels


@dataclass
class PseudoLabels:
    """The teacher's outputs over ``labeled + pool`` (the index space of
    :func:`kd_keras.data.pipeline.make_mixed_dataset`), from the on-disk cache.

    Attributes:
        cache: the :class:`~kd_keras.engine.teacher_cache.TeacherCache` (``cache.logits`` rows: the labeled
            examples first, then the pool); pass ``teacher_logits=cache.logits`` to ``make_mixed_dataset``.
        num_labeled: rows of the labeled part.
        pool_labels: the teacher's argmax class for each pool image (int64 ``(U,)``).
        pool_confidence: its top softmax probability.
        labeled_accuracy: the teacher's accuracy on the labeled part (how well it fits its own training data).
        seconds: wall time (about 0 when the cache was reused).
    """

    cache: Any
    num_labeled: int
    pool_labels: np.ndarray
    pool_confidence: np.ndarray
    labeled_accuracy: float
    seconds: float

    def summary(self, class_names: Sequence[str] = ()) -> dict[str, Any]:
        """JSON-ready: pool size, pseudo-label counts per class, mean confidence, cache path and reuse."""
        width = max(len(class_names), int(self.pool_labels.max(initial=0)) + 1)
        counts = np.bincount(self.pool_labels, minlength=width)
        names = list(class_names) or [str(k) for k in range(len(counts))]
        stats = dict(getattr(self.cache, "build_stats", {}) or {})
        return {
            "pool_size": int(len(self.pool_labels)),
            "pseudo_label_counts": {names[k]: int(c) for k, c in enumerate(counts)},
            "mean_confidence": _finite_or_none(self.pool_confidence.mean()) if len(self.pool_confidence) else None,
            "teacher_accuracy_on_labeled": _finite_or_none(self.labeled_accuracy),
            "cache": os.fspath(self.cache.path),
            "cache_build": {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool))},
            "seconds": round(self.seconds, 3),
        }


def pseudo_label_pool(
    teacher: keras.Model | str | os.PathLike,
    labeled: Records,
    pool: Records,
    config: PreprocessConfig,
    cache_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    on_shard_done: Callable[[int], None] | None = None,
    shard_size: int = 4096,
) -> PseudoLabels:
    """Run the teacher once over ``labeled + pool`` (cached on disk) and derive argmax pseudo-labels (002).

    The cache is keyed by the teacher, the files and the preprocessing: calling again with the same inputs
    reads it back without running the teacher (every student and unlabeled fraction reuses it).

    Args:
        teacher: a ``keras.Model`` or a ``.keras`` path.
        labeled: the labeled training records.
        pool: the unlabeled pool.
        config: preprocessing (the teacher's input size and channels).
        cache_dir: parent folder of teacher caches.
        batch_size: images per teacher call.
        on_shard_done: progress callback (shard number).
        shard_size: rows per cache shard.

    Returns:
        :class:`PseudoLabels`.

    Example:
        >>> labels = pseudo_label_pool("runs/teacher.keras", train, pool, config, "runs/teacher_cache")
        >>> stream = make_mixed_dataset(train, pool, config, 64, 0.5, teacher_logits=labels.cache.logits)
    """
    from kd_keras.data.pipeline import mixed_records
    from kd_keras.engine.teacher_cache import build_teacher_cache

    start = time.perf_counter()
    everything = mixed_records(labeled, pool)
    cache = build_teacher_cache(teacher, everything, config, cache_dir, batch_size=batch_size,
                                on_shard_done=on_shard_done, shard_size=shard_size)
    logits = np.asarray(cache.logits[np.arange(cache.num_examples)], np.float32)
    n = len(labeled)
    probabilities = probabilities_from_logits(logits)
    if probabilities.ndim == 1:  # one sigmoid logit
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    pool_probabilities = probabilities[n:]
    return PseudoLabels(
        cache=cache,
        num_labeled=n,
        pool_labels=pool_probabilities.argmax(axis=1).astype(np.int64),
        pool_confidence=pool_probabilities.max(axis=1) if len(pool_probabilities) else np.zeros(0),
        labeled_accuracy=score_logits(labeled.labels, logits[:n]) if n else float("nan"),
        seconds=time.perf_counter() - start,
    )
