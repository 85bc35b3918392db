"""SqueezeNet, SqueezeResNet and SqueezeNext match osmr/imgclsmob: parameter counts, map sizes, ceil-mode pooling."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.models import build_model, get_spec, list_models
from kd_keras.models.squeezenet import max_pool3x3_s2_ceil

# Trainable parameters at 1000 classes and 224x224x3, as asserted in the ``_test()`` functions of
# https://github.com/osmr/imgclsmob/blob/master/keras_/kerascv/models/squeezenet.py and .../squeezenext.py
# (the same counts are asserted in tensorflow2/tf2cv/models/ and pytorch/pytorchcv/models/ of the collection).
IMGCLSMOB_PARAMS = {
    "squeezenet_v1_0": 1_248_424,
    "squeezenet_v1_1": 1_235_496,
    "squeezeresnet_v1_0": 1_248_424,
    "squeezeresnet_v1_1": 1_235_496,
    "sqnxt23_w1": 724_056,
    "sqnxt23_w3d2": 1_511_824,
    "sqnxt23_w2": 2_583_752,
    "sqnxt23v5_w1": 921_816,
    "sqnxt23v5_w3d2": 1_953_616,
    "sqnxt23v5_w2": 3_366_344,
}

# Last-stage map at 224 px: imgclsmob ends with a fixed AvgPool2d(13) (SqueezeNet) or AvgPool2d(7) (SqueezeNext)
# whose output is 1x1, so its last stage must be 13x13 / 7x7 there; widths from get_squeezenet/get_squeezenext.
LAST_STAGE_AT_224 = {
    "squeezenet_v1_0": ("stage3", (13, 13, 512)),
    "squeezenet_v1_1": ("stage3", (13, 13, 512)),
    "squeezeresnet_v1_0": ("stage3", (13, 13, 512)),
    "squeezeresnet_v1_1": ("stage3", (13, 13, 512)),
    "sqnxt23_w1": ("stage4", (7, 7, 256)),
    "sqnxt23_w3d2": ("stage4", (7, 7, 384)),
    "sqnxt23_w2": ("stage4", (7, 7, 512)),
    "sqnxt23v5_w1": ("stage4", (7, 7, 256)),
    "sqnxt23v5_w3d2": ("stage4", (7, 7, 384)),
    "sqnxt23v5_w2": ("stage4", (7, 7, 512)),
}


def trainable_params(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def torch_conv(n: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output size of a PyTorch conv / floor-mode pool."""
    return (n + 2 * padding - kernel) // stride + 1


