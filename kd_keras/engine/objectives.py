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
============================  ==========================================================  ============

Example:
    >>> objective = get_objective("hinton", alpha=0.1, temperature=4.0)
    >>> distiller.compile(optimizer="adam", objective=objective)  # or objective="hinton"
"""

from __future__ import annotations

import random
from collections.abc import Callable
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


def list_objectives() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(_OBJECTIVES)


def get_objective(objective: str | dict | Objective, **config: Any) -> Objective:
    """An objective from its name and config (torchdistill-style), a ``{"name": ..., **config}`` dict, or an
    :class:`Objective` (returned as is).

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
    if objective not in _OBJECTIVES:
        raise KeyError(f"unknown objective {objective!r}; known objectives: {', '.join(list_objectives())}")
    return _OBJECTIVES[objective](**config)


def _labels(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    return batch[schema.LABEL]


def _labeled(batch: dict[str, tf.Tensor]) -> tf.Tensor:
    return batch[schema.LABELED]


@register_objective
class HardLabel(Objective):
    """Cross-entropy with the expert labels; unlabeled examples (mask 0) contribute nothing."""

    name = "hard_label"

    def compute(self, batch, ctx):
        logits = ctx.student(batch[schema.IMAGE])
        loss = losses.hard_label_cross_entropy(_labels(batch), logits, self.task) * _labeled(batch)
        return ObjectiveOutput(loss, logits)


class _TeacherObjective(Objective):
    @property
    def needs_teacher(self) -> bool:
        return True


@register_objective
class Hinton(_TeacherObjective):
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
        hard = losses.hard_label_cross_entropy(_labels(batch), student, self.task) * _labeled(batch)
        soft = losses.soft_target_kl(teacher, student, self.temperature, self.task)
        loss = losses.soft_target_loss(
            _labels(batch),
            _labeled(batch),
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
class ConditionalDistillation(_TeacherObjective):
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
            _labels(batch), _labeled(batch), teacher, student, self.temperature, self.task
        )
        # Reported over labeled examples: the fraction that gets soft targets.
        correct = tf.reduce_mean(losses.teacher_is_correct(_labels(batch), teacher, self.task), -1)
        return ObjectiveOutput(loss, student, {"teacher_correct": (correct, _labeled(batch))})

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register_objective
class PseudoLabel(_TeacherObjective):
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
            _labels(batch),
            _labeled(batch),
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
class AttentionTransfer(_TeacherObjective):
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
        hard = losses.hard_label_cross_entropy(_labels(batch), student, self.task) * _labeled(batch)
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
class FitNetsHints(_TeacherObjective):
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
        hard = losses.hard_label_cross_entropy(_labels(batch), student, self.task) * _labeled(batch)
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


@register_objective
class SimCLR(Objective):
    """SimCLR pretraining (Chen et al., 2020; study 003 phase 1): NT-Xent between the projections of two
    augmented views (``image`` and ``view2``), negatives gathered from **all replicas**.

    The encoder is the Distiller's student (no teacher); its ``feature_tap`` output (the pooled vector) goes
    through a projection head ``Dense(hidden, relu) -> Dense(projection_dim)`` that trains with it and is
    discarded afterwards (it is not part of the saved student).

    Args:
        temperature: ``tau`` (SimCLR's default 0.1; 003 does not state its value).
        projection_dim: output size of the head.
        hidden_dim: hidden size of the head (``None``: the feature size).
        feature_tap: the encoder layer whose output is projected.
    """

    name = "simclr"

    def __init__(
        self,
        temperature: float = 0.1,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        feature_tap: str = "features",
        task: str = "auto",
    ):
        super().__init__(task)
        if temperature <= 0:
            raise ValueError(f"{self.name}: temperature must be > 0, got {temperature}")
        self.temperature, self.projection_dim = float(temperature), int(projection_dim)
        self.hidden_dim, self.feature_tap = hidden_dim, feature_tap
        self.head: keras.Sequential | None = None

    @property
    def student_taps(self):
        return (self.feature_tap,)

    @property
    def required_keys(self):
        return (schema.VIEW2,)

    def build(self, student, teacher):
        feature_shape = student.get_layer(self.feature_tap).output.shape
        if len(feature_shape) != 2:
            raise ValueError(
                f"{self.name}: tap {self.feature_tap!r} must be a pooled vector, got {feature_shape}"
            )
        hidden = self.hidden_dim or feature_shape[-1]
        self.head = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(self.projection_dim)],
            name="simclr_projection_head",
        )
        self.head.build(feature_shape)
        self.layers = [self.head]

    def compute(self, batch, ctx):
        b = tf.shape(batch[schema.IMAGE])[0]
        # One pass over both views (one set of batch-norm statistics, as SimCLR does).
        logits, (features,) = ctx.student(
            tf.concat([batch[schema.IMAGE], batch[schema.VIEW2]], 0), taps=self.student_taps
        )
        z = self.head(features, training=ctx.training)
        z1, z2 = z[:b], z[b:]
        loss = losses.nt_xent_loss(
            z1, z2, self.temperature, ctx.all_gather(z1), ctx.all_gather(z2), ctx.replica_offset
        )
        return ObjectiveOutput(loss, logits[:b])

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "projection_dim": self.projection_dim,
            "hidden_dim": self.hidden_dim,
            "feature_tap": self.feature_tap,
        }


