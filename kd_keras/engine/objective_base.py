"""The objective interface: :class:`Objective`, its output :class:`ObjectiveOutput`, and the registry of names.

Objectives by name are looked up with :func:`kd_keras.engine.objectives.get_objective`, which imports the
built-in objectives first (:mod:`~kd_keras.engine.objectives_transfer`,
:mod:`~kd_keras.engine.objectives_semi_supervised`, :mod:`~kd_keras.engine.objectives_keras`). This module holds
only what every objective module needs, so none of them imports another (nor the Distiller).

Example:

```python
from kd_keras.engine.objective_base import Objective, ObjectiveOutput, register_objective

@register_objective
class LabelSmoothingCE(Objective):
    name = "label_smoothing_ce"

    def compute(self, batch, ctx):
        logits = ctx.student(batch["image"])
        ...
        return ObjectiveOutput(loss, logits)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import keras
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import losses
from kd_keras.engine.step_context import StepContext


@dataclass
class ObjectiveOutput:
    """What an objective returns for one replica's batch.

    Attributes:
        loss: per-example total loss ``(batch,)`` (the Distiller divides its sum by the global batch size).
        student_logits: the student's logits for the batch's examples, for the compiled metrics.
        terms: named per-example components ``(batch,)``, reported as running means next to ``loss``; a
            ``(values, weights)`` pair gives a weighted mean (e.g. over the labeled examples only).
    """

    loss: tf.Tensor
    student_logits: tf.Tensor
    terms: dict[str, tf.Tensor | tuple[tf.Tensor, tf.Tensor]] = field(default_factory=dict)


class Objective:
    """Base class of the transfer objectives.

    Subclasses set ``name``, ``terms`` (names of the components they report) and implement :meth:`compute`.

    Args:
        task: ``"auto"``, ``"multiclass"``, ``"binary"`` or ``"multilabel"`` (see
            :mod:`kd_keras.engine.losses`).
    """

    name: ClassVar[str] = ""
    terms: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: str = "auto"):
        if task not in losses.TASKS:
            raise ValueError(f"{self.name}: task must be one of {losses.TASKS}, got {task!r}")
        self.task = task
        self.layers: list[keras.layers.Layer] = []

    # What the Distiller prepares before tracing a step.
    @property
    def needs_teacher(self) -> bool:
        """Whether the objective reads teacher outputs (from the teacher or a cached batch key)."""
        return False

    @property
    def student_taps(self) -> tuple[str, ...]:
        """Student layer names whose outputs :meth:`compute` asks for."""
        return ()

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        """Teacher layer names whose outputs :meth:`compute` asks for."""
        return ()

    @property
    def required_keys(self) -> tuple[str, ...]:
        """Batch keys the objective needs besides ``image``."""
        return ()

    def build(self, student: keras.Model, teacher: keras.Model | None) -> None:
        """Create the objective's own layers (called by ``Distiller.compile``, inside its strategy scope)."""

    def compute(self, batch: dict[str, tf.Tensor], ctx: StepContext) -> ObjectiveOutput:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"task": self.task}

    def __repr__(self) -> str:
        config = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({config})"


_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: registers an :class:`Objective` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _OBJECTIVES and _OBJECTIVES[cls.name] is not cls:
        raise ValueError(f"objective name {cls.name!r} registered twice")
    _OBJECTIVES[cls.name] = cls
    return cls


def registered_objectives() -> dict[str, type[Objective]]:
    """A copy of the registry, name -> class (only the objectives whose modules have been imported; use
    :func:`kd_keras.engine.objectives.list_objectives` for all built-in ones)."""
    return dict(_OBJECTIVES)


def batch_labels(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    """The batch's ``label`` (class indices, or multi-hot rows for a multi-label task)."""
    return batch[schema.LABEL]


def batch_labeled(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    """The batch's ``labeled`` mask (1.0 labeled, 0.0 unlabeled), float32 ``(batch,)``."""
    return batch[schema.LABELED]


class TeacherObjective(Objective):
    """Base of the objectives that read teacher outputs (``needs_teacher`` is True)."""

    @property
    def needs_teacher(self) -> bool:
        return True
