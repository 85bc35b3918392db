"""FixMatch and MixMatch (study 003's baselines) on a case whose outcome is known: two well-separated classes of
small grey images (bright top half against bright bottom half, under pixel noise), 4 labeled images per class
and 256 unlabeled ones. A working semi-supervised method classifies a held-out set almost perfectly; one with a
sign or label-convention bug scores near or below chance (issue #21: MixMatch at 36.4 AUC in the 003 demo).

Each case trains a tiny dense network through the real stack (npz records -> make_two_stream_dataset with
separate labeled and unlabeled batches -> train/Distiller -> evaluate_model), in a few seconds, and checks the
AUC against scikit-learn's on the model's class-1 probability, so the AUC's positive class is checked as well.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from kd_keras.data import pipeline, schema, sources
from kd_keras.data.augment import build_augmenter
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.engine import evaluate_model, train

SIZE = 16
CONFIG = PreprocessConfig((SIZE, SIZE), channels=1)


def _images(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Class 1: the top half brighter; class 0: the bottom half. Noise of the same size as the signal."""
    x = rng.normal(100.0, 35.0, (len(labels), SIZE, SIZE))
    x[labels == 1, : SIZE // 2] += 50.0
    x[labels == 0, SIZE // 2:] += 50.0
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("blobs")
    sizes = {"labeled": 8, "pool": 256, "test": 400}
    labels = np.concatenate([np.array([0, 1] * 4), rng.integers(0, 2, 256 + 400)])
    np.savez(root / "blobs.npz", images=_images(rng, labels), labels=labels)
    records = sources.from_npz(root / "blobs.npz", split=None)  # one images array: its subsets concatenate
    starts = np.cumsum([0, *sizes.values()])
    return {name: records.subset(np.arange(starts[i], starts[i + 1])) for i, name in enumerate(sizes)}


def _tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _strong() -> keras.Layer:
    # Stronger than the weak view: brightness, contrast and extra pixel noise.
    return keras.Sequential([build_augmenter(flip="horizontal", rotation_degrees=0, vertical_shift=0,
                                             brightness=0.2, contrast=0.4, seed=2),
                             keras.layers.Rescaling(1 / 255), keras.layers.GaussianNoise(0.1, seed=3),
                             keras.layers.Rescaling(255)])


def _weak(seed: int) -> keras.Layer:
    return build_augmenter(flip="horizontal", rotation_degrees=0, vertical_shift=0, brightness=0.05,
                           contrast=0.05, seed=seed)


def _train_and_score(blobs, objective: dict, ratio: int, view2: keras.Layer, epochs: int):
    labeled, pool, test = blobs["labeled"], blobs["pool"], blobs["test"]

    def make():
        return pipeline.make_two_stream_dataset(labeled, pool, CONFIG, 8, unlabeled_ratio=ratio, seed=0,
                                                augmenter=_weak(1), view2_augmenter=view2, cache=True)

    steps = pipeline.two_stream_steps(len(pool), 8, ratio)
    result = train(_tiny_model(), make, epochs=epochs, steps_per_epoch=steps, learning_rate=3e-3,
                   objective=objective, bn_batches=0, metrics=None)
    metrics = evaluate_model(result.model, test, CONFIG, n_boot=0)
    images = test.images[test.array_index][..., None].astype(np.float32)
    probability = tf.nn.softmax(result.model(images), -1).numpy()[:, 1]
    return metrics, roc_auc_score(test.labels, probability)


def test_two_stream_batches_hold_b_labeled_and_mu_b_unlabeled(blobs):
    labeled, pool = blobs["labeled"], blobs["pool"]
    stream = pipeline.make_two_stream_dataset(labeled, pool, CONFIG, 4, unlabeled_ratio=7, seed=0)
    seen_labeled, seen_pool = set(), set()
    for batch in stream.take(10).as_numpy_iterator():
        assert batch[schema.IMAGE].shape == (32, SIZE, SIZE, 1)
        np.testing.assert_array_equal(batch[schema.LABELED], [1.0] * 4 + [0.0] * 28)
        first, rest = batch[schema.INDEX][:4], batch[schema.INDEX][4:]
        assert first.max() < len(labeled) and rest.min() >= len(labeled)  # mixed_records order
        np.testing.assert_array_equal(batch[schema.LABEL][:4], labeled.labels[first])
        seen_labeled.update(first.tolist())
        seen_pool.update(rest.tolist())
    assert seen_labeled == set(range(len(labeled)))  # the labeled set repeats as the pool needs
    assert len(seen_pool) > 200  # 280 draws without replacement within an epoch of 256
    assert pipeline.two_stream_steps(len(pool), 4, 7) == 10  # ceil(256 / 28)


def test_fixmatch_separates_two_known_classes(blobs):
    objective = {"name": "fixmatch", "threshold": 0.95, "lambda_u": 1.0, "reduction": "per_stream"}
    metrics, auc = _train_and_score(blobs, objective, ratio=7, view2=_strong(), epochs=6)
    assert metrics["auc"]["estimate"] == pytest.approx(auc, abs=1e-6)  # class 1 is the positive class
    assert auc > 0.98 and metrics["accuracy"]["estimate"] > 0.93, metrics


def test_mixmatch_separates_two_known_classes(blobs):
    # MixMatch's settings: K = 2 weak views, T = 0.5, alpha = 0.75, lambda_u ramped up (here over 30 steps).
    objective = {"name": "mixmatch", "sharpen_temperature": 0.5, "alpha": 0.75, "lambda_u": 100.0,
                 "rampup_steps": 30, "seed": 0, "reduction": "per_stream"}
    metrics, auc = _train_and_score(blobs, objective, ratio=1, view2=_weak(5), epochs=3)
    assert metrics["auc"]["estimate"] == pytest.approx(auc, abs=1e-6)
    assert auc > 0.98 and metrics["accuracy"]["estimate"] > 0.93, metrics


def test_per_stream_reduction_is_the_mean_of_each_stream():
    """l_s + lambda_u l_u with each mean over its own examples, whatever the batch's mix."""
    from kd_keras.engine import Distiller, get_objective

    keras.utils.set_random_seed(0)
    student = _tiny_model()
    rng = np.random.default_rng(1)
    batch = {schema.IMAGE: rng.uniform(0, 255, (8, SIZE, SIZE, 1)).astype("float32"),
             schema.LABEL: np.array([1, 0, 0, 0, 0, 0, 0, 0], np.int32),
             schema.LABELED: np.array([1, 1, 0, 0, 0, 0, 0, 0], np.float32)}
    batch[schema.VIEW2] = batch[schema.IMAGE][::-1].copy()
    logs = {}
    for reduction in ("batch", "per_stream"):
        distiller = Distiller(student)
        distiller.compile(keras.optimizers.SGD(0.0), objective=get_objective(
            "fixmatch", threshold=0.0, lambda_u=3.0, reduction=reduction))
        history = distiller.fit(tf.data.Dataset.from_tensor_slices(batch).batch(8), epochs=1, verbose=0,
                                  shuffle=False)
        logs[reduction] = {key: values[-1] for key, values in history.history.items()}
    weak = student(batch[schema.IMAGE]).numpy()
    strong = student(batch[schema.VIEW2]).numpy()
    log_p = tf.nn.log_softmax(weak).numpy()
    sup = -log_p[[0, 1], batch[schema.LABEL][:2]]
    pseudo = weak.argmax(-1)
    unsup = -tf.nn.log_softmax(strong).numpy()[np.arange(8), pseudo][2:]
    np.testing.assert_allclose(logs["batch"]["loss"], (sup.sum() + 3.0 * unsup.sum()) / 8, rtol=1e-5)
    np.testing.assert_allclose(logs["per_stream"]["loss"], sup.mean() + 3.0 * unsup.mean(), rtol=1e-5)
