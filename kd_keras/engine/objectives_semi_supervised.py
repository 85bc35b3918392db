"""Objectives that learn from unlabeled images without a trained teacher: ``simclr`` (self-supervised
pretraining), ``fixmatch`` and ``mixmatch`` (semi-supervised; an EMA teacher may make the guesses).

Example:

```python
from kd_keras.engine.objectives_semi_supervised import FixMatch

objective = FixMatch(threshold=0.95, lambda_u=1.0)  # batches need "image" (weak) and "view2" (strong)
```
"""

from __future__ import annotations

import random

import keras
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import losses
from kd_keras.engine.objective_base import (
    Objective,
    ObjectiveOutput,
    batch_labeled,
    batch_labels,
    register_objective,
)


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
REDUCTIONS = ("batch", "per_stream")


def _check_reduction(name: str, reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def per_stream_weights(labeled: tf.Tensor, ctx) -> tf.Tensor:
    """Per-example weights that turn the Distiller's ``sum / global batch`` into the papers' ``mean over the
    labeled examples + mean over the unlabeled ones`` (FixMatch's ``l_s + lambda_u l_u`` with denominators ``B``
    and ``mu B``; MixMatch's ``L_X + lambda_u L_U``).

    The counts are global (gathered over replicas), so a step weighs the same on 1 or N replicas; a batch without
    labeled (or unlabeled) examples gives that side weight 0 instead of dividing by zero.

    Args:
        labeled: ``(batch,)`` 1/0 mask of this replica's examples.
        ctx: the step's :class:`~kd_keras.engine.step_context.StepContext`.

    Returns:
        ``(batch,)``: ``N / N_labeled`` for labeled examples, ``N / N_unlabeled`` for the others.
    """
    labeled = tf.reshape(tf.cast(labeled, tf.float32), [-1])
    total = ctx.global_batch_size
    n_labeled = tf.reduce_sum(ctx.all_gather(labeled))
    return labeled * tf.math.divide_no_nan(total, n_labeled) + (1.0 - labeled) * tf.math.divide_no_nan(
        total, total - n_labeled
    )


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
        reduction: ``"batch"``: every example counts once in the batch mean (a batch that mixes labeled and
            unlabeled examples in the data's proportion); ``"per_stream"``: FixMatch's ``l_s + lambda_u l_u``,
            the mean over the labeled examples plus ``lambda_u`` times the mean over the unlabeled ones (the
            paper's separate batches of ``B`` labeled and ``mu B`` unlabeled examples,
            :func:`kd_keras.data.pipeline.make_two_stream_dataset`).
    """

    name = "fixmatch"
    terms = ("hard", "consistency")

    def __init__(
        self,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        guess_with: str = "student",
        reduction: str = "batch",
        task: str = "auto",
    ):
        super().__init__(task)
        if guess_with not in _GUESSERS:
            raise ValueError(f"{self.name}: guess_with must be one of {_GUESSERS}, got {guess_with!r}")
        self.threshold, self.lambda_u, self.guess_with = float(threshold), float(lambda_u), guess_with
        self.reduction = _check_reduction(self.name, reduction)

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
            batch_labels(batch), batch_labeled(batch), weak, strong, self.threshold, self.lambda_u, self.task, guess
        )
        mask = batch_labeled(batch)
        hard = losses.hard_label_cross_entropy(batch_labels(batch), weak, self.task) * mask
        if self.reduction == "per_stream":
            weights = per_stream_weights(mask, ctx)
            loss, hard = loss * weights, hard * weights
        return ObjectiveOutput(loss, weak, {"hard": hard, "consistency": loss - hard})

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "lambda_u": self.lambda_u,
            "guess_with": self.guess_with,
            "reduction": self.reduction,
        }


@register_objective
class MixMatch(Objective):
    """MixMatch (Berthelot et al., 2019), a semi-supervised baseline of study 003.

    Per step: the label of each unlabeled example is guessed as the mean prediction over its views (``image``
    and ``view2`` when present; the student in the step's mode, or the teacher), sharpened with
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
        reduction: ``"batch"`` (every mixed entry counts once in the batch mean) or ``"per_stream"``
            (MixMatch's ``L_X + lambda_u L_U``: the mean over the labeled entries plus ``lambda_u`` times the
            mean over the unlabeled ones, for separate labeled and unlabeled batches; see :class:`FixMatch`).

    Without a ramp-up a large ``lambda_u`` lets the guesses of an untrained model dominate from the first step
    and the model can collapse to one class (tests/test_semi_supervised_known_outcome.py); MixMatch ramps
    ``lambda_u`` up over its first 16,000 steps.
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
        reduction: str = "batch",
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
        self.reduction = _check_reduction(self.name, reduction)

    @property
    def needs_teacher(self):
        return self.guess_with == "teacher"

    def _guess(self, views, ctx):
        if self.guess_with == "teacher":
            guesses = [ctx.teacher_logits()] + [ctx.teacher(v) for v in views[1:]]
        else:
            # The step's own mode, as the reference implementation (google-research/mixmatch, classifier(y,
            # training=True)): in inference mode the guesses would come from BatchNorm moving averages that a
            # few hundred steps leave near their initial values, unrelated to what the model predicts, and
            # lambda_u = 100 then trains the model towards them (test AUC 44 on real X-rays, docs/simclr_cxr.md).
            guesses = [tf.stop_gradient(ctx.student(v)) for v in views]
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
        mask = batch_labeled(batch)[:, None, None]
        targets = (
            mask * losses.hard_targets(batch_labels(batch), task, clean_logits.shape[-1]) + (1 - mask) * guessed
        )
        targets = tf.stop_gradient(targets)
        lambda_u = self.lambda_u
        if self.rampup_steps > 0:
            lambda_u *= tf.minimum(1.0, tf.cast(ctx.step, tf.float32) / self.rampup_steps)
        per_view, hard_views = [], []
        for index, view in enumerate(views):
            mixed_images, mixed_targets = self._mixup(view, targets, ctx, index)
            logits = losses.class_logits(ctx.student(mixed_images), task)
            per_view.append(losses.mixmatch_loss(mixed_targets, logits, batch_labeled(batch), lambda_u))
            hard_views.append(losses.soft_cross_entropy(mixed_targets, logits) * batch_labeled(batch))
        loss = tf.add_n(per_view) / len(views)
        hard = tf.add_n(hard_views) / len(views)
        if self.reduction == "per_stream":
            weights = per_stream_weights(batch_labeled(batch), ctx)
            loss, hard = loss * weights, hard * weights
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
            "reduction": self.reduction,
        }
