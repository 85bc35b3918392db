"""Transfer methods by name: a method name plus its config gives an objective the ``Distiller`` trains with.

An objective decides which forward passes a training step needs (student, teacher, taps, views) through the
step context the :class:`~kd_keras.engine.Distiller` hands it, and returns per-example losses built from the
pure functions of :mod:`kd_keras.engine.losses`. Objectives that learn extra weights (a FitNets regressor, a
SimCLR projection head) create them in :meth:`Objective.build`; they train with the student and are never
part of the saved student.

Registered names (``list_objectives()``):

============================  ==========================================================  ============
name                          method                                                      teacher
============================  ==========================================================  ============
``hard_label``                cross-entropy with the labels (labeled examples only)       no
``hinton``                    ``alpha CE + (1 - alpha) T^2 KL`` (Hinton et al., 2015)      yes
``soft_target_student_teacher``  002 section 2.5: ``CE + alpha T^2 KL`` on all images    yes
``conditional``               000 eq. 2: soft targets where the teacher is right          yes
``pseudo_label``              002/003: teacher labels on unlabeled images, one CE         yes
``noisy_student``             pseudo-labels, noise (augmentation, dropout) on the student yes
``attention_transfer``        004: ``CE + (1/beta) L_AT``                                 yes
``fitnets``                   hints through a learned 1x1 regressor                       yes
``simclr``                    NT-Xent on two views, projection head, global negatives    no
``fixmatch``                  FixMatch (weak/strong views, confidence threshold)          optional
``mixmatch``                  MixMatch (label guessing, sharpening, MixUp)                optional
``keras_distillation``        ``alpha CE + (1 - alpha)`` a ``keras.distillation`` loss     yes
============================  ==========================================================  ============

The code: :mod:`~kd_keras.engine.objective_base` (the interface and the registry),
:mod:`~kd_keras.engine.objectives_transfer` (hard labels and teacher-to-student transfer),
:mod:`~kd_keras.engine.objectives_semi_supervised` (SimCLR, FixMatch, MixMatch),
:mod:`~kd_keras.engine.objectives_keras` (a ``keras.distillation.DistillationLoss`` as an objective). This
module imports them all, so every built-in name is registered, and re-exports their classes.

Example:
    >>> objective = get_objective("hinton", alpha=0.1, temperature=4.0)
    >>> distiller.compile(optimizer="adam", objective=objective)  # or objective="hinton"
"""


from __future__ import annotations

from typing import Any

from kd_keras.engine.objective_base import (
    Objective,
    ObjectiveOutput,
    TeacherObjective,
    register_objective,
    registered_objectives,
)
from kd_keras.engine.objectives_keras import KerasDistillation, from_keras_distillation_loss
from kd_keras.engine.objectives_semi_supervised import FixMatch, MixMatch, SimCLR
from kd_keras.engine.objectives_transfer import (
    AttentionTransfer,
    ConditionalDistillation,
    FitNetsHints,
    HardLabel,
    Hinton,
    NoisyStudent,
    PseudoLabel,
    SoftTargetStudentTeacher,
)

__all__ = [
    "AttentionTransfer",
    "ConditionalDistillation",
    "FitNetsHints",
    "FixMatch",
    "HardLabel",
    "Hinton",
    "KerasDistillation",
    "MixMatch",
    "NoisyStudent",
    "Objective",
    "ObjectiveOutput",
    "PseudoLabel",
    "SimCLR",
    "SoftTargetStudentTeacher",
    "TeacherObjective",
    "from_keras_distillation_loss",
    "get_objective",
    "list_objectives",
    "register_objective",
]


def list_objectives() -> list[str]:
    """Registered objective names, sorted (every built-in one, and any registered since).

    Example:
        >>> "hinton" in list_objectives()
        True
    """
    return sorted(registered_objectives())


def get_objective(objective: str | dict | Objective, **config: Any) -> Objective:
    """An objective from its name and config (torchdistill-style), a ``{"name": ..., **config}`` dict, or an
    :class:`Objective` (returned as is).

    Args:
        objective: a registered name, a dict with ``"name"`` and the config, or an :class:`Objective`.
        **config: the objective's constructor arguments (not with an :class:`Objective` instance).

    Raises:
        KeyError: unknown name (the message lists the known ones).

    Example:
        >>> get_objective({"name": "attention_transfer", "student_taps": ["stage3"],
        ...                "teacher_taps": ["stage3"], "beta": 1000})
    """
    if isinstance(objective, Objective):
        if config:
            raise ValueError("config arguments given together with an Objective instance")
        return objective
    if isinstance(objective, dict):
        config = {**{k: v for k, v in objective.items() if k != "name"}, **config}
        objective = objective.get("name", "")
    registry = registered_objectives()
    if objective not in registry:
        raise KeyError(f"unknown objective {objective!r}; known objectives: {', '.join(list_objectives())}")
    return registry[objective](**config)