_GUESSERS = ("student", "teacher")


@register_objective
class FixMatch(Objective):
    """FixMatch (Sohn et al., 2020), a semi-supervised baseline of study 003.

    ``image`` is the weak view, ``view2`` the strong view (the data layer makes both). Labeled examples: CE on
    the weak view. Unlabeled: the argmax of the guess on the weak view becomes the target of the strong view
    where the guess is at least ``threshold`` confident. See :func:`kd_keras.engine.losses.fixmatch_loss`.

    Args:
        threshold: confidence threshold ``tau``.
        lambda_u: weight of the unlabeled term.
        guess_with: ``"student"`` (FixMatch: the model is its own teacher, no gradient through the guess) or
            ``"teacher"`` (the Distiller's teacher, e.g. its EMA copy of the student: ``ema_decay=0.999``).
    """

    name = "fixmatch"
    terms = ("hard", "consistency")

    def __init__(
        self, threshold: float = 0.95, lambda_u: float = 1.0, guess_with: str = "student", task: str = "auto"
    ):
        super().__init__(task)
        if guess_with not in _GUESSERS:
            raise ValueError(f"{self.name}: guess_with must be one of {_GUESSERS}, got {guess_with!r}")
        self.threshold, self.lambda_u, self.guess_with = float(threshold), float(lambda_u), guess_with

    @property
    def needs_teacher(self):
        return self.guess_with == "teacher"

    @property
    def required_keys(self):
        return (schema.VIEW2,)

    def compute(self, batch, ctx):
        b = tf.shape(batch[schema.IMAGE])[0]
        both = ctx.student(tf.concat([batch[schema.IMAGE], batch[schema.VIEW2]], 0))
        weak, strong = both[:b], both[b:]
        guess = ctx.teacher_logits() if self.guess_with == "teacher" else None
        loss = losses.fixmatch_loss(
            _labels(batch), _labeled(batch), weak, strong, self.threshold, self.lambda_u, self.task, guess
        )
        mask = _labeled(batch)
        hard = losses.hard_label_cross_entropy(_labels(batch), weak, self.task) * mask
        return ObjectiveOutput(loss, weak, {"hard": hard, "consistency": loss - hard})

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "lambda_u": self.lambda_u,
            "guess_with": self.guess_with,
        }


