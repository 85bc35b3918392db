"""An adapter that trains with a ``keras.distillation.DistillationLoss`` (Keras 3.15) as a kd-keras objective.

``keras_distillation`` (or :func:`from_keras_distillation_loss`) wraps a ``DistillationLoss`` instance so that
:meth:`kd_keras.engine.Distiller.compile` accepts it, with the Distiller's batches, masks, cached teacher logits
and distribution::

    total = alpha * CE(labels, student) + (1 - alpha) * keras_loss.compute_loss(teacher, student)

CE is on labeled examples only (0 for unlabeled ones, as in ``hinton``); the Keras term is on every example.

**Read this before using ``LogitsDistillation``.** Its default ``loss="kl_divergence"`` is the *string*, which
``keras.losses.get`` turns into the plain function ``keras.losses.kl_divergence``; ``LogitsDistillation`` only
applies the softmax and the ``T^2`` factor when the loss is a ``keras.losses.KLDivergence`` *instance*. With the
default it computes a KL divergence between raw logits divided by ``T`` (clipped to ``[1e-7, 1]``): not Hinton's
soft-target loss. Measured on two examples (``T=2``, tests/test_objective_adapter.py): the default gives 5.11
where ``T^2 KL(softmax(t/T) || softmax(s/T))`` is 0.854 (the issue that asked for this adapter measured 7.71
against 1.10 on another pair). Write ::

    keras.distillation.LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())

which gives exactly Hinton's ``T^2 KL`` (and this objective's default). Constructing this objective with a
``LogitsDistillation`` whose loss is the plain ``kl_divergence`` function warns.

Other points:

- ``compute_loss`` returns one scalar, the mean over the examples it is given (a replica's batch; inside a
  ``MirroredStrategy`` replica Keras divides it by the number of replicas, which is undone). The Distiller
  needs per-example losses; the scalar is given to every example of the replica, so the Distiller's replica
  sum divided by the global batch size is the mean of the replicas' means weighted by their sizes: the global
  batch mean, with the same gradient.
- A one-logit binary head ``z`` is passed to the Keras loss as the two logits ``[0, z]`` (a softmax over one
  logit is constant), as :mod:`kd_keras.engine.losses` does.
- ``FeatureDistillation(teacher_layer_name=..., student_layer_name=...)`` reads those layers as taps (teacher
  tap outputs come from the batch when cached); a name left ``None`` means the model's logits.

Example:

```python
import keras

from kd_keras.engine import Distiller
from kd_keras.engine.objectives_keras import from_keras_distillation_loss

objective = from_keras_distillation_loss(
    keras.distillation.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence()), alpha=0.1
)
distiller = Distiller(student, teacher)
distiller.compile("adam", objective=objective)  # same loss as get_objective("hinton", alpha=0.1, temperature=4.0)
```
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import keras
import tensorflow as tf
from keras.distillation import DistillationLoss, LogitsDistillation

from kd_keras.data import schema
from kd_keras.engine import losses
from kd_keras.engine.objective_base import (
    ObjectiveOutput,
    TeacherObjective,
    batch_labeled,
    batch_labels,
    register_objective,
)

__all__ = ["KerasDistillation", "from_keras_distillation_loss", "serialize_distillation_loss",
           "deserialize_distillation_loss"]


def _uses_plain_kl_function(loss: DistillationLoss) -> bool:
    """True for a ``LogitsDistillation`` whose loss is the ``kl_divergence`` function (its default string)."""
    if not isinstance(loss, LogitsDistillation):
        return False
    return any(
        fn is not None and not isinstance(fn, keras.losses.Loss) and "kl" in getattr(fn, "__name__", "").lower()
        for fn in keras.tree.flatten(loss.loss)
    )


def serialize_distillation_loss(loss: DistillationLoss) -> dict[str, Any]:
    """``{"module", "class_name", "config"}`` of a ``DistillationLoss`` with a ``get_config``.

    Example:
        >>> serialize_distillation_loss(LogitsDistillation(2.0, keras.losses.KLDivergence()))["class_name"]
        'LogitsDistillation'
    """
    if not hasattr(loss, "get_config"):
        raise ValueError(f"{type(loss).__name__} has no get_config(); it cannot be written into a config")
    return {"module": type(loss).__module__, "class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize_distillation_loss(config: dict[str, Any]) -> DistillationLoss:
    """The ``DistillationLoss`` that :func:`serialize_distillation_loss` described (its class's ``from_config``).

    Example:
        >>> loss = deserialize_distillation_loss(serialize_distillation_loss(LogitsDistillation(3.0)))
    """
    cls = getattr(importlib.import_module(config["module"]), config["class_name"])
    if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
        raise ValueError(f"{config['module']}.{config['class_name']} is not a keras.distillation.DistillationLoss")
    return cls.from_config(dict(config["config"]))


@register_objective
class KerasDistillation(TeacherObjective):
    """``alpha * CE + (1 - alpha) * keras_loss.compute_loss(teacher, student)`` (see the module docstring, and
    its warning about ``LogitsDistillation``'s default loss).

    Args:
        loss: a ``keras.distillation.DistillationLoss`` instance, or its :func:`serialize_distillation_loss`
            dict (what :meth:`get_config` writes). Default:
            ``LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence())``.
        alpha: weight of the hard-label term, in [0, 1].
        task: see :class:`~kd_keras.engine.objective_base.Objective`.

    Example:
        >>> objective = get_objective("keras_distillation", alpha=0.1)
        >>> objective.loss.temperature
        4.0
    """

    name = "keras_distillation"
    terms = ("hard", "distillation")

    def __init__(self, loss: DistillationLoss | dict | None = None, alpha: float = 0.5, task: str = "auto"):
        super().__init__(task)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{self.name}: alpha must be in [0, 1] for alpha*CE + (1-alpha)*KD, got {alpha}")
        if loss is None:
            loss = LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence())
        elif isinstance(loss, dict):
            loss = deserialize_distillation_loss(loss)
        if not isinstance(loss, DistillationLoss):
            raise TypeError(f"{self.name}: loss must be a keras.distillation.DistillationLoss, got {type(loss)}")
        if _uses_plain_kl_function(loss):
            warnings.warn(
                "LogitsDistillation with loss='kl_divergence' (its default) skips the softmax and the T^2 factor: "
                "it is not Hinton's soft-target loss. Use LogitsDistillation(temperature=T, "
                "loss=keras.losses.KLDivergence()).",
                UserWarning,
                stacklevel=2,
            )
        self.loss, self.alpha = loss, float(alpha)
        # FeatureDistillation names layers; they are read as taps (None: the model's logits).
        self._student_layer = getattr(loss, "student_layer_name", None)
        self._teacher_layer = getattr(loss, "teacher_layer_name", None)

    @property
    def student_taps(self) -> tuple[str, ...]:
        return (self._student_layer,) if self._student_layer else ()

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        return (self._teacher_layer,) if self._teacher_layer else ()

    def _as_class_logits(self, logits: tf.Tensor, task: str) -> tf.Tensor:
        # A softmax over one sigmoid logit is constant: give the Keras loss the pair [0, z].
        logits = tf.cast(logits, tf.float32)
        return tf.concat([tf.zeros_like(logits), logits], axis=-1) if task == "binary" else logits

    def compute(self, batch, ctx):
        images = batch[schema.IMAGE]
        if self.student_taps:
            student, (student_out,) = ctx.student(images, taps=self.student_taps)
        else:
            student = ctx.student(images)
            student_out = None
        teacher_out = ctx.teacher_outputs(self.teacher_taps)[1][0] if self.teacher_taps else None
        task = losses.resolve_task(self.task, student)
        if student_out is None:
            student_out = self._as_class_logits(student, task)
        if teacher_out is None:
            teacher_out = self._as_class_logits(ctx.teacher_logits(), task)
        self.loss.validate_outputs(teacher_out, student_out)
        batch_mean = tf.cast(self.loss.compute_loss(teacher_out, student_out), tf.float32)
        # Inside a replica, Keras' reducing losses already divide by the number of replicas (they expect their
        # results to be summed across replicas); undo it to get this replica's own mean.
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            batch_mean *= float(replica.num_replicas_in_sync)
        # One scalar for the replica: each example carries it, so sum / global batch is the global mean.
        distillation = tf.fill(tf.shape(student)[:1], batch_mean)
        hard = losses.hard_label_cross_entropy(batch_labels(batch), student, self.task) * batch_labeled(batch)
        loss = self.alpha * hard + (1.0 - self.alpha) * distillation
        return ObjectiveOutput(loss, student, {"hard": hard, "distillation": distillation})

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "loss": serialize_distillation_loss(self.loss)}


def from_keras_distillation_loss(
    loss: DistillationLoss, alpha: float = 0.5, task: str = "auto"
) -> KerasDistillation:
    """The objective ``alpha * CE + (1 - alpha) * loss`` for ``Distiller.compile(objective=...)``.

    Args:
        loss: a ``keras.distillation.DistillationLoss`` instance (mind the module docstring's warning about
            ``LogitsDistillation``'s default ``loss="kl_divergence"``).
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        task: ``"auto"``, ``"multiclass"``, ``"binary"`` or ``"multilabel"``.

    Example:
        >>> objective = from_keras_distillation_loss(
        ...     keras.distillation.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence()), alpha=0.1)
    """
    return KerasDistillation(loss=loss, alpha=alpha, task=task)
