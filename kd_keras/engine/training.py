"""Study-agnostic training: one run (:func:`train`) and a learning-rate grid (:func:`train_lr_grid`).

Every study recipe repeats the same loop: train a model (a plain classifier, or a student with a teacher through
a :class:`~kd_keras.engine.Distiller`) for N epochs with some objective, score it on validation data, keep the
weights of the best validation, repeat over a learning-rate grid and a few runs, and keep the best of everything
(study 002: "the best validation accuracy over epochs, learning rates and runs"). This module does that once;
every training stage of every study is a :func:`train` (or :func:`train_lr_grid`) call.

- :func:`train`: one run. Validation is a labeled stream (``val_accuracy`` / ``val_auc``), a callable
  ``model -> score`` (multi-label AUC, any study-specific score) or nothing (final weights kept); after every
  epoch or every ``validate_every_steps`` steps (learning curves); BatchNorm statistics recomputed before every
  validation and at the end (:mod:`kd_keras.engine.batchnorm`). With ``directory`` the run checkpoints through
  :func:`~kd_keras.engine.fit_resumable` and the :class:`~kd_keras.engine.tracking.ValidationTracker` persists
  history, curve and best weights there, so a killed run resumes to the same weights and a finished run is not
  trained again.
- :func:`train_lr_grid`: :func:`train` for every learning rate and run; returns the best with every run's
  history.
- :func:`pseudo_label_pool`, :class:`PseudoLabels`: moved to :mod:`kd_keras.engine.pseudo_labels`, re-exported
  here for existing imports.

Prediction and evaluation live in :mod:`kd_keras.engine.predict`, the optimizer factory in
:mod:`kd_keras.engine.optim`, precise BatchNorm in :mod:`kd_keras.engine.batchnorm`, the tracker and
:class:`TrainResult` in :mod:`kd_keras.engine.tracking`; they are re-exported here for existing imports.

Example:

```python
from kd_keras.engine import predict, train, train_lr_grid

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
from kd_keras.engine.batchnorm import batch_norm_layers, recalibrate_batch_norm
from kd_keras.engine.callbacks import StopOnNaN, fit_resumable
from kd_keras.engine.distiller import Distiller
from kd_keras.engine.optim import LearningRate, make_optimizer
from kd_keras.engine.predict import MONITORS, Predictions, infer_task, predict, score_logits
from kd_keras.engine.pseudo_labels import PseudoLabels, pseudo_label_pool  # moved there; old import path kept
from kd_keras.engine.tracking import (
    EpochSummaries,
    TrainResult,
    Validation,
    ValidationTracker,
)

__all__ = [
    "MONITORS",
    "EpochSummaries",
    "GridResult",
    "Predictions",
    "PseudoLabels",
    "TrainResult",
    "ValidationTracker",
    "batch_norm_layers",
    "count_batches",
    "infer_task",
    "make_optimizer",
    "predict",
    "pseudo_label_pool",
    "recalibrate_batch_norm",
    "score_logits",
    "train",
    "train_lr_grid",
]

_CHECKPOINTS = "checkpoint"
_STEPS_FILE = "steps_per_epoch.json"


def _train_metrics(model: keras.Model, stream: tf.data.Dataset) -> list:
    """Training accuracy that fits the head and the stream's labels (none when the stream has no labels)."""
    spec = stream.element_spec
    if not isinstance(spec, dict) or schema.LABEL not in spec:
        return []
    width = (model.student if isinstance(model, Distiller) else model).output_shape[-1]
    if width == 1 or spec[schema.LABEL].shape.rank == 2:  # a sigmoid head, or multi-hot labels
        return [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def count_batches(stream: tf.data.Dataset) -> int:
    """Batches in one pass of a finite ``stream``: its cardinality when known, else counted by iterating it once
    (which decodes every image: pass ``steps_per_epoch`` to :func:`train` for large streams read from disk). A
    stream of unknown cardinality that streams an ``index`` twice is taken as endless (no count).

    Raises:
        ValueError: the stream is endless or empty.

    Example:
        >>> count_batches(make_dataset(records, config, 32))  # ceil(len(records) / 32) when all decode
        4
    """
    endless = "the training stream repeats forever: pass steps_per_epoch (one epoch is undefined)"
    cardinality = int(stream.cardinality())
    if cardinality == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(endless)
    if cardinality < 0:  # e.g. make_dataset filters unreadable files, even when it repeats
        cardinality, seen = 0, set()
        for batch in stream:
            # A pass over records streams each ``index`` once: one seen again means an endless stream.
            if isinstance(batch, dict) and schema.INDEX in batch:
                indices = np.asarray(batch[schema.INDEX]).ravel().tolist()
                if seen.intersection(indices):
                    raise ValueError(endless.replace("forever", "its examples (endless?)"))
                seen.update(indices)
            cardinality += 1
    if cardinality == 0:
        raise ValueError("the training stream is empty (no readable example)")
    return cardinality


def _steps_per_epoch(make_stream: Callable[[], tf.data.Dataset], directory: Path | None) -> int:
    # Counting may take a pass over the data: a resumed run reads the count its first process found.
    saved = directory / _STEPS_FILE if directory is not None else None
    if saved is not None and saved.is_file():
        return int(json.loads(saved.read_text())["steps_per_epoch"])
    steps = count_batches(make_stream())
    if saved is not None:
        directory.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps({"steps_per_epoch": steps}))
    return steps