@register_objective
class MixMatch(Objective):
    """MixMatch (Berthelot et al., 2019), a semi-supervised baseline of study 003.

    Per step: the label of each unlabeled example is guessed as the mean prediction over its views (``image``
    and ``view2`` when present; the student in inference mode, or the teacher), sharpened with
    ``sharpen_temperature``; labeled examples keep their one-hot label. Every view of every example is then
    mixed (MixUp, ``lambda ~ Beta(alpha, alpha)``, ``lambda' = max(lambda, 1 - lambda)``) with a partner drawn
    from the **global** batch, and the student is trained on the mixes: CE for entries whose own example is
    labeled, ``lambda_u`` times the squared error of probabilities for the others.

    Randomness (partners and lambdas) is stateless, keyed by ``seed``, the optimizer step and the example's
    position in the global batch, so a step gives the same result on 1 or N replicas and after a resume.

    Args:
        sharpen_temperature: ``T`` of the sharpening.
        alpha: Beta parameter of MixUp.
        lambda_u: weight of the unlabeled term (MixMatch used 75 on CIFAR-10).
        rampup_steps: ``lambda_u`` grows linearly from 0 over this many optimizer steps (0: no ramp-up).
        guess_with: ``"student"`` or ``"teacher"`` (e.g. an EMA teacher).
        seed: seed of the mixing; ``None`` draws one from Python's ``random`` (seeded by ``seed_everything``).
    """

    name = "mixmatch"
    terms = ("hard", "consistency")

    def __init__(
        self,
        sharpen_temperature: float = 0.5,
        alpha: float = 0.75,
        lambda_u: float = 75.0,
        rampup_steps: int = 0,
        guess_with: str = "student",
        seed: int | None = None,
        task: str = "auto",
    ):
        super().__init__(task)
        if guess_with not in _GUESSERS:
            raise ValueError(f"{self.name}: guess_with must be one of {_GUESSERS}, got {guess_with!r}")
        if alpha <= 0:
            raise ValueError(f"{self.name}: alpha must be > 0, got {alpha}")
        self.sharpen_temperature, self.alpha = float(sharpen_temperature), float(alpha)
        self.lambda_u, self.rampup_steps, self.guess_with = float(lambda_u), int(rampup_steps), guess_with
        self.seed = random.randrange(2**31) if seed is None else int(seed)

    @property
    def needs_teacher(self):
        return self.guess_with == "teacher"

    def _guess(self, views, ctx):
        if self.guess_with == "teacher":
            guesses = [ctx.teacher_logits()] + [ctx.teacher(v) for v in views[1:]]
        else:
            guesses = [tf.stop_gradient(ctx.student(v, training=False)) for v in views]
        probs = tf.add_n([losses.temperature_probabilities(g, 1.0, self.task) for g in guesses]) / len(views)
        return losses.sharpen(probs, self.sharpen_temperature), guesses[0]

    def _mixup(self, images, targets, ctx, view_index):
        """Mix the local entries with partners from the global batch; randomness keyed by global position."""
        all_images, all_targets = ctx.all_gather(images), ctx.all_gather(targets)
        n = tf.shape(all_images)[0]
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(ctx.step, tf.int64) * 16 + view_index])
        partner = tf.argsort(tf.random.stateless_uniform([n], seed=seed))
        gamma = tf.random.stateless_gamma([2, n], seed=seed + [0, 1], alpha=self.alpha)
        lam = gamma[0] / (gamma[0] + gamma[1])  # Beta(alpha, alpha)
        lam = tf.maximum(lam, 1.0 - lam)
        rows = ctx.replica_offset + tf.range(tf.shape(images)[0])
        own_lam, own_partner = tf.gather(lam, rows), tf.gather(partner, rows)
        mixed_images = own_lam[:, None, None, None] * images + (
            1.0 - own_lam[:, None, None, None]
        ) * tf.gather(all_images, own_partner)
        mixed_targets = own_lam[:, None, None] * targets + (1.0 - own_lam[:, None, None]) * tf.gather(
            all_targets, own_partner
        )
        return mixed_images, mixed_targets

    def compute(self, batch, ctx):
        views = [tf.cast(batch[schema.IMAGE], tf.float32)]
        if schema.VIEW2 in batch:
            views.append(tf.cast(batch[schema.VIEW2], tf.float32))
        guessed, clean_logits = self._guess(views, ctx)
        task = losses.resolve_task(self.task, clean_logits)
        mask = _labeled(batch)[:, None, None]
        targets = (
            mask * losses.hard_targets(_labels(batch), task, clean_logits.shape[-1]) + (1 - mask) * guessed
        )
        targets = tf.stop_gradient(targets)
        lambda_u = self.lambda_u
        if self.rampup_steps > 0:
            lambda_u *= tf.minimum(1.0, tf.cast(ctx.step, tf.float32) / self.rampup_steps)
        per_view, hard_views = [], []
        for index, view in enumerate(views):
            mixed_images, mixed_targets = self._mixup(view, targets, ctx, index)
            logits = losses.class_logits(ctx.student(mixed_images), task)
            per_view.append(losses.mixmatch_loss(mixed_targets, logits, _labeled(batch), lambda_u))
            hard_views.append(losses.soft_cross_entropy(mixed_targets, logits) * _labeled(batch))
        loss = tf.add_n(per_view) / len(views)
        hard = tf.add_n(hard_views) / len(views)
        return ObjectiveOutput(loss, clean_logits, {"hard": hard, "consistency": loss - hard})

    def get_config(self):
        return {
            **super().get_config(),
            "sharpen_temperature": self.sharpen_temperature,
            "alpha": self.alpha,
            "lambda_u": self.lambda_u,
            "rampup_steps": self.rampup_steps,
            "guess_with": self.guess_with,
            "seed": self.seed,
        }
