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
- :mod:`~kd_keras.engine.training`: ``train`` (one run: stream or callable validation, curve, resumable),
  ``train_lr_grid``; :mod:`~kd_keras.engine.predict`: ``predict``, ``evaluate_model``, ``make_score_fn``;
  :mod:`~kd_keras.engine.optim`: ``make_optimizer``; :mod:`~kd_keras.engine.batchnorm`:
  ``recalibrate_batch_norm``; :mod:`~kd_keras.engine.streams`: ``train_stream``, ``fits_in_memory``.
"""

from kd_keras.engine.batchnorm import recalibrate_batch_norm
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
from kd_keras.engine.optim import make_optimizer
from kd_keras.engine.predict import (
    Predictions,
    evaluate_model,
    infer_task,
    make_score_fn,
    predict,
    score_logits,
)
from kd_keras.engine.pseudo_labels import PseudoLabels, pseudo_label_pool
from kd_keras.engine.streams import CACHE_LIMIT_BYTES, fits_in_memory, train_stream
from kd_keras.engine.teacher_cache import TeacherCache, build_teacher_cache, merge_teacher_cache
from kd_keras.engine.tracking import EpochSummaries, TrainResult, ValidationTracker
from kd_keras.engine.training import GridResult, count_batches, train, train_lr_grid

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
    # the training stack
    "CACHE_LIMIT_BYTES",
    "EpochSummaries",
    "GridResult",
    "Predictions",
    "TrainResult",
    "ValidationTracker",
    "count_batches",
    "evaluate_model",
    "fits_in_memory",
    "infer_task",
    "make_optimizer",
    "make_score_fn",
    "predict",
    "recalibrate_batch_norm",
    "score_logits",
    "train",
    "train_lr_grid",
    "train_stream",
]
