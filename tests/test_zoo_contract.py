"""Every registered model keeps the zoo's contract (see kd_keras.models.registry)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.models import build_model, get_spec, list_models, with_taps

ALL_MODELS = list_models()


def test_registry_is_populated():
    assert len(list_models(role="student")) >= 40
    assert {"vgg16", "resnet50", "densenet121"} <= set(list_models(role="teacher"))


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError, match="known models: .*squeezenet_v1_1"):
        build_model("no_such_net")


@pytest.mark.parametrize("bad_shape", [(31, 64, 3), (64, 64, 2), (64, 64)])
def test_bad_input_shape_is_refused(bad_shape):
    with pytest.raises(ValueError):
        build_model("squeezenet_v1_1", input_shape=bad_shape, num_classes=2)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_contract_small_grey_input(name):
    """32x32 grey input, 3 classes: logits out, named input/output, named taps, finite values."""
    spec = get_spec(name)
    size = 32
    model = build_model(name, input_shape=(size, size, 1), num_classes=3, dropout=0.2)
    assert model.name == name
    assert model.inputs[0].name == "image" or model.get_layer("image") is not None
    assert model.output.shape[-1] == 3
    assert model.layers[-1].name == "logits"
    assert model.get_layer("dropout").rate == pytest.approx(0.2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(2, size, size, 1)).astype("float32")
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (2, 3)
    assert np.all(np.isfinite(logits))
    # No softmax inside: logits are not a probability simplex.
    assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3) or np.any(logits < 0)
    assert spec.taps, f"{name} offers no feature taps"
    tapped = with_taps(model, list(spec.taps))
    outs = tapped(x, training=False)
    assert len(outs) == 1 + len(spec.taps)
    np.testing.assert_allclose(np.asarray(outs[0]), logits, rtol=1e-5, atol=1e-5)
    for t in outs[1:]:
        assert len(t.shape) == 4  # spatial maps for attention transfer / hints


def test_single_logit_binary_head():
    model = build_model("mobilenet_wd4", input_shape=(32, 32, 3), num_classes=1)
    assert model.output.shape[-1] == 1


def test_with_taps_names_missing_layer():
    model = build_model("mobilenet_wd4", input_shape=(32, 32, 3), num_classes=2)
    with pytest.raises(ValueError, match="taps offered"):
        with_taps(model, ["stage99"])


def test_student_weights_round_trip(tmp_path):
    model = build_model("squeezenet_v1_1", input_shape=(48, 48, 3), num_classes=2)
    path = tmp_path / "s.weights.h5"
    model.save_weights(path)
    again = build_model("squeezenet_v1_1", input_shape=(48, 48, 3), num_classes=2, weights=str(path))
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError):
        build_model("squeezenet_v1_1", input_shape=(48, 48, 3), num_classes=2, weights=str(tmp_path / "x.h5"))


def test_saved_keras_file_reloads(tmp_path):
    model = build_model("shufflenet_g3_wd4", input_shape=(40, 40, 1), num_classes=2)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.models.load_model(path)
    x = np.random.default_rng(1).uniform(0, 255, (1, 40, 40, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_saved_model_loads_in_a_fresh_process(tmp_path):
    """Custom layers (channel shuffle, hard-swish, normalisation) must be found without building anything first."""
    import subprocess
    import sys

    model = build_model("shufflenet_g3_wd4", input_shape=(32, 32, 3), num_classes=2)
    path = tmp_path / "m.keras"
    model.save(path)
    code = f"from kd_keras.models import load_model; m = load_model({str(path)!r}); print(m.output.shape[-1])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("2")
