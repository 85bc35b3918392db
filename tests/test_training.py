"""Training building blocks: scores against scikit-learn, batched prediction against a direct model call, the
best epoch kept, the learning-rate grid, resume of a finished and of an extended run, pseudo-labels from the
teacher cache. Tiny models on 32 px arrays: seconds."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, roc_auc_score

from kd_keras.data import pipeline
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.engine import Distiller
from kd_keras.engine.pseudo_labels import PseudoLabels, pseudo_label_pool
from kd_keras.engine.training import (
    ValidationTracker,
    make_optimizer,
    predict,
    score_logits,
    train,
    train_lr_grid,
)

SIZE = 32
CONFIG = PreprocessConfig((SIZE, SIZE), channels=1)


def tiny_classifier(seed: int | None = None, classes: int = 2) -> keras.Model:
    """Zoo contract (input "image", "logits"); ``seed`` fixes the initial weights."""
    if seed is not None:
        keras.utils.set_random_seed(seed)
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="stage1")(h)
    h = keras.layers.GlobalAveragePooling2D(name="features")(h)
    out = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(x, out, name="tiny")


def bright_dark_records(n: int = 64, seed: int = 0, noise: float = 40.0) -> Records:
    """Class 1 images are brighter than class 0 ones: learnable in a few steps, not from the first step."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(90 + 70 * labels[:, None, None], noise, (n, SIZE, SIZE)).clip(0, 255).astype(np.uint8)
    return Records(paths=None, labels=labels.astype(np.int64), patients=np.array([f"p{i // 2}" for i in range(n)],
                   dtype=object), class_names=("dark", "bright"), task="binary", images=images,
                   array_index=np.arange(n, dtype=np.int64))


@pytest.fixture(scope="module")
def data():
    train_records = bright_dark_records(64, seed=1)
    val_records = bright_dark_records(32, seed=2)

    def make_stream():
        return pipeline.make_dataset(train_records, CONFIG, 16, repeat=True, seed=0)

    validation = pipeline.make_dataset(val_records, CONFIG, 16, shuffle=False)
    return train_records, val_records, make_stream, validation


def test_score_logits_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2)) + labels[:, None] * np.array([0.0, 1.0])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert score_logits(labels, logits, "accuracy") == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    assert score_logits(labels, logits, "auc") == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    one_logit = logits[:, 1:] - logits[:, :1]  # the same classifier as a sigmoid head
    assert score_logits(labels, one_logit, "auc") == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    multi = rng.integers(0, 3, 60)
    logits3 = rng.normal(size=(60, 3)) + np.eye(3)[multi]
    p3 = np.exp(logits3) / np.exp(logits3).sum(1, keepdims=True)
    assert score_logits(multi, logits3, "auc") == pytest.approx(roc_auc_score(multi, p3, multi_class="ovr"))
    assert np.isnan(score_logits(np.zeros(5, int), rng.normal(size=(5, 2)), "auc"))
    with pytest.raises(ValueError, match="metric"):
        score_logits(labels, logits, "f1")


def test_predict_in_batches_matches_direct_call():
    records = bright_dark_records(10, seed=3)
    model = tiny_classifier()
    out = predict(model, records, CONFIG, batch_size=4)
    images = np.stack([records.images[i].astype(np.float32)[..., None] for i in range(10)])
    np.testing.assert_allclose(out.logits, model(images, training=False).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.indices, np.arange(10))
    np.testing.assert_array_equal(out.labels, records.labels)
    assert out.labeled.all()
    # A stream whose batches are larger than batch_size is split (bounded memory), same values.
    big = pipeline.make_dataset(records, CONFIG, 10, shuffle=False)
    np.testing.assert_allclose(predict(Distiller(model), big, batch_size=3).logits, out.logits, atol=1e-5)
    with pytest.raises(ValueError, match="PreprocessConfig"):
        predict(model, records)


