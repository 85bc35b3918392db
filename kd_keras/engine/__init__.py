"""Training engine: transfer objectives, the ``Distiller``, distribution and robust runs.

- :mod:`~kd_keras.engine.losses`: the objectives as small pure functions (per-example losses).
- :mod:`~kd_keras.engine.objectives`: transfer methods by name (``get_objective("hinton", alpha=0.1)``).
- :mod:`~kd_keras.engine.distiller`: ``Distiller(student, teacher)``, a ``keras.Model`` with its own steps.
- :mod:`~kd_keras.engine.distribute`: ``get_strategy("auto" | "default" | "mirrored" | "multiworker")``.
- :mod:`~kd_keras.engine.callbacks`: ``seed_everything``, ``fit_resumable``, ``TrainingCheckpoint``,
  ``StopOnNaN``.
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

__all__ = [
    "Distiller",
    "NonFiniteLossError",
    "Objective",
    "ObjectiveOutput",
    "StepContext",
    "StochasticDepth",
    "StopOnNaN",
    "TrainingCheckpoint",
    "fit_resumable",
    "get_objective",
    "get_strategy",
    "global_batch_size",
    "list_objectives",
    "register_objective",
    "seed_everything",
    "teacher_tap_key",
]
