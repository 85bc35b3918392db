"""One ``Distiller.train_step`` per objective against a loss computed by hand in NumPy.

The models are linear and tiny (4x4 grey images -> [-1, 1] -> 1x1 conv "stage1" -> flatten "features" -> Dense "logits",
with fixed weights), so every logit, feature map and loss below is plain NumPy arithmetic, independent of the
library's loss functions. The step runs with SGD at learning rate 0, so the reported loss is the loss of the
weights the test used. Objectives with such a test elsewhere: hinton, conditional, pseudo_label (one-logit),
noisy_student (soft), attention_transfer, simclr (tests/test_distiller.py), keras_distillation
(tests/test_objective_adapter.py).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import Distiller, get_objective

SIZE, CLASSES, N = 4, 3, 8


def linear_model(name: str, channels: int, seed: int) -> keras.Model:
    """image -> [-1, 1] -> 1x1 conv ("stage1", linear) -> flatten ("features") -> Dense ("logits")."""
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    h = keras.layers.Conv2D(channels, 1, name="stage1")(h)
    f = keras.layers.Flatten(name="features")(h)
    out = keras.layers.Dense(CLASSES, name="logits")(f)
    model = keras.Model(x, out, name=name)
    rng = np.random.default_rng(seed)
    model.set_weights([(rng.normal(size=w.shape) * 0.5).astype("float32") for w in model.get_weights()])
    return model


def np_stage1(model: keras.Model, images: np.ndarray) -> np.ndarray:
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("stage1").get_weights())
    return (images.astype(np.float64) / 127.5 - 1.0) * kernel[0, 0, 0] + bias  # (n, 4, 4, 1) * (C,) -> (n, 4, 4, C)


def np_logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("logits").get_weights())
    return np_stage1(model, images).reshape(len(images), -1) @ kernel + bias


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    return np.log(softmax(z))


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES)[labels]


def between(values: np.ndarray) -> float:
    """A threshold halfway between the two middle values (not on a value, where float32 rounding would decide)."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        schema.IMAGE: rng.uniform(0, 255, (N, SIZE, SIZE, 1)).astype("float32"),
        schema.VIEW2: rng.uniform(0, 255, (N, SIZE, SIZE, 1)).astype("float32"),
        schema.LABEL: rng.integers(0, CLASSES, N).astype("int32"),
        schema.LABELED: np.array([1, 0, 1, 0, 0, 1, 0, 0], dtype="float32"),
    }


def one_step(distiller: Distiller, batch: dict) -> dict[str, float]:
    stream = tf.data.Dataset.from_tensor_slices(batch).batch(N)
    history = distiller.fit(stream, epochs=1, verbose=0, shuffle=False)
    return {k: v[-1] for k, v in history.history.items()}


def run(objective, batch, student, teacher=None) -> dict[str, float]:
    distiller = Distiller(student, teacher)
    distiller.compile(keras.optimizers.SGD(0.0), objective=objective)
    return one_step(distiller, batch)


def test_the_numpy_model_is_the_keras_model():
    student, batch = linear_model("student", 2, seed=1), make_batch()
    np.testing.assert_allclose(
        np_logits(student, batch[schema.IMAGE]), student.predict(batch[schema.IMAGE], verbose=0), rtol=1e-5
    )
    assert np.ptp(np_logits(student, batch[schema.IMAGE]).argmax(1)) > 0, "logits should not all agree"


def test_hard_label_step_averages_labeled_cross_entropy_over_the_whole_batch():
    student, batch = linear_model("student", 2, seed=1), make_batch()
    s = np_logits(student, batch[schema.IMAGE])
    ce = -np.sum(one_hot(batch[schema.LABEL]) * log_softmax(s), 1)
    expected = np.sum(ce * batch[schema.LABELED]) / N  # unlabeled examples count in the denominator
    assert run("hard_label", batch, student)["loss"] == pytest.approx(expected, rel=1e-5)


