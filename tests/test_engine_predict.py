"""One head resolution (HeadSpec), one evaluation (engine.evaluate_model) against scikit-learn, one image-cache
rule (engine.fits_in_memory), and the studies' helpers going through them."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.data.tasks import HeadSpec
from kd_keras.engine import CACHE_LIMIT_BYTES, evaluate_model, fits_in_memory, make_score_fn, predict

SIZE = 8
CONFIG = PreprocessConfig((SIZE, SIZE), channels=1)


def records(labels: np.ndarray, task: str, class_names: tuple[str, ...], seed: int = 0) -> Records:
    n = len(labels)
    images = np.random.default_rng(seed).integers(0, 255, (n, SIZE, SIZE)).astype(np.uint8)
    return Records(paths=None, labels=labels, patients=np.array([f"p{i // 2}" for i in range(n)], dtype=object),
                   class_names=class_names, task=task, images=images, array_index=np.arange(n, dtype=np.int64))


def linear_model(outputs: int) -> keras.Model:
    keras.utils.set_random_seed(1)
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(x))
    return keras.Model(x, keras.layers.Dense(outputs, name="logits")(h))


def test_head_spec_of_each_task():
    binary = records(np.array([0, 1] * 3), "binary", ("neg", "pos"))
    multi = records(np.array([0, 1, 2] * 2), "multiclass", ("a", "b", "c"))
    multilabel = records(np.zeros((6, 4), np.float32), "multilabel", ("w", "x", "y", "z"))
    assert HeadSpec.of(binary) == HeadSpec(2, "multiclass", "binary")
    assert HeadSpec.of(multi) == HeadSpec(3, "multiclass", "multiclass")
    assert HeadSpec.of(multilabel) == HeadSpec(4, "multilabel", "multilabel")
    with pytest.raises(dataclasses.FrozenInstanceError):
        HeadSpec.of(binary).size = 3


def test_evaluate_model_binary_matches_sklearn():
    data = records(np.array([0, 1] * 10, np.int64), "binary", ("neg", "pos"))
    model = linear_model(2)
    logits = model(data.images[..., None].astype("float32")).numpy()
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    metrics = evaluate_model(model, data, CONFIG, n_boot=50, batch_size=7)
    assert metrics["n"] == 20 and metrics["task"] == "binary"
    assert metrics["auc"]["estimate"] == pytest.approx(roc_auc_score(data.labels, probs[:, 1]))
    assert metrics["accuracy"]["estimate"] == pytest.approx(accuracy_score(data.labels, logits.argmax(1)))
    assert metrics["auc"]["low"] <= metrics["auc"]["estimate"] <= metrics["auc"]["high"]
    out = predict(model, data, CONFIG, batch_size=3)
    np.testing.assert_allclose(out.logits, logits, atol=1e-5)
    np.testing.assert_array_equal(out.indices, np.arange(20))
    assert make_score_fn(data, CONFIG, "accuracy")(model) == pytest.approx(metrics["accuracy"]["estimate"])


def test_evaluate_model_multilabel_leaves_unknown_labels_out_per_label():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (30, 3)).astype(np.float32)
    labels[:5, 0] = -1  # unknown for label 0 only
    labels[:, 2] = 1  # one class only: no AUC for label 2
    data = records(labels, "multilabel", ("a", "b", "c"), seed=4)
    model = linear_model(3)
    probs = 1 / (1 + np.exp(-model(data.images[..., None].astype("float32")).numpy()))
    metrics = evaluate_model(model, data, CONFIG, n_boot=0)
    expected_a = roc_auc_score(labels[5:, 0], probs[5:, 0])
    expected_b = roc_auc_score(labels[:, 1], probs[:, 1])
    assert metrics["auc_per_label"] == pytest.approx({"a": expected_a, "b": expected_b})
    assert metrics["auc"]["estimate"] == pytest.approx((expected_a + expected_b) / 2)
    assert make_score_fn(data, CONFIG, "auc")(model) == pytest.approx((expected_a + expected_b) / 2)


def test_one_cache_threshold():
    config = PreprocessConfig((256, 256), channels=1)  # 256 KiB per decoded float32 image
    per_image = 256 * 256 * 4
    assert CACHE_LIMIT_BYTES == 2**30
    assert fits_in_memory(CACHE_LIMIT_BYTES // per_image - 1, config)
    assert not fits_in_memory(CACHE_LIMIT_BYTES // per_image, config)