def test_train_keeps_best_epoch_and_reports_validation(data, tmp_path):
    _, val_records, make_stream, validation = data
    keras.utils.set_random_seed(0)
    log_dir = tmp_path / "tb"
    result = train(tiny_classifier(), make_stream, steps_per_epoch=4, validation=validation, epochs=4,
                   learning_rate=3e-2, monitor="auc", callbacks=[keras.callbacks.CSVLogger(str(tmp_path / "l.csv"))])
    assert len(result.history) == 4 and [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    aucs = [h["val_auc"] for h in result.history]
    assert result.best_score == pytest.approx(max(aucs))
    assert result.best_epoch == 1 + int(np.argmax(aucs))
    # The returned model holds the best epoch's weights: recomputed independently on the validation records.
    assert predict(result.model, val_records, CONFIG).score("auc") == pytest.approx(result.best_score)
    assert result.best_score > 0.9  # learnable problem
    # Later callbacks saw the validation scores in the epoch logs.
    assert "val_auc" in (tmp_path / "l.csv").read_text().splitlines()[0]
    assert not log_dir.exists()


def brightness_classifier() -> keras.Model:
    """tiny_classifier set by hand to threshold the mean brightness between the two classes (accuracy ~1)."""
    model = tiny_classifier(seed=0)
    model.get_layer("stage1").set_weights([np.full((3, 3, 1, 8), 1 / 9, np.float32), np.zeros(8, np.float32)])
    kernel = np.zeros((8, 2), np.float32)
    kernel[:, 1] = 40 / 8
    model.get_layer("logits").set_weights([kernel, np.array([0.0, -40 * 125 / 255], np.float32)])
    return model


def test_tracker_keeps_earlier_best_when_later_epochs_are_worse(data, tmp_path):
    _, val_records, _, validation = data
    model = brightness_classifier()
    distiller = Distiller(model)
    distiller.compile(optimizer="adam", objective="hard_label")
    tracker = ValidationTracker(validation, "accuracy", directory=tmp_path)
    tracker.set_model(distiller)
    logs = {"loss": 0.3}
    tracker.on_epoch_end(0, logs)
    assert logs["val_accuracy"] > 0.9 and "val_auc" in logs
    good = [w.copy() for w in model.get_weights()]
    # A worse epoch (always class 0) must not replace the best weights.
    model.get_layer("logits").set_weights([np.zeros((8, 2)), np.array([5.0, -5.0])])
    tracker.on_epoch_end(1, {})
    assert tracker.history[1]["val_accuracy"] == pytest.approx(0.5)
    assert tracker.history[1]["val_auc"] == pytest.approx(0.5)  # constant scores
    assert tracker.best_epoch == 1 and tracker.best_score == pytest.approx(logs["val_accuracy"])
    tracker.restore_best(distiller)
    for a, b in zip(model.get_weights(), good, strict=True):
        np.testing.assert_array_equal(a, b)
    # A new tracker on the same folder (a resumed run) knows the history and the best weights.
    reopened = ValidationTracker(validation, "accuracy", directory=tmp_path)
    assert reopened.history == tracker.history and reopened.best_epoch == 1
    fresh = Distiller(tiny_classifier(seed=7))
    assert reopened.restore_best(fresh)
    np.testing.assert_allclose(predict(fresh, val_records, CONFIG).logits,
                               predict(model, val_records, CONFIG).logits, atol=1e-6)


def test_lr_grid_picks_best_and_keeps_every_history(data, tmp_path):
    _, _, make_stream, validation = data
    done = []
    grid = train_lr_grid(tiny_classifier, make_stream, learning_rates=[3e-2, 1e-7], runs=2, seed=3,
                         steps_per_epoch=4, validation=validation, epochs=2, on_run_done=done.append)
    assert len(grid.runs) == 4 == len(done)
    assert [(r.learning_rate, r.run) for r in grid.runs] == [(3e-2, 0), (1e-7, 0), (3e-2, 1), (1e-7, 1)]
    scores = [max(h["val_accuracy"] for h in r.history) for r in grid.runs]
    assert grid.best.best_score == pytest.approx(max(scores))
    assert grid.best.learning_rate == 3e-2
    assert sum(r.model is not None for r in grid.runs) == 1 and grid.best.model is not None
    summary = json.loads(json.dumps(grid.summary()))
    assert summary["best"]["learning_rate"] == 3e-2 and len(summary["runs"]) == 4


def test_resume_skips_finished_run_and_extends(data, tmp_path):
    _, val_records, make_stream, validation = data
    keras.utils.set_random_seed(0)
    first = train(tiny_classifier(), make_stream, steps_per_epoch=3, validation=validation, epochs=2,
                  learning_rate=3e-2, directory=tmp_path / "run")
    assert (tmp_path / "run" / "history.json").is_file() and (tmp_path / "run" / "best.weights.h5").is_file()
    # Same folder, same length: nothing is trained, the best weights come back from disk.
    calls = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            calls.append(batch)

    again = train(tiny_classifier(seed=9), make_stream, steps_per_epoch=3, validation=validation, epochs=2,
                  learning_rate=3e-2, directory=tmp_path / "run", callbacks=[Count()])
    assert calls == []
    assert again.history == first.history and again.best_score == first.best_score
    np.testing.assert_allclose(predict(again.model, val_records, CONFIG).logits,
                               predict(first.model, val_records, CONFIG).logits, atol=1e-6)
    # A longer run continues from the checkpoint: only the new epoch's steps run.
    longer = train(tiny_classifier(seed=9), make_stream, steps_per_epoch=3, validation=validation, epochs=3,
                   learning_rate=3e-2, directory=tmp_path / "run", callbacks=[Count()])
    assert len(calls) == 3 and [h["epoch"] for h in longer.history] == [1, 2, 3]


def test_pseudo_label_pool_uses_cache_once(tmp_path):
    everything = bright_dark_records(24, seed=4)
    labeled = everything.subset(np.arange(8))
    pool = everything.subset(np.arange(8, 24))
    teacher = tiny_classifier(seed=5)
    first = pseudo_label_pool(teacher, labeled, pool, CONFIG, tmp_path / "cache", batch_size=5)
    assert isinstance(first, PseudoLabels) and first.num_labeled == 8
    images = np.stack([everything.images[i].astype(np.float32)[..., None] for i in range(24)])
    expected = teacher(images, training=False).numpy()
    np.testing.assert_allclose(first.cache.logits[np.arange(24)], expected, atol=1e-5)
    np.testing.assert_array_equal(first.pool_labels, expected[8:].argmax(1))
    probs = tf.nn.softmax(expected[8:]).numpy()
    np.testing.assert_allclose(first.pool_confidence, probs.max(1), rtol=1e-5)
    assert first.labeled_accuracy == pytest.approx(np.mean(expected[:8].argmax(1) == labeled.labels))
    again = pseudo_label_pool(teacher, labeled, pool, CONFIG, tmp_path / "cache", batch_size=5)
    assert again.cache.path == first.cache.path and again.cache.build_stats.get("shards_computed", 0) == 0
    summary = first.summary(("dark", "bright"))
    assert sum(summary["pseudo_label_counts"].values()) == 16 and summary["pool_size"] == 16
    # The mixed stream reads the cached logits by index.
    stream = pipeline.make_mixed_dataset(labeled, pool, CONFIG, 24, 1.0, teacher_logits=first.cache.logits)
    batch = next(iter(stream))
    np.testing.assert_allclose(batch["teacher_logits"].numpy(), expected[batch["index"].numpy()], atol=1e-5)


def test_make_optimizer():
    assert make_optimizer("sgd", 0.01).momentum == pytest.approx(0.9)
    assert float(make_optimizer("adam", 1e-3).learning_rate) == pytest.approx(1e-3)
    assert isinstance(make_optimizer(lambda lr: keras.optimizers.RMSprop(lr), 0.1), keras.optimizers.RMSprop)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("lion", 0.1)


def test_recalibrate_batch_norm_sets_exact_average_and_restores_momentum():
    """Precise BN: the moving statistics become the plain average of the batches' own statistics, whatever
    they were before, and nothing else changes."""
    from kd_keras.engine.training import recalibrate_batch_norm

    inputs = keras.Input((3,))
    norm = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    model = keras.Model(inputs, norm(keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")(inputs)))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, scale, (16, 3)).astype("float32") for loc, scale in [(5, 1), (-1, 2), (2, 0.5)]]
    weights_before = [w.copy() for w in model.get_weights()[:1]]  # the dense kernel

    used = recalibrate_batch_norm(model, iter(batches + batches), max_batches=3)

    assert used == 3
    expected_mean = np.mean([b.mean(axis=0) for b in batches], axis=0)
    expected_var = np.mean([b.var(axis=0) for b in batches], axis=0)  # Keras uses the biased batch variance
    np.testing.assert_allclose(norm.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), expected_var, rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.99
    np.testing.assert_array_equal(model.get_weights()[0], weights_before[0])


def test_recalibrate_batch_norm_on_a_zoo_network_matches_numpy_statistics_and_traces_once():
    """A real student (mobilenet_wd4): every BN layer's moving statistics equal the average over the batches of
    the numpy mean and biased variance of that layer's input in training mode; a second recalibration reuses
    the compiled pass (one trace)."""
    from kd_keras.engine import batchnorm
    from kd_keras.models import build_model

    net = build_model("mobilenet_wd4", (32, 32, 1), 2)
    layers = batchnorm.batch_norm_layers(net)
    # Each BN layer's input in training mode, run compiled like the network under test: eager and compiled
    # passes of an untrained network differ by round-off that grows with depth (1.5e-3 at the last layers).
    taps = tf.function(keras.Model(net.input, [layer.input for layer in layers]))
    rng = np.random.default_rng(1)
    batches = [rng.normal(loc, 0.3, (8, 32, 32, 1)).astype("float32") for loc in (0.2, 0.5, 0.8)]
    inputs = [[np.asarray(t, dtype=np.float64) for t in taps(b, training=True)] for b in batches]
    momenta = [layer.momentum for layer in layers]

    assert batchnorm.recalibrate_batch_norm(net, batches, max_batches=3) == 3
    for k, layer in enumerate(layers):
        axes = tuple(range(inputs[0][k].ndim - 1))
        mean = np.mean([x[k].mean(axis=axes) for x in inputs], axis=0)
        var = np.mean([x[k].var(axis=axes) for x in inputs], axis=0)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-3, atol=1e-5)
        assert layer.momentum == momenta[k]
    batchnorm.recalibrate_batch_norm(net, batches, max_batches=2)
    assert batchnorm._COMPILED[net][1].experimental_get_tracing_count() == 1


def test_recalibrate_batch_norm_without_batch_norm_runs_nothing():
    from kd_keras.engine.training import recalibrate_batch_norm

    def never():
        raise AssertionError("no batch should be drawn for a model without BatchNorm")
        yield

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert recalibrate_batch_norm(model, never(), max_batches=5) == 0


def test_epoch_summaries_write_finite_scalars(tmp_path):
    """The event file holds one scalar per finite log per epoch, readable without the tensorboard package."""
    from kd_keras.engine.training import EpochSummaries

    callback = EpochSummaries(tmp_path / "run0")
    callback.on_epoch_end(0, {"loss": 0.5, "val_auc": 0.75})
    callback.on_epoch_end(1, {"loss": 0.25, "val_auc": float("nan")})  # NaN is left out, not written
    callback.on_train_end()
    (event_file,) = (tmp_path / "run0").iterdir()
    found = {}
    for record in tf.data.TFRecordDataset(str(event_file)):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            found[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
            assert value.metadata.plugin_data.plugin_name == "scalars"
    assert found == {("epoch_loss", 1): 0.5, ("epoch_val_auc", 1): 0.75, ("epoch_loss", 2): 0.25}
