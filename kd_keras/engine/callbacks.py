"""Robust runs: one seed, checkpoints that resume mid-epoch to the same result, a loud stop on a NaN loss.

- :func:`seed_everything` seeds Python, NumPy, TensorFlow and Keras from one number and (by default) turns on
  deterministic ops.
- :class:`TrainingCheckpoint` saves the whole training state (``model.save_weights``: student, objective
  layers, EMA teacher, optimizer with its step counter; plus random-layer seed states) every
  ``save_every_steps`` steps and at each epoch end, atomically (a run killed while writing keeps the previous
  checkpoint).
- :func:`fit_resumable` restores the latest checkpoint, skips the batches already consumed and trains to the
  end: a run killed by a signal and restarted ends with the same weights as an uninterrupted one, provided the
  stream is a deterministic function of position (a ``repeat()``-ed ``tf.data`` pipeline with fixed shuffle
  and augmentation seeds, built afresh by a function) and :func:`seed_everything` was called. Keras'
  ``BackupAndRestore`` restarts an interrupted epoch from its first batch with mid-epoch weights (and does not
  save random-generator states), which does not give the same result.
- :class:`StopOnNaN` raises :class:`NonFiniteLossError` with a one-line message at the first non-finite loss
  (``keras.callbacks.TerminateOnNaN`` only stops ``fit``, which then returns as if training had ended well).

Example:
    >>> seed_everything(1234)
    >>> history = fit_resumable(distiller, lambda: make_stream(seed=1234).repeat(), epochs=30,
    ...                         steps_per_epoch=500, directory="runs/kd/checkpoints", save_every_steps=100,
    ...                         callbacks=[StopOnNaN()])
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kd_keras.engine.distribute import tf_config_workers

_STATE_FILE = "training_state.json"


def _seed_states(model: keras.Model) -> list:
    """Random-generator states of the model's layers (dropout, random augmentation, stochastic depth).

    ``save_weights`` leaves them out; without them a resumed run would draw different dropout masks.
    """
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def seed_everything(seed: int, deterministic: bool = True) -> int:
    """Seed Python's ``random``, NumPy, TensorFlow and Keras' global seed generator from ``seed``.

    Args:
        seed: the run's one seed.
        deterministic: also call ``tf.config.experimental.enable_op_determinism()`` (same results on the same
            machine; a few ops without a deterministic kernel then raise, and some get slower).

    Returns:
        ``seed``.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)  # for subprocesses (data workers)
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return int(seed)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNaN(keras.callbacks.Callback):
    """Stop training at the first non-finite ``loss`` by raising :class:`NonFiniteLossError` (one line:
    where it happened and what to do), instead of ``TerminateOnNaN``'s quiet stop.

    Args:
        checkpoint_dir: mentioned in the message as where to resume from (optional).
    """

    def __init__(self, checkpoint_dir: str | Path | None = None):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if math.isfinite(loss):
            return
        self.model.stop_training = True
        where = f"epoch {self._epoch + 1}, batch {batch + 1}"
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        if iterations is not None:
            where += f" (optimizer step {int(iterations.numpy())})"
        resume = f"; resume from the checkpoint in {self.checkpoint_dir}" if self.checkpoint_dir else ""
        raise NonFiniteLossError(
            f"training stopped: loss is {loss} at {where}; lower the learning rate or check "
            f"the inputs and labels{resume}"
        )


