"""What a training run records: validation scores, the best weights, the learning curve, TensorBoard scalars,
and the result of a run.

- :class:`ValidationTracker`: the callback behind :func:`kd_keras.engine.train`. It scores the model after every
  epoch (or every ``validate_every_steps`` steps) either on a labeled stream (``val_accuracy`` and ``val_auc``
  with :mod:`kd_keras.evaluation`, the same code as the final evaluation) or with a callable ``model -> score``
  (``val_score``), keeps the best weights, records ``(step, score)`` learning-curve points, and with a directory
  persists all of it so a resumed run keeps what the killed one had found.
- :class:`EpochSummaries`: TensorBoard event files without the ``tensorboard`` package.
- :class:`TrainResult`: one run (model with the best weights, scores, history, curve, seconds).

Example:

```python
tracker = ValidationTracker(val_stream, "auc", directory="runs/x")  # or ValidationTracker(score_fn)
distiller.fit(stream, epochs=5, steps_per_epoch=20, callbacks=[tracker])
tracker.restore_best(distiller)
```
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kd_keras.engine.batchnorm import recalibrate_batch_norm
from kd_keras.engine.predict import MONITORS, predict, student_of

HISTORY_FILE = "history.json"
BEST_WEIGHTS_FILE = "best.weights.h5"
CALLABLE_MONITOR = "score"  # the monitor name of a callable validation (logged as ``val_score``)

Validation = tf.data.Dataset | Callable[[keras.Model], float] | None


def finite_or_none(value: Any) -> float | None:
    """``float(value)``, or None when it is NaN or infinite (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


class ValidationTracker(keras.callbacks.Callback):
    """Scores the model during training, keeps the best weights and the learning curve.

    Put it first in the callback list so later callbacks (TensorBoard, CSV logger) see the added logs. The
    weights kept are the student's (for a :class:`~kd_keras.engine.Distiller`) or the model's, BatchNorm
    statistics included (recalibrated before scoring when ``bn_stream`` is given).

    Args:
        validation: a finite, unaugmented, batched stream of labeled schema dicts (``val_accuracy`` and
            ``val_auc`` are logged, ``monitor`` decides); or a function ``model -> score``, higher is better
            (``val_score`` is logged); or ``None``: only the training logs are recorded.
        monitor: ``"accuracy"`` or ``"auc"`` with a stream (ignored otherwise: ``"score"``).
        directory: where to persist the history, curve and best weights (optional).
        batch_size: images per model call (stream validation).
        bn_stream: training batches for :func:`~kd_keras.engine.recalibrate_batch_norm` before each validation.
        bn_batches: how many of them.
        validate_every_steps: score every this many optimizer steps (counted over the whole run, from 1)
            instead of at each epoch end; 0: at each epoch end.

    Attributes:
        history: one dict per finished epoch (``epoch`` counted from 1, the training logs, ``val_*`` when scored
            at the epoch end).
        curve: ``(step, score)`` of every validation (``step`` = optimizer steps done).
        best_score, best_epoch, best_step: the best so far (``-inf`` / 0 / 0 before any validation;
            ``best_epoch`` counted from 1).
    """

    def __init__(
        self,
        validation: Validation = None,
        monitor: str = "accuracy",
        directory: str | os.PathLike | None = None,
        batch_size: int = 64,
        bn_stream: Any = None,
        bn_batches: int = 10,
        validate_every_steps: int = 0,
    ):
        super().__init__()
        if validation is not None and not isinstance(validation, tf.data.Dataset) and not callable(validation):
            raise TypeError(f"validation must be a tf.data.Dataset, a function model -> score or None, "
                            f"got {type(validation).__name__}")
        if isinstance(validation, tf.data.Dataset) and monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
        if validate_every_steps < 0:
            raise ValueError(f"validate_every_steps must be >= 0, got {validate_every_steps}")
        self.validation = validation
        self.monitor = monitor if isinstance(validation, tf.data.Dataset) else CALLABLE_MONITOR
        self.batch_size = batch_size
        self.bn_stream = bn_stream
        self.bn_batches = bn_batches
        self.validate_every_steps = int(validate_every_steps)
        self.directory = Path(directory) if directory is not None else None
        self.history: list[dict[str, Any]] = []
        self.curve: list[tuple[int, float | None]] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_step = 0
        self._epoch = 0
        self._best_weights: list[np.ndarray] | None = None
        if self.directory is not None and (self.directory / HISTORY_FILE).is_file():
            saved = json.loads((self.directory / HISTORY_FILE).read_text())
            self.history = saved["history"]
            self.curve = [(int(step), score) for step, score in saved.get("curve", [])]
            self.best_score = -math.inf if saved["best_score"] is None else float(saved["best_score"])
            self.best_epoch = int(saved["best_epoch"])
            self.best_step = int(saved.get("best_step", 0))

    def _step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        return int(optimizer.iterations.numpy()) if optimizer is not None else 0

    def on_train_begin(self, logs=None):
        # A resumed run restarts at its last checkpoint: validations done after it (before the kill) are redone.
        step = self._step()
        self.curve = [point for point in self.curve if point[0] <= step]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.validation is not None and self.validate_every_steps:
            step = self._step()
            if step % self.validate_every_steps == 0:
                self.validate(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.validation is not None and not self.validate_every_steps:
            logs.update(self.validate(epoch, self._step()))  # the same dict later callbacks receive
        row = {"epoch": epoch + 1, **{k: finite_or_none(v) for k, v in logs.items() if np.ndim(v) == 0}}
        self.history = [h for h in self.history if h["epoch"] < epoch + 1] + [row]
        if self.directory is not None:
            self._write_state()

    def validate(self, epoch: int, step: int) -> dict[str, float]:
        """Score the model now (epoch counted from 0); returns the ``val_*`` logs."""
        if self.bn_stream is not None and self.bn_batches > 0:
            recalibrate_batch_norm(self.model, self.bn_stream, self.bn_batches)
        student = student_of(self.model)
        if isinstance(self.validation, tf.data.Dataset):
            predictions = predict(self.model, self.validation, batch_size=self.batch_size)
            scores = {f"val_{m}": predictions.score(m) for m in MONITORS}
        else:
            scores = {f"val_{CALLABLE_MONITOR}": float(self.validation(student))}
        score = scores[f"val_{self.monitor}"]
        self.curve.append((int(step), finite_or_none(score)))
        if math.isfinite(score) and score > self.best_score:  # ties keep the earlier one
            self.best_score, self.best_epoch, self.best_step = score, epoch + 1, int(step)
            self._best_weights = [np.array(w) for w in student.get_weights()]
            if self.directory is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
                temporary = self.directory / f"partial_{BEST_WEIGHTS_FILE}"
                student.save_weights(str(temporary))
                os.replace(temporary, self.directory / BEST_WEIGHTS_FILE)
        if self.directory is not None:
            self._write_state()
        return scores

    def _write_state(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {
            "monitor": self.monitor,
            "best_score": finite_or_none(self.best_score),
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "history": self.history,
            "curve": self.curve,
        }
        temporary = self.directory / f"{HISTORY_FILE}.partial"
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.directory / HISTORY_FILE)

    def restore_best(self, model: keras.Model) -> bool:
        """Load the best weights into ``model`` (a Distiller: its student); False when there are none."""
        student = student_of(model)
        if self._best_weights is not None:
            student.set_weights(self._best_weights)
            return True
        if self.directory is not None and (self.directory / BEST_WEIGHTS_FILE).is_file():
            student.load_weights(str(self.directory / BEST_WEIGHTS_FILE))
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


def _json_learning_rate(learning_rate: Any) -> Any:
    if learning_rate is None or isinstance(learning_rate, int | float):
        return learning_rate
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        config = {k: v for k, v in learning_rate.get_config().items() if isinstance(v, int | float | str | bool)}
        return {"schedule": type(learning_rate).__name__, **config}
    return str(learning_rate)


@dataclass
class TrainResult:
    """One training run.

    Attributes:
        model: the trained classifier (the Distiller's student) holding the **best validation's** weights (the
            final weights, BatchNorm recalibrated, when there was no validation).
        monitor: the validation score that chose the weights (``"accuracy"``, ``"auc"``, ``"score"`` for a
            callable validation, ``None`` without validation).
        best_score: its best value (NaN without validation); ``best_epoch`` counted from 1 (0 without
            validation), ``best_step`` the optimizer step it was scored at.
        history: one dict per epoch (training logs such as ``loss``, and ``val_*`` when scored at epoch ends).
        learning_rate, run: the grid point (``run`` set by :func:`~kd_keras.engine.train_lr_grid`, from 0).
        seconds: wall time of this call (0-ish for a finished run found on disk).
        curve: ``(step, score)`` of every validation.
        best_step: see ``best_score``.
    """

    model: keras.Model | None
    monitor: str | None
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]]
    learning_rate: Any = None
    run: int = 0
    seconds: float = 0.0
    curve: list[tuple[int, float | None]] = field(default_factory=list)
    best_step: int = 0

    @property
    def losses(self) -> list[float | None]:
        """The training loss of each epoch."""
        return [h.get("loss") for h in self.history if "epoch" in h]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no model)."""
        return {
            "learning_rate": _json_learning_rate(self.learning_rate),
            "run": self.run,
            "monitor": self.monitor,
            "best_score": finite_or_none(self.best_score),
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "seconds": round(self.seconds, 3),
            "loss": self.losses,
            "curve": [[int(step), score] for step, score in self.curve],
            "history": self.history,
        }
