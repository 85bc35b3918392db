"""The Distiller: reported losses and gradients against hand computations, cached teacher logits, masks,
saving the student alone, EMA teacher, noisy student, NaN stop, objective registry. Tiny models, 16 px."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import (
    Distiller,
    NonFiniteLossError,
    StochasticDepth,
    StopOnNaN,
    get_objective,
    list_objectives,
    losses,
    seed_everything,
)

SIZE = 16


def tiny_model(name: str, classes: int = 3, channels: int = 4, seed: int = 0, dropout: float = 0.0):
    """A functional model following the zoo contract (input "image", taps "stage1"/"stage2", "features",
    "logits"), with seeded initialisers so two builds are identical."""
    init = lambda i: keras.initializers.GlorotUniform(seed=seed * 10 + i)  # noqa: E731
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(
        channels, 3, padding="same", activation="relu", name="stage1", kernel_initializer=init(1)
    )(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(
        channels, 3, padding="same", activation="relu", name="stage2", kernel_initializer=init(2)
    )(h)
    f = keras.layers.GlobalAveragePooling2D(name="features")(h)
    if dropout:
        f = keras.layers.Dropout(dropout, name="dropout")(f)
    out = keras.layers.Dense(classes, name="logits", kernel_initializer=init(3), bias_initializer="zeros")(f)
    return keras.Model(x, out, name=name)


def make_batch(n: int = 8, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        schema.IMAGE: rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32"),
        schema.VIEW2: rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32"),
        schema.LABEL: rng.integers(0, classes, n).astype("int32"),
        schema.LABELED: (np.arange(n) % 2).astype("float32"),
    }


def one_step(distiller: Distiller, batch: dict, **fit_kwargs) -> dict[str, float]:
    stream = tf.data.Dataset.from_tensor_slices(batch).batch(len(batch[schema.IMAGE]))
    history = distiller.fit(stream, epochs=1, verbose=0, shuffle=False, **fit_kwargs)
    return {k: v[-1] for k, v in history.history.items()}


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_hinton_step_reports_hand_computed_loss_and_applies_the_global_mean_gradient():
    student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2, channels=6)
    batch = make_batch()
    s, t = student.predict(batch[schema.IMAGE], verbose=0), teacher.predict(batch[schema.IMAGE], verbose=0)
    alpha, temp, lr = 0.3, 2.0, 0.5
    expected = []
    for i in range(len(s)):
        ce = -math.log(softmax(s[i])[batch[schema.LABEL][i]]) * batch[schema.LABELED][i]
        p, q = softmax(t[i] / temp), softmax(s[i] / temp)
        expected.append(alpha * ce + (1 - alpha) * temp**2 * float(np.sum(p * np.log(p / q))))
    # The gradient the step must apply: of the batch mean of the per-example losses.
    with tf.GradientTape() as tape:
        mean = tf.reduce_mean(
            losses.hinton_loss(
                batch[schema.LABEL],
                t,
                student(batch[schema.IMAGE]),
                alpha,
                temp,
                labeled=batch[schema.LABELED],
            )
        )
    gradients = tape.gradient(mean, student.trainable_weights)
    expected_weights = [
        w.numpy() - lr * g.numpy() for w, g in zip(student.trainable_weights, gradients, strict=True)
    ]
    teacher_before = [w.copy() for w in teacher.get_weights()]

    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(lr),
        metrics=["sparse_categorical_accuracy"],
        objective=get_objective("hinton", alpha=alpha, temperature=temp),
    )
    logs = one_step(distiller, batch)

    assert logs["loss"] == pytest.approx(np.mean(expected), rel=1e-5)
    for got, want in zip(student.trainable_weights, expected_weights, strict=True):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    for got, want in zip(teacher.get_weights(), teacher_before, strict=True):
        np.testing.assert_array_equal(got, want)
    labeled = batch[schema.LABELED] == 1
    accuracy = np.mean(np.argmax(s, 1)[labeled] == batch[schema.LABEL][labeled])
    assert logs["sparse_categorical_accuracy"] == pytest.approx(accuracy)


def test_cached_teacher_logits_replace_the_teacher():
    student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2)
    batch = make_batch()
    cached = np.random.default_rng(9).normal(size=(8, 3)).astype("float32") * 3
    s = student.predict(batch[schema.IMAGE], verbose=0)
    labeled = batch[schema.LABELED]
    ce = np.array([-math.log(softmax(s[i])[batch[schema.LABEL][i]]) for i in range(8)])
    p, q = softmax(cached / 4.0), softmax(s / 4.0)
    expected = np.mean(0.1 * ce * labeled + 0.9 * 16.0 * np.sum(p * np.log(p / q), 1))

    distiller = Distiller(student, teacher)  # has a teacher, but the batch's cache wins
    distiller.compile(keras.optimizers.SGD(0.0), objective="hinton")
    assert one_step(distiller, {**batch, schema.TEACHER_LOGITS: cached})["loss"] == pytest.approx(
        expected, rel=1e-5
    )

    no_teacher = Distiller(tiny_model("student", seed=1))
    no_teacher.compile(keras.optimizers.SGD(0.0), objective="hinton")
    assert one_step(no_teacher, {**batch, schema.TEACHER_LOGITS: cached})["loss"] == pytest.approx(
        expected, rel=1e-5
    )
    with pytest.raises(ValueError, match="'hinton' needs a teacher"):
        one_step(no_teacher, batch)


def test_pseudo_label_binary_one_logit_head():
    student, teacher = tiny_model("student", classes=1, seed=1), tiny_model("teacher", classes=1, seed=2)
    batch = make_batch()
    batch[schema.LABEL] = (batch[schema.LABEL] > 0).astype("float32")
    z_s = student.predict(batch[schema.IMAGE], verbose=0)[:, 0]
    z_t = teacher.predict(batch[schema.IMAGE], verbose=0)[:, 0]
    target = np.where(batch[schema.LABELED] == 1, batch[schema.LABEL], (z_t > 0).astype("float32"))
    sig = 1 / (1 + np.exp(-z_s))
    expected = np.mean(-(target * np.log(sig) + (1 - target) * np.log(1 - sig)))
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(0.0),
        metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
        objective="pseudo_label",
    )
    logs = one_step(distiller, batch)
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    labeled = batch[schema.LABELED] == 1
    assert logs["binary_accuracy"] == pytest.approx(
        np.mean((z_s[labeled] > 0) == (batch[schema.LABEL][labeled] > 0))
    )


def test_conditional_distillation_step_and_teacher_accuracy_over_labeled_examples():
    student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2)
    batch = make_batch(seed=3)
    s, t = student.predict(batch[schema.IMAGE], verbose=0), teacher.predict(batch[schema.IMAGE], verbose=0)
    y, labeled = batch[schema.LABEL], batch[schema.LABELED]
    right = np.argmax(t, 1) == y
    expected = [
        -np.sum(softmax(t[i]) * np.log(softmax(s[i])))
        if (right[i] or not labeled[i])
        else -math.log(softmax(s[i])[y[i]])
        for i in range(8)
    ]
    distiller = Distiller(student, teacher)
    distiller.compile(keras.optimizers.SGD(0.0), objective="conditional")
    logs = one_step(distiller, batch)
    assert logs["loss"] == pytest.approx(np.mean(expected), rel=1e-5)
    assert logs["teacher_correct"] == pytest.approx(np.mean(right[labeled == 1]))


def test_evaluate_reports_cross_entropy_and_metrics_on_labeled_examples_only():
    student = tiny_model("student", seed=3)
    batch = make_batch(seed=4)
    s = student.predict(batch[schema.IMAGE], verbose=0)
    labeled = batch[schema.LABELED] == 1
    ce = [-math.log(softmax(s[i])[batch[schema.LABEL][i]]) for i in np.flatnonzero(labeled)]
    distiller = Distiller(student, tiny_model("teacher", seed=5))
    distiller.compile(
        keras.optimizers.SGD(0.1), metrics=["sparse_categorical_accuracy"], objective="conditional"
    )
    stream = tf.data.Dataset.from_tensor_slices(batch).batch(8)
    result = distiller.evaluate(stream, verbose=0, return_dict=True)
    assert set(result) == {"loss", "sparse_categorical_accuracy"}
    assert result["loss"] == pytest.approx(np.mean(ce), rel=1e-5)
    acc = np.mean(np.argmax(s[labeled], 1) == batch[schema.LABEL][labeled])
    assert result["sparse_categorical_accuracy"] == pytest.approx(acc)


def test_save_student_writes_the_student_alone_and_save_is_refused(tmp_path):
    student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2, channels=6)
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(0.1),
        objective=get_objective("fitnets", student_tap="stage1", teacher_tap="stage2"),
    )
    regressor_before = [w.copy() for w in distiller.objective.regressor.get_weights()]
    one_step(distiller, make_batch())
    # The regressor trained with the student ...
    assert any(
        np.abs(a - b).max() > 0
        for a, b in zip(distiller.objective.regressor.get_weights(), regressor_before, strict=True)
    )
    path = distiller.save_student(tmp_path / "student.keras")
    loaded = keras.models.load_model(path)
    # ... but the saved file holds the student only (no teacher, no regressor).
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in student.layers]
    assert len(loaded.weights) == len(student.weights)
    images = make_batch(seed=7)[schema.IMAGE]
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), student.predict(images, verbose=0), atol=1e-6
    )
    with pytest.raises(TypeError, match="save_student"):
        distiller.save(tmp_path / "distiller.keras")
    with pytest.raises(ValueError, match="must end in .keras"):
        distiller.save_student(tmp_path / "student.h5")


def test_attention_transfer_objective_uses_the_named_taps():
    student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2)
    batch = make_batch()
    s_map = keras.Model(student.input, student.get_layer("stage1").output).predict(
        batch[schema.IMAGE], verbose=0
    )
    t_map = keras.Model(teacher.input, teacher.get_layer("stage2").output).predict(
        batch[schema.IMAGE], verbose=0
    )
    s = student.predict(batch[schema.IMAGE], verbose=0)
    ce = (
        np.array([-math.log(softmax(s[i])[batch[schema.LABEL][i]]) for i in range(8)]) * batch[schema.LABELED]
    )
    pooled = s_map.reshape(8, 8, 2, 8, 2, 4).mean(axis=(2, 4))  # stage1 is 16x16, stage2 8x8
    unit = lambda v: v / max(np.linalg.norm(v), 1e-12)  # noqa: E731  (an all-zero ReLU plane stays zero)
    attention = []
    for b in range(8):
        planes = [
            np.linalg.norm(unit(pooled[b, :, :, c].ravel()) - unit(t_map[b, :, :, c].ravel()))
            for c in range(4)
        ]
        attention.append(np.mean(planes))
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(0.0),
        objective=get_objective(
            "attention_transfer", student_taps=["stage1"], teacher_taps=["stage2"], beta=10.0
        ),
    )
    logs = one_step(distiller, batch)
    assert logs["attention"] == pytest.approx(np.mean(attention), rel=1e-4)
    assert logs["loss"] == pytest.approx(np.mean(ce + np.array(attention) / 10.0), rel=1e-4)


class FlipWidth(keras.layers.Layer):
    """Deterministic stand-in for an augmentation layer."""

    def call(self, x, training=False):
        return x[:, :, ::-1, :] if training else x


def test_noisy_student_teacher_sees_the_clean_image_student_the_augmented_one():
    student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2)
    batch = make_batch()
    images = batch[schema.IMAGE]
    s_aug = student.predict(images[:, :, ::-1, :], verbose=0)
    t_clean = teacher.predict(images, verbose=0)
    labeled = batch[schema.LABELED]
    targets = np.where(labeled[:, None] == 1, np.eye(3)[batch[schema.LABEL]], softmax(t_clean))
    expected = np.mean(-np.sum(targets * np.log(softmax(s_aug)), 1))
    distiller = Distiller(student, teacher)
    distiller.compile(
        keras.optimizers.SGD(0.0),
        objective=get_objective("noisy_student", student_augmentation=FlipWidth(), soft=True),
    )
    assert one_step(distiller, batch)["loss"] == pytest.approx(expected, rel=1e-5)


def test_simclr_loss_uses_both_views_and_the_projection_head():
    keras.utils.set_random_seed(0)  # the projection head's initialisation
    student = tiny_model("encoder", seed=1)
    batch = make_batch()
    distiller = Distiller(student)
    distiller.compile(
        keras.optimizers.SGD(0.0), objective=get_objective("simclr", projection_dim=5, temperature=0.5)
    )
    features = keras.Model(student.input, student.get_layer("features").output)
    z1 = distiller.objective.head(features(batch[schema.IMAGE])).numpy().astype(np.float64)
    z2 = distiller.objective.head(features(batch[schema.VIEW2])).numpy().astype(np.float64)
    z = np.concatenate([z1, z2])
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    assert np.all(np.abs(z).sum(1) > 0), "a zero projection would make the check weak"
    sim = np.exp(z @ z.T / 0.5)
    n = 8
    ell = lambda i, j: -math.log(sim[i, j] / (sim[i].sum() - sim[i, i]))  # noqa: E731
    expected = np.mean([(ell(k, k + n) + ell(k + n, k)) / 2 for k in range(n)])
    assert one_step(distiller, batch)["loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs batch keys \\['view2'\\]"):
        one_step(distiller, {k: v for k, v in batch.items() if k != schema.VIEW2})


def test_ema_teacher_is_updated_after_each_step():
    student = tiny_model("student", seed=1)
    before = [w.copy() for w in student.get_weights()]
    distiller = Distiller(student, ema_decay=0.75)
    distiller.compile(
        keras.optimizers.SGD(0.5), objective=get_objective("fixmatch", guess_with="teacher", threshold=0.0)
    )
    one_step(distiller, make_batch())
    after = student.get_weights()
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(after, before, strict=True))
    for ema, b, a in zip(distiller.teacher.get_weights(), before, after, strict=True):
        np.testing.assert_allclose(ema, 0.75 * b + 0.25 * a, atol=1e-6)
    with pytest.raises(ValueError, match="either a teacher or ema_decay"):
        Distiller(student, tiny_model("teacher"), ema_decay=0.9)


def test_nan_loss_stops_with_a_one_line_message():
    student = tiny_model("student", seed=1)
    student.get_layer("logits").bias.assign([np.nan, 0.0, 0.0])
    distiller = Distiller(student)
    distiller.compile(keras.optimizers.SGD(0.1), objective="hard_label")
    batch = make_batch()
    with pytest.raises(NonFiniteLossError) as error:
        one_step(distiller, batch, callbacks=[StopOnNaN(checkpoint_dir="runs/x")])
    message = str(error.value)
    assert "\n" not in message
    assert "loss is nan at epoch 1, batch 1" in message and "runs/x" in message


def test_objective_registry_and_config_errors():
    assert set(list_objectives()) == {
        "hard_label",
        "hinton",
        "soft_target_student_teacher",
        "conditional",
        "pseudo_label",
        "noisy_student",
        "attention_transfer",
        "fitnets",
        "simclr",
        "fixmatch",
        "mixmatch",
        "keras_distillation",
    }
    objective = get_objective({"name": "hinton", "alpha": 0.5, "temperature": 2.0})
    assert (objective.alpha, objective.temperature) == (0.5, 2.0)
    with pytest.raises(KeyError, match="unknown objective 'kd'.*hinton"):
        get_objective("kd")
    with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\]"):
        get_objective("hinton", alpha=1.5)
    assert get_objective("soft_target_student_teacher").alpha == 1.5  # 002's alpha > 1 is allowed there
    with pytest.raises(ValueError, match="as many student_taps as teacher_taps"):
        get_objective("attention_transfer", student_taps=["stage1"], teacher_taps=["stage1", "stage2"])


def test_batches_must_be_dicts():
    distiller = Distiller(tiny_model("student"))
    distiller.compile(keras.optimizers.SGD(0.1))
    stream = tf.data.Dataset.from_tensor_slices((make_batch()[schema.IMAGE], np.zeros(8, "int32"))).batch(8)
    with pytest.raises(ValueError, match="expects batches that are dicts"):
        distiller.fit(stream, epochs=1, verbose=0)


def test_stochastic_depth_drops_whole_branches_in_training_only():
    layer = StochasticDepth(0.5, seed=1)
    shortcut, branch = np.ones((64, 2, 2, 3), "float32"), np.full((64, 2, 2, 3), 3.0, "float32")
    out = layer([shortcut, branch], training=True).numpy()
    per_example = out.reshape(64, -1)
    assert np.all(per_example == per_example[:, :1])  # one decision per example
    assert set(np.unique(per_example)) <= {1.0, 7.0}  # dropped (1) or kept and rescaled (1 + 3 / 0.5)
    assert 10 < np.sum(per_example[:, 0] == 1.0) < 54
    np.testing.assert_array_equal(layer([shortcut, branch], training=False).numpy(), shortcut + branch)


def test_seed_everything_makes_initialisation_and_dropout_repeatable():
    def draw():
        seed_everything(123, deterministic=False)
        layer = keras.layers.Dense(4)
        layer.build((None, 3))
        dropped = keras.layers.Dropout(0.5)(np.ones((1, 16), "float32"), training=True)
        return layer.kernel.numpy(), dropped.numpy()

    (k1, d1), (k2, d2) = draw(), draw()
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(d1, d2)
