"""engine.train, the one training stack: callable validation picks the scripted best epoch, curve points at
``validate_every_steps``, ``steps_per_epoch=None`` is one pass, schedules step per batch, a teacher argument, and a
run with a callable validation resumed from its folder ends where a straight run ends. Tiny models, 32 px."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import pipeline, schema
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.engine import Distiller, count_batches, make_optimizer, make_score_fn, train

SIZE = 32
CONFIG = PreprocessConfig((SIZE, SIZE), channels=1)


def tiny_classifier(seed: int | None = None) -> keras.Model:
    if seed is not None:
        keras.utils.set_random_seed(seed)
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="stage1")(h)
    h = keras.layers.GlobalAveragePooling2D(name="features")(h)
    return keras.Model(x, keras.layers.Dense(2, name="logits")(h), name="tiny")


def bright_dark_records(n: int, seed: int) -> Records:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(90 + 70 * labels[:, None, None], 40, (n, SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    return Records(paths=None, labels=labels.astype(np.int64), patients=np.array([f"p{i // 2}" for i in range(n)],
                   dtype=object), class_names=("dark", "bright"), task="binary", images=images,
                   array_index=np.arange(n, dtype=np.int64))


TRAIN = bright_dark_records(48, seed=1)  # 3 batches of 16
VAL = bright_dark_records(16, seed=2)


def finite_stream() -> tf.data.Dataset:
    return pipeline.make_dataset(TRAIN, CONFIG, 16, seed=0)  # cardinality UNKNOWN (unreadable files filtered)


def endless_stream() -> tf.data.Dataset:
    return pipeline.make_dataset(TRAIN, CONFIG, 16, seed=0, repeat=True)


class Scripted:
    """A validation callable returning scripted scores; records the student's weights at each call."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.weights = []
        self.steps = []

    def __call__(self, student):
        self.weights.append([w.copy() for w in student.get_weights()])
        return self.scores[len(self.weights) - 1]


def assert_same_weights(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_callable_validation_restores_the_scripted_best_epoch():
    validation = Scripted([0.1, 0.9, 0.3, 0.5])  # epoch 2 is the best
    result = train(tiny_classifier(seed=0), endless_stream, steps_per_epoch=3, epochs=4, validation=validation,
                   learning_rate=3e-2, bn_batches=0)
    assert len(validation.weights) == 4
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.9) and result.monitor == "score"
    assert_same_weights(result.model.get_weights(), validation.weights[1])
    # Training did move the weights after epoch 2, so the restore is not trivially the final state.
    assert not np.allclose(validation.weights[1][-2], validation.weights[3][-2])
    assert [h["val_score"] for h in result.history] == pytest.approx([0.1, 0.9, 0.3, 0.5])
    assert result.curve == [(3, 0.1), (6, 0.9), (9, 0.3), (12, 0.5)]
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert summary["best_epoch"] == 2 and summary["curve"][1] == [6, 0.9] and summary["loss"] == result.losses


def test_validate_every_steps_gives_curve_points_and_picks_among_them():
    validation = Scripted([0.2, 0.8, 0.4, 0.6])  # steps 2, 4, 6, 8 of 3 epochs x 3 steps; step 4 is the best
    result = train(tiny_classifier(seed=0), endless_stream, steps_per_epoch=3, epochs=3, validation=validation,
                   validate_every_steps=2, learning_rate=3e-2, bn_batches=0)
    assert [step for step, _ in result.curve] == [2, 4, 6, 8]
    assert result.best_step == 4 and result.best_epoch == 2  # step 4 is the first step of epoch 2
    assert_same_weights(result.model.get_weights(), validation.weights[1])
    assert len(result.history) == 3 and all("val_score" not in h for h in result.history)


def test_steps_per_epoch_none_is_one_pass_over_the_stream():
    steps = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(int(self.model.optimizer.iterations.numpy()))

    assert finite_stream().cardinality() == tf.data.UNKNOWN_CARDINALITY  # so the engine has to count
    assert count_batches(finite_stream()) == 3
    result = train(tiny_classifier(seed=0), finite_stream, epochs=2, validation=Scripted([0.5, 0.6]),
                   callbacks=[Steps()], bn_batches=0)
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in result.curve] == [3, 6]
    # A dataset object works the same way (in memory), with a known cardinality taken as is.
    data = {schema.IMAGE: np.zeros((10, SIZE, SIZE, 1), "float32"), schema.LABEL: np.zeros(10, "int32"),
            schema.LABELED: np.ones(10, "float32")}
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(4)
    assert count_batches(dataset) == 3
    assert len(train(tiny_classifier(seed=0), dataset, epochs=2, bn_batches=0).losses) == 2
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train(tiny_classifier(), endless_stream, epochs=1)
    with pytest.raises(TypeError, match="function"):
        train(tiny_classifier(), dataset, epochs=1, directory="unused")