def test_soft_target_student_teacher_is_ce_plus_alpha_t2_kl_not_the_convex_form():
    student, teacher, batch = linear_model("student", 2, 1), linear_model("teacher", 3, 2), make_batch()
    s, t = np_logits(student, batch[schema.IMAGE]), np_logits(teacher, batch[schema.IMAGE])
    alpha, temp = 1.5, 3.0
    ce = -np.sum(one_hot(batch[schema.LABEL]) * log_softmax(s), 1) * batch[schema.LABELED]
    p = softmax(t / temp)
    kl = np.sum(p * (np.log(p) - log_softmax(s / temp)), 1)
    expected = np.mean(ce + alpha * temp**2 * kl)
    logs = run(get_objective("soft_target_student_teacher", alpha=alpha, temperature=temp), batch, student, teacher)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["soft"] == pytest.approx(np.mean(temp**2 * kl), rel=1e-5)
    assert logs["loss"] != pytest.approx(np.mean(alpha * ce + (1 - alpha) * temp**2 * kl), rel=1e-3)


def test_pseudo_label_multiclass_argmax_of_the_teacher_on_unlabeled_examples():
    student, teacher, batch = linear_model("student", 2, 1), linear_model("teacher", 3, 2), make_batch(seed=1)
    s, t = np_logits(student, batch[schema.IMAGE]), np_logits(teacher, batch[schema.IMAGE])
    labeled = batch[schema.LABELED][:, None]
    targets = labeled * one_hot(batch[schema.LABEL]) + (1 - labeled) * one_hot(t.argmax(1))
    expected = np.mean(-np.sum(targets * log_softmax(s), 1))
    assert run("pseudo_label", batch, student, teacher)["loss"] == pytest.approx(expected, rel=1e-5)


class FlipWidth(keras.layers.Layer):
    """A deterministic stand-in for the student's augmentation."""

    def call(self, x, training=False):
        return x[:, :, ::-1, :] if training else x


def test_noisy_student_hard_pseudo_labels_with_min_confidence():
    student, teacher, batch = linear_model("student", 2, 1), linear_model("teacher", 3, 2), make_batch(seed=2)
    images = batch[schema.IMAGE]
    s_noisy, t_clean = np_logits(student, images[:, :, ::-1, :]), np_logits(teacher, images)
    confidence = softmax(t_clean).max(1)
    unlabeled = batch[schema.LABELED] == 0
    min_confidence = between(confidence[unlabeled])  # some unlabeled examples in, some out
    labeled = batch[schema.LABELED][:, None]
    targets = labeled * one_hot(batch[schema.LABEL]) + (1 - labeled) * one_hot(t_clean.argmax(1))
    weight = np.where(unlabeled, confidence >= min_confidence, 1.0)
    expected = np.mean(-np.sum(targets * log_softmax(s_noisy), 1) * weight)
    objective = get_objective(
        "noisy_student", student_augmentation=FlipWidth(), soft=False, min_confidence=min_confidence
    )
    assert run(objective, batch, student, teacher)["loss"] == pytest.approx(expected, rel=1e-5)


def fixmatch_expected(batch, weak, strong, guess, threshold, lambda_u):
    probs = softmax(guess)
    confident = probs.max(1) >= threshold
    unsup = confident * -np.sum(one_hot(probs.argmax(1)) * log_softmax(strong), 1)
    sup = -np.sum(one_hot(batch[schema.LABEL]) * log_softmax(weak), 1)
    labeled = batch[schema.LABELED]
    return np.mean(labeled * sup + (1 - labeled) * lambda_u * unsup), confident


def test_fixmatch_step_guesses_on_the_weak_view_and_trains_the_strong_view_above_the_threshold():
    student, batch = linear_model("student", 2, 1), make_batch(seed=3)
    weak, strong = np_logits(student, batch[schema.IMAGE]), np_logits(student, batch[schema.VIEW2])
    threshold = between(softmax(weak).max(1)[batch[schema.LABELED] == 0])
    expected, confident = fixmatch_expected(batch, weak, strong, weak, threshold, lambda_u=2.0)
    unlabeled = batch[schema.LABELED] == 0
    assert 0 < confident[unlabeled].sum() < unlabeled.sum(), "the threshold should split the unlabeled examples"
    logs = run(get_objective("fixmatch", threshold=threshold, lambda_u=2.0), batch, student)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    hard = np.mean(batch[schema.LABELED] * -np.sum(one_hot(batch[schema.LABEL]) * log_softmax(weak), 1))
    assert logs["hard"] == pytest.approx(hard, rel=1e-5)


