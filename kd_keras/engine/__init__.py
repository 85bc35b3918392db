"""Training engine: transfer objectives, the ``Distiller``, distribution and robust runs.

- :mod:`~kd_keras.engine.losses`: the objectives as small pure functions (per-example losses).
- :mod:`~kd_keras.engine.objectives`: transfer methods by name (``get_objective("hinton", alpha=0.1)``).
- :mod:`~kd_keras.engine.distiller`: ``Distiller(student, teacher)``, a ``keras.Model`` with its own steps.
- :mod:`~kd_keras.engine.distribute`: ``get_strategy("auto" | "default" | "mirrored" | "multiworker")``.
- :mod:`~kd_keras.engine.callbacks`: ``seed_everything``, ``fit_resumable``, ``TrainingCheckpoint``,
  ``StopOnNaN``.
- :mod:`~kd_keras.engine.teacher_cache`: the teacher's outputs over a pool, computed once on disk
  (``build_teacher_cache``, ``merge_teacher_cache``, ``TeacherCache``).
- :mod:`~kd_keras.engine.pseudo_labels`: ``pseudo_label_pool``, ``PseudoLabels`` (argmax or threshold).
"""

from kd_keras.engine.callbacks import (
    NonFiniteLossError,
    StopOnNaN,
    TrainingCheckpoint,
    fit_resumable,
    seed_everything,
)
from kd_keras.engine.distiller import Distiller, StepContext, teacher_tap_key
from kd_keras.engine.distribute import get_strategy, global_batch_size
from kd_keras.engine.noise import StochasticDepth
from kd_keras.engine.objectives import (
    Objective,
    ObjectiveOutput,
    get_objective,
    list_objectives,
    register_objective,
)
from kd_keras.engine.pseudo_labels import PseudoLabels, pseudo_label_pool
from kd_keras.engine.teacher_cache import TeacherCache, build_teacher_cache, merge_teacher_cache

__all__ = [
    "Distiller",
    "NonFiniteLossError",
    "Objective",
    "ObjectiveOutput",
    "PseudoLabels",
    "StepContext",
    "StochasticDepth",
    "StopOnNaN",
    "TeacherCache",
    "TrainingCheckpoint",
    "build_teacher_cache",
    "fit_resumable",
    "get_objective",
    "get_strategy",
    "global_batch_size",
    "list_objectives",
    "merge_teacher_cache",
    "pseudo_label_pool",
    "register_objective",
    "seed_everything",
    "teacher_tap_key",
]
