"""The step context: what a transfer objective may ask for during one replica's training step.

The :class:`~kd_keras.engine.distiller.Distiller` creates a :class:`StepContext` for every step and hands it to
its objective's ``compute``. It lives in its own module, apart from the Distiller, so that objectives
(:mod:`kd_keras.engine.objectives`) and the Distiller (which imports them) both depend on it and not on each
other: the context only needs the attributes listed in :class:`StepHost`, not the Distiller class.

Example:

```python
from kd_keras.engine.step_context import StepContext

class MyObjective(Objective):
    def compute(self, batch, ctx: StepContext):
        student = ctx.student(batch["image"])
        teacher = ctx.teacher_logits()
        ...
```
"""

from __future__ import annotations

from typing import Any, Protocol

import keras
import tensorflow as tf

from kd_keras.data import schema

__all__ = ["StepContext", "StepHost", "teacher_tap_key"]


def teacher_tap_key(tap: str) -> str:
    """Batch key of a cached teacher feature map for ``tap`` (read instead of running the teacher)."""
    return f"{schema.TEACHER_TAP_PREFIX}{tap}"


def _float32(value: tf.Tensor) -> tf.Tensor:
    """Model outputs in float32: under a mixed-precision policy the layers compute in float16 / bfloat16, but
    softmax, temperature, KL and every loss are computed in float32 (the cast is differentiable)."""
    return tf.cast(value, tf.float32) if value.dtype != tf.float32 else value


class StepHost(Protocol):
    """What :class:`StepContext` reads from the model running the step (the Distiller provides all of it)."""

    optimizer: Any
    student: keras.Model
    teacher: keras.Model | None
    objective: Any  # the objective being computed; its ``name`` is used in messages

    def _tap_model(self, kind: str, taps: tuple[str, ...]) -> keras.Model: ...


class StepContext:
    """What an :class:`~kd_keras.engine.objectives.Objective` may ask for during one replica's step.

    Args:
        distiller: the model running the step (a :class:`~kd_keras.engine.distiller.Distiller`, or anything
            with the attributes of :class:`StepHost`).
        batch: the standardised batch dict of this replica.
        training: whether the step trains (the student's dropout / batch-norm mode).

    Example:

    ```python
    ctx = StepContext(distiller, batch, training=True)
    logits = ctx.student(batch["image"])
    teacher = ctx.teacher_logits()  # cached when the batch has "teacher_logits"
    ```
    """

    def __init__(self, distiller: StepHost, batch: dict[str, tf.Tensor], training: bool):
        self._distiller = distiller
        self.batch = batch
        self.training = training
        self.step = distiller.optimizer.iterations if distiller.optimizer is not None else tf.constant(0)
        replica = tf.distribute.get_replica_context()
        self._replica = replica
        self._local_size = tf.shape(batch[schema.IMAGE])[0]
        local = tf.reshape(self._local_size, [1])
        # Examples per replica (a collective only when there are several replicas).
        self._sizes = local if replica.num_replicas_in_sync == 1 else replica.all_gather(local, axis=0)
        self.replica_offset = tf.reduce_sum(self._sizes[: replica.replica_id_in_sync_group])
        self.global_batch_size = tf.cast(tf.reduce_sum(self._sizes), tf.float32)

    def all_gather(self, value: tf.Tensor) -> tf.Tensor:
        """``value`` (one row per local example) of every replica, concatenated in replica order along axis 0.

        Differentiable (the gradient goes back to the replica that owns each row); the identity on one
        replica. Replicas may hold different numbers of examples (a last partial batch): rows are padded to
        the largest replica for the collective, then the padding is dropped.
        """
        if self._replica.num_replicas_in_sync == 1:
            return value
        largest = tf.reduce_max(self._sizes)
        padding = [[0, largest - self._local_size]] + [[0, 0]] * (len(value.shape) - 1)
        gathered = self._replica.all_gather(tf.pad(value, padding), axis=0)
        return tf.boolean_mask(gathered, tf.reshape(tf.sequence_mask(self._sizes, largest), [-1]))

    def student(self, images: tf.Tensor, taps: tuple[str, ...] = (), training: bool | None = None):
        """Student logits, or ``(logits, [tap outputs])`` when ``taps`` are given."""
        training = self.training if training is None else training
        if not taps:
            return _float32(self._distiller.student(images, training=training))
        outputs = self._distiller._tap_model("student", tuple(taps))(images, training=training)
        return _float32(outputs[0]), [_float32(o) for o in outputs[1:]]

    def teacher(self, images: tf.Tensor, taps: tuple[str, ...] = ()):
        """Teacher logits (or ``(logits, [taps])``) in inference mode, without gradient."""
        teacher = self._distiller.teacher
        if teacher is None:
            raise ValueError(
                f"objective {self._distiller.objective.name!r} needs the teacher but the Distiller has none "
                f"(and the batch has no cached {schema.TEACHER_LOGITS!r})"
            )
        if not taps:
            return tf.stop_gradient(_float32(teacher(images, training=False)))
        outputs = self._distiller._tap_model("teacher", tuple(taps))(images, training=False)
        outputs = [tf.stop_gradient(_float32(o)) for o in outputs]
        return outputs[0], outputs[1:]

    def teacher_logits(self) -> tf.Tensor:
        """The teacher's logits for the batch's ``image``: the cached ``teacher_logits`` when the batch has
        them, else the teacher run on the clean ``image``."""
        if schema.TEACHER_LOGITS in self.batch:
            return tf.cast(self.batch[schema.TEACHER_LOGITS], tf.float32)
        return self.teacher(self.batch[schema.IMAGE])

    def teacher_outputs(self, taps: tuple[str, ...]) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """Teacher logits and tap outputs for ``image``; the cached ones (``teacher_tap_key(tap)``) when the
        batch has them."""
        keys = [teacher_tap_key(t) for t in taps]
        if schema.TEACHER_LOGITS in self.batch and all(k in self.batch for k in keys):
            return self.teacher_logits(), [tf.cast(self.batch[k], tf.float32) for k in keys]
        return self.teacher(self.batch[schema.IMAGE], taps)