def torch_pool_ceil(n: int) -> int:
    """Output size of PyTorch's MaxPool2d(3, 2, ceil_mode=True) without padding."""
    return -(-(n - 3) // 2) + 1


def expected_stage_sides(name: str, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Stage map sizes imgclsmob's PyTorch layers give for an input of ``size`` (height, width)."""
    if name.startswith("sqnxt"):
        # 7x7/2 stem with padding 1, ceil-mode pool = stage 1; stages 2-4 start with stride-2 1x1 convs.
        sides = [torch_pool_ceil(torch_conv(n, 7, 2, padding=1)) for n in size]
        stages = [tuple(sides)]
        for _ in range(3):
            sides = [torch_conv(n, 1, 2) for n in sides]
            stages.append(tuple(sides))
        return stages
    # SqueezeNet: unpadded stride-2 stem (7x7 in v1.0, 3x3 in v1.1), then a ceil-mode pool before each stage.
    sides = [torch_conv(n, 7 if name.endswith("v1_0") else 3, 2) for n in size]
    stages = []
    for _ in range(3):
        sides = [torch_pool_ceil(n) for n in sides]
        stages.append(tuple(sides))
    return stages


def test_every_squeeze_model_is_registered():
    names = set(list_models(family="squeezenet")) | set(list_models(family="squeezenext"))
    assert names == set(IMGCLSMOB_PARAMS)


@pytest.mark.parametrize("name", sorted(IMGCLSMOB_PARAMS))
def test_trainable_params_equal_imgclsmob(name):
    model = build_model(name, input_shape=(224, 224, 3), num_classes=1000)
    assert trainable_params(model) == IMGCLSMOB_PARAMS[name]
    assert get_spec(name).reference_params == IMGCLSMOB_PARAMS[name]
    assert tuple(model.output.shape) == (None, 1000)
    taps = get_spec(name).taps
    got = [tuple(model.get_layer(t).output.shape[1:3]) for t in taps]
    assert got == expected_stage_sides(name, (224, 224))
    last_tap, last_shape = LAST_STAGE_AT_224[name]
    assert taps[-1] == last_tap
    assert tuple(model.get_layer(last_tap).output.shape[1:]) == last_shape


@pytest.mark.parametrize("name", ["squeezenet_v1_0", "squeezeresnet_v1_1", "sqnxt23v5_w1"])
@pytest.mark.parametrize("size", [(32, 32), (33, 47)])
def test_small_and_odd_inputs_follow_pytorch_shapes(name, size):
    """Grey inputs of 32x32 and 33x47: every map has PyTorch's size and none collapses to zero."""
    model = build_model(name, input_shape=(*size, 1), num_classes=1)
    expected = expected_stage_sides(name, size)
    got = [tuple(model.get_layer(t).output.shape[1:3]) for t in get_spec(name).taps]
    assert got == expected
    assert min(expected[-1]) >= 1
    x = np.random.default_rng(0).uniform(0, 255, (2, *size, 1)).astype("float32")
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (2, 1)
    assert np.all(np.isfinite(logits))


def test_pytorch_size_formulas_give_imgclsmob_sizes_at_224():
    # The hand-checked chains: 224 -> 109 -> 54 -> 27 -> 13 (v1.0), 224 -> 111 -> 55 -> 27 -> 13 (v1.1),
    # 224 -> 110 -> 55 -> 28 -> 14 -> 7 (SqueezeNext).
    assert expected_stage_sides("squeezenet_v1_0", (224, 224)) == [(54, 54), (27, 27), (13, 13)]
    assert expected_stage_sides("squeezenet_v1_1", (224, 224)) == [(55, 55), (27, 27), (13, 13)]
    assert expected_stage_sides("sqnxt23_w1", (224, 224)) == [(55, 55), (28, 28), (14, 14), (7, 7)]


@pytest.mark.parametrize("size", [(4, 4), (5, 7), (8, 9), (13, 13)])
def test_ceil_mode_pool_matches_reference(size):
    """Against a direct loop over PyTorch ceil-mode windows (the last window may hang over the edge)."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 5.0, (2, *size, 3)).astype("float32")
    inputs = keras.Input(x.shape[1:])
    got = np.asarray(keras.Model(inputs, max_pool3x3_s2_ceil(inputs, "pool"))(x))
    out_h, out_w = (torch_pool_ceil(n) for n in size)
    expected = np.empty((2, out_h, out_w, 3), "float32")
    for i in range(out_h):
        for j in range(out_w):
            expected[:, i, j] = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
    np.testing.assert_array_equal(got, expected)


def test_squeezenet_classifier_gives_unclipped_logits():
    """imgclsmob's ReLU after the classifier conv is left out: logits can be negative."""
    model = build_model("squeezenet_v1_1", input_shape=(32, 32, 3), num_classes=4, dropout=0.5)
    assert model.layers[-1].name == "logits"
    assert model.get_layer("dropout").rate == pytest.approx(0.5)
    assert model.get_layer("final_conv").kernel.shape == (1, 1, 512, 4)
    # Push the classifier bias negative: with a ReLU, every logit would be exactly 0.
    model.get_layer("final_conv").bias.assign(np.full(4, -1e3, "float32"))
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    logits = np.asarray(model(x, training=False))
    assert np.all(logits < -100.0)