def test_fixmatch_with_a_teacher_guess():
    student, teacher, batch = linear_model("student", 2, 1), linear_model("teacher", 3, 2), make_batch(seed=4)
    weak, strong = np_logits(student, batch[schema.IMAGE]), np_logits(student, batch[schema.VIEW2])
    guess = np_logits(teacher, batch[schema.IMAGE])
    expected, _ = fixmatch_expected(batch, weak, strong, guess, threshold=0.6, lambda_u=1.0)
    student_guess, _ = fixmatch_expected(batch, weak, strong, weak, threshold=0.6, lambda_u=1.0)
    assert expected != pytest.approx(student_guess, rel=1e-3), "the teacher's guess should matter"
    objective = get_objective("fixmatch", threshold=0.6, guess_with="teacher")
    assert run(objective, batch, student, teacher)["loss"] == pytest.approx(expected, rel=1e-5)


def test_fitnets_step_is_ce_plus_hint_mse_through_the_regressor():
    student, teacher, batch = linear_model("student", 2, 1), linear_model("teacher", 3, 2), make_batch(seed=5)
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(0.0),
        objective=get_objective("fitnets", student_tap="stage1", teacher_tap="stage1", hint_weight=0.7, ce_weight=0.4),
    )
    kernel, bias = (w.astype(np.float64) for w in distiller.objective.regressor.get_weights())
    assert kernel.shape == (1, 1, 2, 3)
    regressed = np_stage1(student, batch[schema.IMAGE]) @ kernel[0, 0] + bias
    hint = np.mean((regressed - np_stage1(teacher, batch[schema.IMAGE])) ** 2, axis=(1, 2, 3))
    s = np_logits(student, batch[schema.IMAGE])
    ce = -np.sum(one_hot(batch[schema.LABEL]) * log_softmax(s), 1) * batch[schema.LABELED]
    logs = one_step(distiller, batch)
    assert logs["loss"] == pytest.approx(np.mean(0.4 * ce + 0.7 * hint), rel=1e-5)
    assert logs["hint"] == pytest.approx(np.mean(hint), rel=1e-5)