def test_sgd_has_momentum_and_a_schedule_steps_per_batch():
    assert make_optimizer("sgd", 0.01).momentum == pytest.approx(0.9)
    assert make_optimizer("SGD", 0.01).momentum == pytest.approx(0.9)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            snapshots.append([w.copy() for w in self.model.student.get_weights()])

    # Learning rate 0.05 for optimizer steps 0..2, then 0: Adam moves nothing at the 4th step.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.05, 0.0])
    result = train(tiny_classifier(seed=0), endless_stream, steps_per_epoch=4, epochs=1, learning_rate=schedule,
                   callbacks=[Snapshot()], bn_batches=0)
    assert not np.allclose(snapshots[1][-2], snapshots[2][-2])  # step 3 (lr 0.05) moved the weights
    assert_same_weights(snapshots[3], snapshots[2])  # step 4 (lr 0) did not
    assert_same_weights(result.model.get_weights(), snapshots[3])  # no validation: the final weights
    assert np.isnan(result.best_score) and result.best_epoch == 0 and result.monitor is None
    summary = json.loads(json.dumps(result.summary(), allow_nan=False))
    assert summary["learning_rate"]["schedule"] == "PiecewiseConstantDecay" and summary["best_score"] is None


def test_teacher_argument_distils_and_is_given_once():
    teacher = tiny_classifier(seed=5)
    result = train(tiny_classifier(seed=0), endless_stream, steps_per_epoch=2, epochs=1, teacher=teacher,
                   objective={"name": "hinton", "alpha": 0.0, "temperature": 2.0}, bn_batches=0)
    assert np.isfinite(result.losses[0])
    # With alpha 0 the loss is the distillation term alone: a student equal to its teacher has loss ~0.
    twin = tiny_classifier(seed=5)
    same = train(twin, endless_stream, steps_per_epoch=1, epochs=1, teacher=teacher, learning_rate=0.0,
                 objective={"name": "hinton", "alpha": 0.0, "temperature": 2.0}, bn_batches=0)
    assert same.losses[0] == pytest.approx(0.0, abs=1e-5) and result.losses[0] > 1e-4
    with pytest.raises(ValueError, match="teacher"):
        train(Distiller(tiny_classifier(), teacher), endless_stream, steps_per_epoch=1, epochs=1, teacher=teacher)


def test_resumed_run_with_callable_validation_equals_a_straight_run(tmp_path):
    score = make_score_fn(VAL, CONFIG, "auc")
    kwargs = dict(validation=score, validate_every_steps=2, learning_rate=3e-2, bn_batches=2,
                  save_every_steps=2)
    straight = train(tiny_classifier(seed=0), finite_stream, epochs=4, directory=tmp_path / "straight", **kwargs)
    first = train(tiny_classifier(seed=0), finite_stream, epochs=2, directory=tmp_path / "resumed", **kwargs)
    assert len(first.history) == 2 and (tmp_path / "resumed" / "steps_per_epoch.json").is_file()
    # A new process constructs everything anew (another initialisation: the checkpoint restores the weights) and
    # seeds as the first one did (the stream's shuffle depends on the global seed).
    fresh = tiny_classifier(seed=9)
    keras.utils.set_random_seed(0)
    resumed = train(fresh, finite_stream, epochs=4, directory=tmp_path / "resumed", **kwargs)
    assert [step for step, _ in resumed.curve] == [2, 4, 6, 8, 10, 12]
    assert resumed.curve == pytest.approx(straight.curve)
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-5)
    assert (resumed.best_epoch, resumed.best_step) == (straight.best_epoch, straight.best_step)
    assert_same_weights(resumed.model.get_weights(), straight.model.get_weights(), atol=1e-6)
    # The chosen weights are the best curve point's: the score recomputed on them.
    assert score(resumed.model) == pytest.approx(resumed.best_score)
