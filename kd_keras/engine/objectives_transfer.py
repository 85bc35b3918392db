"""Hard labels and teacher-to-student transfer: ``hard_label``, ``hinton``, ``soft_target_student_teacher``,
``conditional``, ``pseudo_label``, ``noisy_student``, ``attention_transfer``, ``fitnets``.

What each one computes is in the table of :mod:`kd_keras.engine.objectives` and in each class's docstring.

Example:

```python
from kd_keras.engine.objectives_transfer import Hinton

objective = Hinton(alpha=0.1, temperature=4.0)  # the same as get_objective("hinton", alpha=0.1, temperature=4.0)
```
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import losses
from kd_keras.engine.objective_base import (
    Objective,
    ObjectiveOutput,
    TeacherObjective,
    batch_labeled,
    batch_labels,
    register_objective,
)


@register_objective
class HardLabel(Objective):
    """Cross-entropy with the expert labels; unlabeled examples (mask 0) contribute nothing."""

    name = "hard_label"

    def compute(self, batch, ctx):
        logits = ctx.student(batch[schema.IMAGE])
        loss = losses.hard_label_cross_entropy(batch_labels(batch), logits, self.task) * batch_labeled(batch)
        return ObjectiveOutput(loss, logits)



@register_objective
class Hinton(TeacherObjective):
    """Hinton soft targets: ``alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    CE is on labeled examples only, the soft term on every example. Binary one-logit heads are the two logits
    ``[0, z]`` (see :mod:`kd_keras.engine.losses`).

    Args:
        alpha: weight of the hard-label term, in [0, 1].
        temperature: ``T``.
        task: see :class:`Objective`.
    """

    name = "hinton"
    terms = ("hard", "soft")
    form = "convex"

    def __init__(self, alpha: float = 0.1, temperature: float = 4.0, task: str = "auto"):
        super().__init__(task)
        if self.form == "convex" and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{self.name}: alpha must be in [0, 1] for alpha*CE + (1-alpha)*KD, got {alpha}")
        if temperature <= 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)

    def compute(self, batch, ctx):
        teacher = ctx.teacher_logits()
        student = ctx.student(batch[schema.IMAGE])
        hard = losses.hard_label_cross_entropy(batch_labels(batch), student, self.task) * batch_labeled(batch)
        soft = losses.soft_target_kl(teacher, student, self.temperature, self.task)
        loss = losses.soft_target_loss(
            batch_labels(batch),
            batch_labeled(batch),
            teacher,
            student,
            self.alpha,
            self.temperature,
            self.task,
            self.form,
        )
        return ObjectiveOutput(loss, student, {"hard": hard, "soft": soft})

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "temperature": self.temperature}


@register_objective
class SoftTargetStudentTeacher(Hinton):
    """Study 002 section 2.5: soft targets on labeled and unlabeled images plus hard targets on labeled ones,
    ``CE + alpha * T^2 * KL`` (the paper's best ``T=3, alpha=1.5`` rules out the convex form)."""

    name = "soft_target_student_teacher"
    form = "hard_plus_alpha_soft"

    def __init__(self, alpha: float = 1.5, temperature: float = 3.0, task: str = "auto"):
        if alpha < 0:
            raise ValueError(f"{self.name}: alpha must be >= 0, got {alpha}")
        super().__init__(alpha, temperature, task)


@register_objective
class ConditionalDistillation(TeacherObjective):
    """Study 000 eq. 2: teacher soft targets where the teacher predicts the label, hard labels where it does
    not; unlabeled (random) images always get the soft targets (eq. 1). See
    :func:`kd_keras.engine.losses.conditional_distillation_loss`.

    Args:
        temperature: ``T`` of the soft targets (1 = the paper's plain probabilities).
    """

    name = "conditional"
    terms = ("teacher_correct",)

    def __init__(self, temperature: float = 1.0, task: str = "auto"):
        super().__init__(task)
        self.temperature = float(temperature)

    def compute(self, batch, ctx):
        teacher = ctx.teacher_logits()
        student = ctx.student(batch[schema.IMAGE])
        loss = losses.conditional_distillation_loss(
            batch_labels(batch), batch_labeled(batch), teacher, student, self.temperature, self.task
        )
        # Reported over labeled examples: the fraction that gets soft targets.
        correct = tf.reduce_mean(losses.teacher_is_correct(batch_labels(batch), teacher, self.task), -1)
        return ObjectiveOutput(loss, student, {"teacher_correct": (correct, batch_labeled(batch))})

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register_objective
class PseudoLabel(TeacherObjective):
    """Expert labels pooled with the teacher's pseudo-labels on unlabeled images under one CE (002, 003).

    Args:
        soft: use ``softmax(t/T)`` instead of the argmax / 0.5-threshold hard labels.
        temperature: ``T`` of soft pseudo-labels.
        min_confidence: unlabeled examples whose top teacher probability is lower get weight 0.
        task: ``"binary"`` thresholds ``sigmoid(z)`` at 0.5 (study 003).
    """

    name = "pseudo_label"

    def __init__(
        self, soft: bool = False, temperature: float = 1.0, min_confidence: float = 0.0, task: str = "auto"
    ):
        super().__init__(task)
        self.soft, self.temperature, self.min_confidence = (
            bool(soft),
            float(temperature),
            float(min_confidence),
        )

    def student_inputs(self, batch, ctx):
        return batch[schema.IMAGE]

    def compute(self, batch, ctx):
        teacher = ctx.teacher_logits()
        student = ctx.student(self.student_inputs(batch, ctx))
        loss = losses.pseudo_label_loss(
            batch_labels(batch),
            batch_labeled(batch),
            teacher,
            student,
            self.task,
            self.soft,
            self.temperature,
            self.min_confidence,
        )
        return ObjectiveOutput(loss, student)

    def get_config(self):
        return {
            **super().get_config(),
            "soft": self.soft,
            "temperature": self.temperature,
            "min_confidence": self.min_confidence,
        }


@register_objective
class NoisyStudent(PseudoLabel):
    """Noisy student (Xie et al., 2020): pseudo-labels from an un-noised teacher, noise on the student only.

    The teacher sees the clean ``image`` (or its cached logits); the student sees
    ``student_augmentation(image)`` in training mode, so its dropout and any
    :class:`kd_keras.engine.noise.StochasticDepth` layers are active. Build the student with ``dropout > 0``
    for dropout noise.

    Args:
        student_augmentation: a Keras layer (or callable) applied to the student's images only, e.g.
            ``kd_keras.data.augment`` layers; create it inside the strategy scope. ``None``: no input noise.
        soft: soft pseudo-labels (the paper's default) or hard ones.
        temperature, min_confidence, task: see :class:`PseudoLabel`.
    """

    name = "noisy_student"

    def __init__(
        self,
        student_augmentation: Callable | None = None,
        soft: bool = True,
        temperature: float = 1.0,
        min_confidence: float = 0.0,
        task: str = "auto",
    ):
        super().__init__(soft, temperature, min_confidence, task)
        self.student_augmentation = student_augmentation

    def build(self, student, teacher):
        # Tracked with the Distiller, so a random layer's seed state is checkpointed with the run.
        if isinstance(self.student_augmentation, keras.layers.Layer):
            self.layers = [self.student_augmentation]

    def student_inputs(self, batch, ctx):
        images = batch[schema.IMAGE]
        if self.student_augmentation is None or not ctx.training:
            return images
        return self.student_augmentation(images, training=True)

    def get_config(self):
        return {**super().get_config(), "student_augmentation": repr(self.student_augmentation)}


def _pairs(student_taps, teacher_taps, name):
    student_taps, teacher_taps = tuple(student_taps), tuple(teacher_taps)
    if not student_taps or len(student_taps) != len(teacher_taps):
        raise ValueError(
            f"{name}: give as many student_taps as teacher_taps (at least one), "
            f"got {student_taps} and {teacher_taps}"
        )
    return student_taps, teacher_taps


@register_objective
class AttentionTransfer(TeacherObjective):
    """Attention transfer (study 004): ``CE + (1/beta) * sum over tap pairs of L_AT``.

    Args:
        student_taps, teacher_taps: layer names paired in order (e.g. the layer before the last of the last
            dense block of each network, as in 004).
        beta: 004's weight (``1/beta`` multiplies ``L_AT``; 004 grid-searched 1..2000).
        variant: ``"paper"`` (004 eq. 1, per-plane) or ``"zagoruyko"`` (the original authors' code); see
            :func:`kd_keras.engine.losses.attention_transfer_loss` for the difference.
        task: ``"multilabel"`` for 004's chest X-ray labels, ``"multiclass"`` for DR grades.
    """

    name = "attention_transfer"
    terms = ("hard", "attention")

    def __init__(
        self,
        student_taps=("stage4",),
        teacher_taps=("stage4",),
        beta: float = 1000.0,
        variant: str = "paper",
        task: str = "auto",
    ):
        super().__init__(task)
        self._student_taps, self._teacher_taps = _pairs(student_taps, teacher_taps, self.name)
        if beta <= 0:
            raise ValueError(f"{self.name}: beta must be > 0, got {beta}")
        if variant not in losses.AT_VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {losses.AT_VARIANTS}, got {variant!r}")
        self.beta, self.variant = float(beta), variant

    @property
    def student_taps(self):
        return self._student_taps

    @property
    def teacher_taps(self):
        return self._teacher_taps

    def compute(self, batch, ctx):
        student, student_maps = ctx.student(batch[schema.IMAGE], taps=self.student_taps)
        _, teacher_maps = ctx.teacher_outputs(self.teacher_taps)
        attention = tf.add_n(
            [
                losses.attention_transfer_loss(s, t, self.variant)
                for s, t in zip(student_maps, teacher_maps, strict=True)
            ]
        )
        hard = losses.hard_label_cross_entropy(batch_labels(batch), student, self.task) * batch_labeled(batch)
        return ObjectiveOutput(hard + attention / self.beta, student, {"hard": hard, "attention": attention})

    def get_config(self):
        return {
            **super().get_config(),
            "student_taps": list(self.student_taps),
            "teacher_taps": list(self.teacher_taps),
            "beta": self.beta,
            "variant": self.variant,
        }


@register_objective
class FitNetsHints(TeacherObjective):
    """FitNets hints (Romero et al., 2015): a learned 1x1 convolution regresses a student feature map onto a
    teacher feature map; ``ce_weight * CE + hint_weight * MSE``. FitNets' first stage is ``ce_weight=0``.

    Args:
        student_tap, teacher_tap: the guided (student) and hint (teacher) layer names.
        hint_weight, ce_weight: weights of the two terms.
    """

    name = "fitnets"
    terms = ("hard", "hint")

    def __init__(
        self,
        student_tap: str = "stage3",
        teacher_tap: str = "stage3",
        hint_weight: float = 1.0,
        ce_weight: float = 1.0,
        task: str = "auto",
    ):
        super().__init__(task)
        self.student_tap, self.teacher_tap = student_tap, teacher_tap
        self.hint_weight, self.ce_weight = float(hint_weight), float(ce_weight)
        self.regressor: keras.layers.Layer | None = None

    @property
    def student_taps(self):
        return (self.student_tap,)

    @property
    def teacher_taps(self):
        return (self.teacher_tap,)

    def build(self, student, teacher):
        if teacher is None:
            raise ValueError(f"{self.name}: needs a teacher model to size the regressor")
        student_shape = student.get_layer(self.student_tap).output.shape
        teacher_shape = teacher.get_layer(self.teacher_tap).output.shape
        if len(student_shape) != 4 or len(teacher_shape) != 4:
            raise ValueError(
                f"{self.name}: taps must be (batch, H, W, C) maps, got {student_shape} and {teacher_shape}"
            )
        self.regressor = keras.layers.Conv2D(teacher_shape[-1], 1, name="fitnets_regressor")
        self.regressor.build(student_shape)
        self.layers = [self.regressor]

    def compute(self, batch, ctx):
        student, (student_map,) = ctx.student(batch[schema.IMAGE], taps=self.student_taps)
        _, (teacher_map,) = ctx.teacher_outputs(self.teacher_taps)
        hint = losses.hint_loss(self.regressor(student_map), teacher_map)
        hard = losses.hard_label_cross_entropy(batch_labels(batch), student, self.task) * batch_labeled(batch)
        return ObjectiveOutput(
            self.ce_weight * hard + self.hint_weight * hint, student, {"hard": hard, "hint": hint}
        )

    def get_config(self):
        return {
            **super().get_config(),
            "student_tap": self.student_tap,
            "teacher_tap": self.teacher_tap,
            "hint_weight": self.hint_weight,
            "ce_weight": self.ce_weight,
        }