def _is_chief() -> bool:
    """Whether this process writes checkpoints (the chief, or worker 0 when there is no chief)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw or tf_config_workers() <= 1:
        return True
    config = json.loads(raw)
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


class TrainingCheckpoint(keras.callbacks.Callback):
    """Saves the training state every ``save_every_steps`` steps and at each epoch end.

    The directory holds ``training_state.json`` (global step, epoch, weights file) and one
    ``step_*.weights.h5``; each save writes the new weights under a temporary name, renames it, then replaces
    the state file, so a kill at any moment leaves a complete checkpoint. A state with a non-finite loss is
    not saved. Under ``MultiWorkerMirroredStrategy`` only the chief writes (the directory must be shared).

    Args:
        directory: where the checkpoint lives (used by this run only).
        save_every_steps: save period in optimizer steps.
        initial_step: global step the run starts at (set by :func:`fit_resumable` after a restore).
    """

    def __init__(self, directory: str | Path, save_every_steps: int = 100, initial_step: int = 0):
        super().__init__()
        if save_every_steps < 1:
            raise ValueError(f"save_every_steps must be >= 1, got {save_every_steps}")
        self.directory = Path(directory)
        self.save_every_steps = int(save_every_steps)
        self.global_step = int(initial_step)
        self._epoch = 0
        self._saved_step = -1

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.global_step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        if self.global_step % self.save_every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        if self._saved_step != self.global_step:
            self.save()

    def save(self) -> None:
        """Write the current state now."""
        self._saved_step = self.global_step
        if not _is_chief():
            # Reading the weights runs collectives under MultiWorkerMirroredStrategy (sync-on-read variables are
            # all-reduced): every worker must read them in the same order, so the others write a throw-away copy.
            with tempfile.TemporaryDirectory(prefix="kd_keras_worker_checkpoint_") as scratch:
                self.model.save_weights(str(Path(scratch) / "w.weights.h5"), overwrite=True)
                [np.asarray(v.numpy()) for v in _seed_states(self.model)]
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.global_step:09d}.weights.h5"
        temporary = self.directory / f"partial_{name}"
        self.model.save_weights(str(temporary), overwrite=True)
        os.replace(temporary, self.directory / name)
        seeds_name = name.replace(".weights.h5", ".seeds.npz")
        with open(self.directory / f"partial_{seeds_name}", "wb") as handle:
            np.savez(handle, *[np.asarray(v.numpy()) for v in _seed_states(self.model)])
        os.replace(self.directory / f"partial_{seeds_name}", self.directory / seeds_name)
        state = {"global_step": self.global_step, "epoch": self._epoch, "weights": name, "seeds": seeds_name}
        state_tmp = self.directory / f"{_STATE_FILE}.partial"
        state_tmp.write_text(json.dumps(state))
        os.replace(state_tmp, self.directory / _STATE_FILE)
        for old in self.directory.glob("*step_*"):
            if old.name not in (name, seeds_name):
                old.unlink(missing_ok=True)

    @staticmethod
    def restore(model: keras.Model, directory: str | Path) -> int:
        """Load the latest state of ``directory`` into a compiled ``model``; returns its global step (0 when
        there is no checkpoint)."""
        state_path = Path(directory) / _STATE_FILE
        if not state_path.is_file():
            return 0
        try:
            state = json.loads(state_path.read_text())
            weights = Path(directory) / state["weights"]
            seeds = Path(directory) / state["seeds"]
            step = int(state["global_step"])
        except (ValueError, KeyError) as error:
            raise ValueError(f"{state_path}: unreadable training state ({error!r})") from None
        if not weights.is_file():
            raise FileNotFoundError(f"{state_path}: names {weights.name}, which does not exist")
        if model.optimizer is None:
            raise ValueError("restore: compile the model before restoring a checkpoint")
        with model.distribute_strategy.scope():
            if not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(str(weights))
            variables = _seed_states(model)
            with np.load(seeds) as saved:
                arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            if len(arrays) != len(variables):
                raise ValueError(
                    f"{seeds}: {len(arrays)} random-generator states saved, the model has "
                    f"{len(variables)}; was the checkpoint written by another model?"
                )
            for variable, array in zip(variables, arrays, strict=True):
                variable.assign(array)
        return step


def fit_resumable(
    model: keras.Model,
    make_stream: Callable[[], tf.data.Dataset],
    *,
    epochs: int,
    steps_per_epoch: int,
    directory: str | Path,
    save_every_steps: int = 100,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    validation_data: Any = None,
    verbose: int | str = "auto",
) -> dict[str, list[float]]:
    """``model.fit`` that resumes from ``directory`` where a killed run stopped, mid-epoch included.

    Args:
        model: a compiled model (e.g. a :class:`~kd_keras.engine.Distiller`).
        make_stream: a function returning a **new** infinite (``repeat()``-ed), deterministic stream of
            batches: the batches of step ``k`` must be the same in every process, so fix its shuffle and
            augmentation seeds. A function, not a dataset, because a ``shuffle(seed=...)`` dataset reshuffles
            differently each time the same object is iterated again (a resumed run iterates twice: the rest of
            the interrupted epoch, then whole epochs). On resume the first ``global_step`` batches are skipped
            (they are computed, not trained on).
        epochs, steps_per_epoch: the run's length; epoch boundaries stay where they were.
        directory: checkpoint directory (see :class:`TrainingCheckpoint`).
        save_every_steps: checkpoint period in steps.
        callbacks, validation_data, verbose: as in ``fit``.

    Returns:
        The history of this call (logs of the epochs it ran), as ``{name: [values]}``.
    """
    if isinstance(make_stream, tf.data.Dataset) or not callable(make_stream):
        raise TypeError(
            "fit_resumable: pass a function that builds the stream (e.g. lambda: make_stream()), "
            "not a dataset: a resumed run needs fresh, identically shuffled copies"
        )
    start = TrainingCheckpoint.restore(model, directory)
    total = epochs * steps_per_epoch
    history: dict[str, list[float]] = {}
    if start >= total:
        return history
    checkpoint = TrainingCheckpoint(directory, save_every_steps, initial_step=start)
    callbacks = [*callbacks, checkpoint]
    epoch, done_in_epoch = divmod(start, steps_per_epoch)
    # A partially done epoch first (only its remaining steps), then whole epochs.
    segments = []
    if done_in_epoch:
        segments.append((epoch, steps_per_epoch - done_in_epoch))
        epoch += 1
    if epoch < epochs:
        segments.append((epoch, steps_per_epoch))
    for first_epoch, steps in segments:
        skip = checkpoint.global_step
        last_epoch = first_epoch + 1 if steps != steps_per_epoch else epochs
        stream = make_stream()
        if stream.cardinality() != tf.data.INFINITE_CARDINALITY:
            raise ValueError(
                "fit_resumable: the stream must repeat forever (dataset.repeat()) so a resumed run "
                "can skip the steps already done"
            )
        result = model.fit(
            stream.skip(skip),
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            validation_data=validation_data,
            verbose=verbose,
            shuffle=False,  # the stream's own (seeded) shuffle is the order; Keras cannot shuffle a dataset
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
        if model.stop_training:
            break
    return history