class _FirstBatches:
    """The images of the first ``count`` batches of a new ``make_stream()``, read once on first use and kept:
    every recalibration, in this process or a resumed one, sees exactly these batches (a stream re-created each
    time would give the same ones, at the cost of refilling its shuffle buffer every epoch)."""

    def __init__(self, make_stream: Callable[[], tf.data.Dataset], count: int):
        self.make_stream, self.count = make_stream, count
        self._images: list[tf.Tensor] | None = None

    def __iter__(self):
        if self._images is None:
            self._images = [batch[schema.IMAGE] if isinstance(batch, Mapping) else batch
                            for batch in self.make_stream().take(self.count)]
        return iter(self._images)


def train(
    model: keras.Model,
    make_train_stream: Callable[[], tf.data.Dataset] | tf.data.Dataset,
    *,
    epochs: int,
    steps_per_epoch: int | None = None,
    validation: Validation = None,
    learning_rate: LearningRate = 1e-3,
    optimizer: str | Callable[[LearningRate], Any] = "adam",
    objective: str | dict | Any = "hard_label",
    teacher: keras.Model | None = None,
    monitor: str = "accuracy",
    validate_every_steps: int = 0,
    directory: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    metrics: Sequence[Any] | str | None = "auto",
    strategy: tf.distribute.Strategy | None = None,
    save_every_steps: int = 100,
    predict_batch_size: int = 64,
    bn_batches: int = 10,
    verbose: int | str = 0,
) -> TrainResult:
    """Train ``model`` for ``epochs`` epochs, keeping the weights of the best validation (or the final ones).

    Args:
        model: a plain classifier (trained through a ``Distiller`` with ``objective`` and ``teacher``) or an
            uncompiled :class:`~kd_keras.engine.Distiller`. Build it (and its teacher) inside
            ``strategy.scope()`` when you pass a strategy.
        make_train_stream: a function returning a new batched stream of schema dicts, deterministic for a
            given seed (see :func:`~kd_keras.engine.fit_resumable`), e.g. ``lambda: make_dataset(...)``; or a
            ``tf.data.Dataset`` (not with ``directory``: a resumed run needs fresh, identically shuffled copies).
            A stream that is not endless is ``repeat()``-ed.
        epochs: epochs to train.
        steps_per_epoch: batches per epoch; ``None``: one pass over the (finite) stream, from its cardinality or
            counted once (:func:`count_batches`; with ``directory`` the count is saved there).
        validation: a finite, unaugmented, batched stream of labeled schema dicts (``monitor`` on it); or a
            function ``student -> score``, higher is better (e.g. :func:`~kd_keras.engine.make_score_fn`: multi-
            label AUC); or ``None``: no selection, the final weights are kept (BatchNorm recalibrated).
        learning_rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule`` (stepped per batch).
        optimizer: see :func:`~kd_keras.engine.make_optimizer` (``"sgd"`` has momentum 0.9).
        objective: the transfer objective: a name, a dict ``{"name": ..., **config}`` or an Objective
            (:func:`~kd_keras.engine.get_objective`).
        teacher: the teacher of a plain ``model`` (not with a Distiller, which has its own).
        monitor: ``"accuracy"`` or ``"auc"`` on a validation stream (a callable validation is ``"score"``).
        validate_every_steps: validate every this many optimizer steps (learning-curve points, and the best
            weights chosen among them) instead of at each epoch end; 0: at each epoch end.
        directory: run folder: checkpoints (``checkpoint/``), ``history.json`` (history, curve, best) and
            ``best.weights.h5``. Calling again with the same folder resumes a killed run mid-epoch to the same
            weights and does not retrain a finished one. ``None`` trains in memory.
        callbacks: extra callbacks (e.g. :class:`EpochSummaries`); they see the ``val_*`` scores in the epoch
            logs (when validating at epoch ends).
        metrics: training metrics; ``"auto"``: accuracy fitted to the head and labels (none for a stream
            without labels).
        strategy: a ``tf.distribute`` strategy the model was built under (compiles inside its scope).
        save_every_steps: checkpoint period in steps (with ``directory``).
        predict_batch_size: batch size of the validation prediction (stream validation).
        bn_batches: training batches averaged by :func:`recalibrate_batch_norm` before each validation and at
            the end without validation (0: keep Keras' moving statistics, which lag far behind in short runs).
        verbose: Keras' fit verbosity.

    Returns:
        :class:`TrainResult` whose ``model`` holds the chosen weights, with the per-epoch ``history`` (and
        ``losses``), the validation ``curve`` and ``seconds``.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (one line; lower the learning rate).
        ValueError: bad lengths, an endless stream without ``steps_per_epoch``, a teacher given twice.

    Example:
        >>> result = train(build_model("mobilenet_wd4", (64, 64, 1), 2), make_stream, steps_per_epoch=10,
        ...                validation=val_stream, epochs=5, learning_rate=1e-3, monitor="auc")
        >>> result.best_epoch, result.best_score
        >>> result = train(student, stream, epochs=3, teacher=teacher, objective={"name": "hinton", "alpha": 0.1},
        ...                validation=make_score_fn(val_records, config, "auc"), validate_every_steps=50)
        >>> result.curve  # [(50, 0.71), (100, 0.74), ...]
    """
    if epochs < 1 or (steps_per_epoch is not None and steps_per_epoch < 1):
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    directory = Path(directory) if directory is not None else None
    if isinstance(make_train_stream, tf.data.Dataset):
        if directory is not None:
            raise TypeError("train: with directory=, pass a function that builds the stream (lambda: ...), not a "
                            "dataset: a resumed run needs fresh, identically shuffled copies")
        dataset = make_train_stream

        def make_stream() -> tf.data.Dataset:
            return dataset
    elif callable(make_train_stream):
        make_stream = make_train_stream
    else:
        raise TypeError(f"train: the training stream must be a function or a tf.data.Dataset, "
                        f"got {type(make_train_stream).__name__}")
    if isinstance(model, Distiller) and teacher is not None:
        raise ValueError("train: give the teacher either inside the Distiller or as teacher=, not both")
    start = time.perf_counter()
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        distiller = model if isinstance(model, Distiller) else Distiller(model, teacher)
        distiller.compile(
            optimizer=make_optimizer(optimizer, learning_rate),
            metrics=_train_metrics(distiller, make_stream()) if metrics == "auto" else list(metrics or []),
            objective=objective,
        )
    if steps_per_epoch is None:
        steps_per_epoch = _steps_per_epoch(make_stream, directory)

    def infinite_stream() -> tf.data.Dataset:
        # make_dataset(repeat=True) filters unreadable files after the repeat, so its cardinality is UNKNOWN,
        # which fit_resumable refuses; repeating an endless stream changes nothing, and a finite one is cycled.
        stream = make_stream()
        return stream if stream.cardinality() == tf.data.INFINITE_CARDINALITY else stream.repeat()

    # A fixed slice of the training stream for precise BN: the same batches at every recalibration and in every
    # process. A dataset object iterated a second time reshuffles and advances its augmentation's random state,
    # so a resumed run would recalibrate on other batches than an uninterrupted one: a new stream each time.
    bn_stream = _FirstBatches(make_stream, bn_batches) if bn_batches > 0 else None
    tracker = ValidationTracker(validation, monitor, directory, predict_batch_size, bn_stream, bn_batches,
                                validate_every_steps)
    stop = StopOnNaN(directory / _CHECKPOINTS if directory is not None else None)
    all_callbacks = [tracker, stop, *callbacks]
    if directory is not None:
        fit_resumable(distiller, infinite_stream, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      directory=directory / _CHECKPOINTS, save_every_steps=save_every_steps,
                      callbacks=all_callbacks, verbose=verbose)
    else:
        distiller.fit(infinite_stream(), epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=all_callbacks,
                      verbose=verbose, shuffle=False)
    selected = validation is not None and tracker.restore_best(distiller)
    if not selected and bn_stream is not None:
        recalibrate_batch_norm(distiller, bn_stream, bn_batches)  # the final weights, with precise statistics
    return TrainResult(
        model=distiller.student,
        monitor=tracker.monitor if validation is not None else None,
        best_score=tracker.best_score if validation is not None else math.nan,
        best_epoch=tracker.best_epoch,
        history=list(tracker.history),
        learning_rate=learning_rate,
        seconds=time.perf_counter() - start,
        curve=list(tracker.curve),
        best_step=tracker.best_step,
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