def mixup_draws(seed: int, step: int, view: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The partners and raw Beta(alpha, alpha) draws MixMatch makes for one view (its stateless draws, keyed by
    seed, step and view), before ``max(lam, 1 - lam)``."""
    key = tf.constant([seed, step * 16 + view], tf.int64)
    partner = tf.argsort(tf.random.stateless_uniform([N], seed=key)).numpy()
    gamma = tf.random.stateless_gamma([2, N], seed=key + [0, 1], alpha=alpha).numpy().astype(np.float64)
    return partner, gamma[0] / (gamma[0] + gamma[1])


def mixmatch_expected(student, batch, seed, alpha, lambda_u, temperature, keep_larger=True, forward=np_logits,
                      guess_forward=None):
    views = [batch[schema.IMAGE], batch[schema.VIEW2]]
    guess = np.mean([softmax((guess_forward or forward)(student, v)) for v in views], axis=0)
    sharpened = guess ** (1 / temperature)
    sharpened /= sharpened.sum(1, keepdims=True)
    labeled = batch[schema.LABELED]
    targets = labeled[:, None] * one_hot(batch[schema.LABEL]) + (1 - labeled[:, None]) * sharpened
    per_view = []
    for index, images in enumerate(views):
        partner, lam = mixup_draws(seed, 0, index, alpha)
        lam = np.maximum(lam, 1 - lam) if keep_larger else np.minimum(lam, 1 - lam)
        mixed_images = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[partner]
        mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
        logits = forward(student, mixed_images)
        ce = -np.sum(mixed_targets * log_softmax(logits), 1)
        squared = np.mean((mixed_targets - softmax(logits)) ** 2, 1)
        per_view.append(labeled * ce + (1 - labeled) * lambda_u * squared)
    return np.mean(np.mean(per_view, axis=0))


def test_mixmatch_step_mixes_with_the_larger_lambda():
    student, batch = linear_model("student", 2, 1), make_batch(seed=6)
    seed, alpha, lambda_u, temperature = 11, 0.75, 3.0, 0.5
    for view in (0, 1):
        partner, lam = mixup_draws(seed, 0, view, alpha)
        assert np.any(partner != np.arange(N)), "some example must get another partner"
        assert np.any(np.abs(lam - 0.5) > 0.1), "some draw must be far from 1/2"
    expected = mixmatch_expected(student, batch, seed, alpha, lambda_u, temperature)
    smaller = mixmatch_expected(student, batch, seed, alpha, lambda_u, temperature, keep_larger=False)
    assert expected != pytest.approx(smaller, rel=1e-2), "max(lam, 1 - lam) must be observable"
    objective = get_objective("mixmatch", seed=seed, alpha=alpha, lambda_u=lambda_u, sharpen_temperature=temperature)
    assert run(objective, batch, student)["loss"] == pytest.approx(expected, rel=1e-5)


def batchnorm_model(seed: int) -> keras.Model:
    """image -> [-1, 1] -> flatten -> BatchNormalization ("bn", moving statistics at their initial 0 and 1) ->
    Dense ("logits"): a model whose training-mode and inference-mode outputs differ, as after a few steps."""
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(x))
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(x, keras.layers.Dense(CLASSES, name="logits")(h), name="bn_student")
    rng = np.random.default_rng(seed)
    gamma = model.get_layer("bn").get_weights()[0]
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                                       (rng.normal(size=gamma.shape) * 0.3).astype("float32"),
                                       np.zeros_like(gamma), np.ones_like(gamma)])
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([(rng.normal(size=kernel.shape) * 0.5).astype("float32"), bias])
    return model


def np_batchnorm_logits(model: keras.Model, images: np.ndarray, training: bool) -> np.ndarray:
    """The BatchNorm model in NumPy: in training mode normalised with the call's own batch mean and (biased)
    variance, in inference mode with the moving statistics."""
    gamma, beta, mean, variance = (w.astype(np.float64) for w in model.get_layer("bn").get_weights())
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("logits").get_weights())
    features = (images.astype(np.float64) / 127.5 - 1.0).reshape(len(images), -1)
    if training:
        mean, variance = features.mean(0), features.var(0)
    normalised = (features - mean) / np.sqrt(variance + model.get_layer("bn").epsilon) * gamma + beta
    return normalised @ kernel + bias


def test_mixmatch_guesses_labels_in_the_steps_training_mode():
    """As the reference (google-research/mixmatch guesses with ``classifier(y, training=True)``): with BatchNorm
    the guesses of a training step use each view's batch statistics, not the moving averages, which early in
    training still hold their initial values (inference-mode guesses left MixMatch at a test AUC of 44 on real
    X-rays, docs/simclr_cxr.md)."""
    student, batch = batchnorm_model(seed=3), make_batch(seed=8)
    seed, alpha, lambda_u, temperature = 5, 0.75, 3.0, 0.5

    def training(model, images):
        return np_batchnorm_logits(model, images, training=True)

    def inference(model, images):
        return np_batchnorm_logits(model, images, training=False)

    expected = mixmatch_expected(student, batch, seed, alpha, lambda_u, temperature, forward=training)
    wrong = mixmatch_expected(student, batch, seed, alpha, lambda_u, temperature, forward=training,
                              guess_forward=inference)
    assert expected != pytest.approx(wrong, rel=1e-2), "the two modes must give different losses on this batch"
    objective = get_objective("mixmatch", seed=seed, alpha=alpha, lambda_u=lambda_u, sharpen_temperature=temperature)
    assert run(objective, batch, student)["loss"] == pytest.approx(expected, rel=1e-4)
