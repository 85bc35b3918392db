"""The ``keras_distillation`` objective: a ``keras.distillation.DistillationLoss`` inside the Distiller.

Values are computed by hand with NumPy (softmax, KL, cross-entropy) on tiny batches, both through the objective
with a fake step context and through a real ``Distiller`` training step."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.distillation import FeatureDistillation, LogitsDistillation

from kd_keras.data import schema
from kd_keras.engine import Distiller, get_objective, list_objectives
from kd_keras.engine.objectives import from_keras_distillation_loss

TEACHER = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
STUDENT = np.array([[0.5, 1.5, 0.0], [1.0, -0.5, 0.5]], np.float32)
LABELS = np.array([0, 2], np.int32)
SIZE = 8


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def hinton_kd(teacher, student, temperature):
    """Per-example ``T^2 KL(softmax(t/T) || softmax(s/T))``."""
    p, q = softmax(teacher / temperature), softmax(student / temperature)
    return temperature**2 * np.sum(p * np.log(p / q), axis=-1)


def cross_entropy(student, labels):
    return -np.log(softmax(student)[np.arange(len(labels)), labels])


class FakeContext:
    """The part of the step context the objective uses, returning fixed tensors."""

    training = True

    def __init__(self, student, teacher, student_taps=None, teacher_taps=None):
        self._student, self._teacher = tf.constant(student), tf.constant(teacher)
        self._student_taps, self._teacher_taps = student_taps, teacher_taps

    def student(self, images, taps=(), training=None):
        if taps:
            return self._student, [tf.constant(self._student_taps)]
        return self._student

    def teacher_logits(self):
        return self._teacher

    def teacher_outputs(self, taps):
        return self._teacher, [tf.constant(self._teacher_taps)]


def fake_batch(labels, labeled):
    n = len(labels)
    return {
        schema.IMAGE: tf.zeros((n, SIZE, SIZE, 1)),
        schema.LABEL: tf.constant(labels),
        schema.LABELED: tf.constant(labeled, tf.float32),
    }


def test_logits_distillation_with_kl_instance_is_hintons_loss():
    temperature, alpha = 2.0, 0.3
    objective = from_keras_distillation_loss(
        LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence()), alpha=alpha
    )
    labeled = np.array([1.0, 0.0], np.float32)
    out = objective.compute(fake_batch(LABELS, labeled), FakeContext(STUDENT, TEACHER))
    kd_mean = hinton_kd(TEACHER, STUDENT, temperature).mean()
    assert kd_mean == pytest.approx(0.8542986, rel=1e-5)  # the value the module docstring quotes
    ce = cross_entropy(STUDENT, LABELS) * labeled
    np.testing.assert_allclose(out.loss.numpy(), alpha * ce + (1 - alpha) * kd_mean, rtol=1e-5)
    np.testing.assert_allclose(out.terms["distillation"].numpy(), [kd_mean, kd_mean], rtol=1e-5)
    np.testing.assert_allclose(out.terms["hard"].numpy(), ce, rtol=1e-5)
    # Same batch mean as the library's own Hinton objective.
    hinton = get_objective("hinton", alpha=alpha, temperature=temperature)
    reference = hinton.compute(fake_batch(LABELS, labeled), FakeContext(STUDENT, TEACHER))
    assert float(tf.reduce_mean(out.loss)) == pytest.approx(float(tf.reduce_mean(reference.loss)), rel=1e-5)


def test_logits_distillation_default_string_loss_is_not_hintons_and_warns():
    default = LogitsDistillation(temperature=2.0)  # loss="kl_divergence": the plain function
    raw = float(default.compute_loss(TEACHER, STUDENT))
    assert raw == pytest.approx(5.1052041, rel=1e-5)  # vs 0.854: no softmax, no T^2
    assert abs(raw - hinton_kd(TEACHER, STUDENT, 2.0).mean()) > 1.0
    with pytest.warns(UserWarning, match="skips the softmax and the T\\^2 factor"):
        from_keras_distillation_loss(default)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_keras_distillation_loss(LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence()))


def test_binary_one_logit_head_is_passed_as_two_logits():
    teacher, student = np.array([[1.5], [-0.5]], np.float32), np.array([[0.2], [0.7]], np.float32)
    labels = np.array([1, 0], np.int32)
    objective = get_objective("keras_distillation", alpha=0.5,
                              loss=LogitsDistillation(temperature=3.0, loss=keras.losses.KLDivergence()))
    out = objective.compute(fake_batch(labels, np.ones(2, np.float32)), FakeContext(student, teacher))
    pair = lambda z: np.concatenate([np.zeros_like(z), z], -1)  # noqa: E731
    kd_mean = hinton_kd(pair(teacher), pair(student), 3.0).mean()
    sigmoid = 1 / (1 + np.exp(-student[:, 0]))
    ce = -(labels * np.log(sigmoid) + (1 - labels) * np.log(1 - sigmoid))
    assert kd_mean > 0
    np.testing.assert_allclose(out.loss.numpy(), 0.5 * ce + 0.5 * kd_mean, rtol=1e-5)


def test_feature_distillation_reads_the_named_layers_as_taps():
    rng = np.random.default_rng(0)
    s_map, t_map = rng.normal(size=(2, 2, 2, 3)).astype("float32"), rng.normal(size=(2, 2, 2, 3)).astype("float32")
    objective = from_keras_distillation_loss(
        FeatureDistillation(loss="mse", teacher_layer_name="stage2", student_layer_name="stage2"), alpha=0.0
    )
    assert objective.student_taps == ("stage2",) and objective.teacher_taps == ("stage2",)
    out = objective.compute(fake_batch(LABELS, np.ones(2, np.float32)),
                            FakeContext(STUDENT, TEACHER, s_map, t_map))
    np.testing.assert_allclose(out.loss.numpy(), [np.mean((s_map - t_map) ** 2)] * 2, rtol=1e-5)


def test_config_round_trips_through_get_objective():
    assert "keras_distillation" in list_objectives()
    for loss in (
        LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence()),
        FeatureDistillation(loss="mse", teacher_layer_name="stage2", student_layer_name="stage1"),
    ):
        objective = from_keras_distillation_loss(loss, alpha=0.25, task="multiclass")
        config = objective.get_config()
        rebuilt = get_objective({"name": "keras_distillation", **config})
        assert rebuilt.get_config() == config
        assert type(rebuilt.loss) is type(loss) and rebuilt.loss is not loss
        assert rebuilt.alpha == 0.25 and rebuilt.task == "multiclass"
    rebuilt = get_objective({"name": "keras_distillation", **from_keras_distillation_loss(
        LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence()), alpha=0.3).get_config()})
    out = rebuilt.compute(fake_batch(LABELS, np.ones(2, np.float32)), FakeContext(STUDENT, TEACHER))
    expected = 0.3 * cross_entropy(STUDENT, LABELS) + 0.7 * hinton_kd(TEACHER, STUDENT, 2.0).mean()
    np.testing.assert_allclose(out.loss.numpy(), expected, rtol=1e-5)
    assert rebuilt.loss.temperature == 2.0
    default = get_objective("keras_distillation")
    assert isinstance(default.loss.loss, keras.losses.KLDivergence) and default.loss.temperature == 4.0


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="alpha must be in"):
        get_objective("keras_distillation", alpha=1.5)
    with pytest.raises(TypeError, match="DistillationLoss"):
        get_objective("keras_distillation", loss=keras.losses.KLDivergence())


def tiny_model(name, seed):
    init = lambda i: keras.initializers.GlorotUniform(seed=seed * 10 + i)  # noqa: E731
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage1", kernel_initializer=init(1))(h)
    f = keras.layers.GlobalAveragePooling2D(name="features")(h)
    out = keras.layers.Dense(3, name="logits", kernel_initializer=init(2))(f)
    return keras.Model(x, out, name=name)


def test_distiller_train_step_reports_the_hand_computed_loss():
    student, teacher = tiny_model("student", 1), tiny_model("teacher", 2)
    rng = np.random.default_rng(3)
    n, alpha, temperature = 6, 0.4, 3.0
    batch = {
        schema.IMAGE: rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32"),
        schema.LABEL: rng.integers(0, 3, n).astype("int32"),
        schema.LABELED: (np.arange(n) % 2).astype("float32"),
    }
    s = student.predict(batch[schema.IMAGE], verbose=0)
    t = teacher.predict(batch[schema.IMAGE], verbose=0)
    ce = np.array([-math.log(softmax(s[i])[batch[schema.LABEL][i]]) for i in range(n)]) * batch[schema.LABELED]
    expected = np.mean(alpha * ce + (1 - alpha) * hinton_kd(t, s, temperature).mean())

    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(0.0),
        objective=from_keras_distillation_loss(
            LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence()), alpha=alpha
        ),
    )
    stream = tf.data.Dataset.from_tensor_slices(batch).batch(n)
    logs = {k: v[-1] for k, v in distiller.fit(stream, epochs=1, verbose=0).history.items()}
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert logs["distillation"] == pytest.approx(hinton_kd(t, s, temperature).mean(), rel=1e-5)
