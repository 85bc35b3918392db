"""Value tests of the zoo: what the networks compute, not only their shapes and parameter counts.

- Input normalisation: literal expected values (worked out by hand from the published ImageNet statistics) for
  every mode of :class:`~kd_keras.models.layers.PixelNormalization`, grey and RGB, with and without ``to_rgb``,
  and the normalisation each family's model applies to a grey and an RGB image.
- Residual connections: the number of ``Add`` layers per family, from the architectures' definitions; and, for
  MobileNetV2, MobileNetV3 and SqueezeResNet, which units pass their input through unchanged when their branch is
  zeroed (an identity shortcut does, a plain unit does not), against the units the papers give a shortcut.
- SqueezeResNet differs from SqueezeNet given the same weights.

Parameter counts (tests/test_params_*.py) and shapes (tests/test_zoo_contract.py) do not see any of these.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from kd_keras.models import build_model
from kd_keras.models.layers import PixelNormalization

# Pixels 0, 128 and 255 in every channel; RGB pixel (0, 128, 255) for the per-channel modes.
GREY = np.array([0.0, 128.0, 255.0], dtype="float32").reshape(1, 1, 3, 1)
RGB = np.array([0.0, 128.0, 255.0], dtype="float32").reshape(1, 1, 1, 3)

# ImageNet mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375), RGB, [0, 255] scale:
#   R: (0 - 123.675) / 58.395 = -2.117904, G: (128 - 116.28) / 57.12 = 0.205182, B: (255 - 103.53) / 57.375 = 2.64
IMAGENET_RGB = [-2.1179039, 0.2051821, 2.64]
# One grey channel: the channel means of mean and std, 114.495 and 57.63:
#   (0 - 114.495) / 57.63 = -1.986726, (128 - 114.495) / 57.63 = 0.234340, (255 - 114.495) / 57.63 = 2.438053
IMAGENET_GREY = [-1.9867257, 0.2343398, 2.4380531]
# A grey pixel 128 repeated to RGB, then per channel: (128 - mean_c) / std_c.
IMAGENET_GREY_128_TO_RGB = [0.0740646, 0.2051821, 0.4264924]
# Caffe: RGB -> BGR, minus the BGR mean (103.939, 116.779, 123.68): (255 - 103.939, 128 - 116.779, 0 - 123.68).
CAFFE_RGB = [151.061, 11.221, -123.68]
# One grey channel minus the mean of the BGR mean, 114.799333.
CAFFE_GREY = [-114.79933, 13.200667, 140.20067]
# A grey pixel 128 repeated to RGB (BGR order is the same), minus the BGR mean.
CAFFE_GREY_128_TO_RGB = [24.061, 11.221, 4.32]


def normalise(mode: str, x: np.ndarray, to_rgb: bool = False) -> np.ndarray:
    return np.asarray(PixelNormalization(mode, to_rgb=to_rgb)(x))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("imagenet", IMAGENET_GREY),
        ("caffe", CAFFE_GREY),
        ("tf", [-1.0, 0.003921569, 1.0]),
        ("unit", [0.0, 0.5019608, 1.0]),
    ],
)
def test_grey_normalisation_literal_values(mode, expected):
    got = normalise(mode, GREY)
    assert got.shape == (1, 1, 3, 1)
    np.testing.assert_allclose(got[0, 0, :, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("imagenet", IMAGENET_RGB),
        ("caffe", CAFFE_RGB),
        ("tf", [-1.0, 0.003921569, 1.0]),
        ("unit", [0.0, 0.5019608, 1.0]),
    ],
)
def test_rgb_normalisation_literal_values(mode, expected):
    got = normalise(mode, RGB)
    assert got.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(got[0, 0, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("imagenet", IMAGENET_GREY_128_TO_RGB), ("caffe", CAFFE_GREY_128_TO_RGB), ("unit", [0.5019608] * 3)],
)
def test_grey_to_rgb_normalisation_literal_values(mode, expected):
    got = normalise(mode, np.full((1, 1, 1, 1), 128.0, dtype="float32"), to_rgb=True)
    assert got.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(got[0, 0, 0], expected, rtol=1e-5, atol=1e-6)


def test_to_rgb_leaves_an_rgb_image_as_it_is():
    np.testing.assert_allclose(normalise("imagenet", RGB, to_rgb=True)[0, 0, 0], IMAGENET_RGB, rtol=1e-5)
    np.testing.assert_allclose(normalise("caffe", RGB, to_rgb=True)[0, 0, 0], CAFFE_RGB, rtol=1e-5)


# What each family's model does to a grey pixel 128 and to the RGB pixel (0, 128, 255): the students normalise
# with ImageNet statistics (one grey channel stays one channel); densenet40 and the DenseNet teachers repeat grey
# to RGB first (their ImageNet weights need 3 channels); VGG16 / ResNet50 use Keras' caffe preprocessing.
MODEL_NORMALISATION = {
    "mobilenet_wd4": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "fdmobilenet_wd4": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "mobilenetv2_wd4": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "mobilenetv3_small_w1": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "shufflenet_g1_wd4": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "shufflenetv2_wd2": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "squeezenet_v1_1": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "squeezeresnet_v1_1": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "sqnxt23_w1": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "simple10": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "vgg16_d4": ([IMAGENET_GREY[1]], IMAGENET_RGB),
    "densenet40": (IMAGENET_GREY_128_TO_RGB, IMAGENET_RGB),
    "densenet121": (IMAGENET_GREY_128_TO_RGB, IMAGENET_RGB),
    "vgg16": (CAFFE_GREY_128_TO_RGB, CAFFE_RGB),
    "resnet50": (CAFFE_GREY_128_TO_RGB, CAFFE_RGB),
}


@pytest.mark.parametrize("name", sorted(MODEL_NORMALISATION))
@pytest.mark.parametrize("channels", [1, 3])
def test_each_family_normalises_its_input_as_its_weights_expect(name, channels):
    model = build_model(name, input_shape=(32, 32, channels), num_classes=2)
    assert model.layers[1].name == "normalization", "the first layer after the input normalises"
    normalised = keras.Model(model.input, model.get_layer("normalization").output)
    grey_expected, rgb_expected = MODEL_NORMALISATION[name]
    if channels == 1:
        x, expected = np.full((1, 32, 32, 1), 128.0, "float32"), grey_expected
    else:
        x, expected = np.broadcast_to(RGB, (1, 32, 32, 3)).astype("float32"), rgb_expected
    got = np.asarray(normalised(x))
    assert got.shape[-1] == len(expected)
    np.testing.assert_allclose(got[0, 5, 7], expected, rtol=1e-5, atol=1e-6)
    # The normalised image feeds the network: the first layer that reads it reads the normalisation's output.
    output = model.get_layer("normalization").output
    consumers = [layer for layer in model.layers if any(t is output for t in _inputs(layer))]
    assert consumers, f"{name}: nothing reads the normalised image"


def _inputs(layer) -> list:
    try:
        inputs = layer.input
    except (AttributeError, ValueError):
        return []
    return inputs if isinstance(inputs, list) else [inputs]


# Number of residual Add layers, from each architecture's definition (independent of width and input size):
# - MobileNetV2: inverted residuals with stride 1 and equal in/out channels: stages [16], [24]*2, [32]*3,
#   [64]*4 + [96]*3, [160]*3 + [320], each stage's first unit strided (but the first) -> 1 + 2 + (3 + 2) + 2 = 10;
# - MobileNetV3-Small: units 16(s2) | 24(s2), 24 | 40(s2), 40, 40, 48, 48 | 96(s2), 96, 96 -> 1 + 3 + 2 = 6;
#   MobileNetV3-Large: 16 | 24(s2), 24 | 40(s2), 40, 40 | 80(s2), 80, 80, 80, 112, 112 | 160(s2), 160, 160
#   -> 1 + 1 + 2 + 4 + 2 = 10;
# - ShuffleNet v1: 4 + 8 + 4 units, the first of each stage concatenates -> 3 + 7 + 3 = 13;
# - ShuffleNetV2: concatenation, no addition -> 0;
# - SqueezeNext: every unit adds (identity or 1x1 shortcut): SqNxt-23 6 + 6 + 8 + 1, v5 2 + 4 + 14 + 1 = 21;
# - SqueezeNet: none; SqueezeResNet: simple bypass around Fire 3, 5, 7, 9 -> 4;
# - MobileNet, FD-MobileNet, VGG-style students, DenseNets: none; ResNet50: 3 + 4 + 6 + 3 = 16 bottlenecks.
ADD_LAYERS = {
    "mobilenetv2_wd4": 10,
    "mobilenetv2_w1": 10,
    "mobilenetv3_small_w1": 6,
    "mobilenetv3_large_w1": 10,
    "shufflenet_g3_wd4": 13,
    "shufflenetv2_wd2": 0,
    "sqnxt23_w1": 21,
    "sqnxt23v5_w1": 21,
    "squeezenet_v1_0": 0,
    "squeezenet_v1_1": 0,
    "squeezeresnet_v1_0": 4,
    "squeezeresnet_v1_1": 4,
    "mobilenet_wd4": 0,
    "fdmobilenet_wd4": 0,
    "simple10": 0,
    "vgg16_d4": 0,
    "densenet40": 0,
    "resnet50": 16,
}


@pytest.mark.parametrize("name", sorted(ADD_LAYERS))
def test_number_of_residual_additions(name):
    model = build_model(name, input_shape=(32, 32, 1), num_classes=2)
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == ADD_LAYERS[name], adds


# Units with an identity shortcut, from the definitions (see ADD_LAYERS); SqueezeResNet: Fire 3, 5, 7, 9 of
# fire2..fire9. v1.0 stages hold Fire 2-4 | 5-8 | 9, v1.1 Fire 2-3 | 4-5 | 6-9.
IDENTITY_UNITS = {
    "mobilenetv2_wd4": (
        "conv3_conv",
        {"stage2_unit2", "stage3_unit2", "stage3_unit3", "stage4_unit2", "stage4_unit3", "stage4_unit4",
         "stage4_unit6", "stage4_unit7", "stage5_unit2", "stage5_unit3"},
    ),
    "mobilenetv3_small_w1": (
        "conv2_conv",
        {"stage2_unit2", "stage3_unit2", "stage3_unit3", "stage3_unit5", "stage4_unit2", "stage4_unit3"},
    ),
    "squeezeresnet_v1_0": (
        "expand",
        {"stage1_unit2", "stage2_unit1", "stage2_unit3", "stage3_unit1"},
    ),
    "squeezeresnet_v1_1": (
        "expand",
        {"stage1_unit2", "stage2_unit2", "stage3_unit2", "stage3_unit4"},
    ),
    "squeezenet_v1_1": ("expand", set()),
}  # fmt: skip

_UNIT = re.compile(r"^(stage\d+_unit\d+)_")


def _unit_boundaries(model: keras.Model) -> dict[str, tuple]:
    """unit -> (its input tensor, its output tensor), found without looking at how the unit is wired inside:
    the input is what the unit's first layer reads, the output what the first layer after the unit reads."""
    layers = model.layers
    first: dict[str, int] = {}
    for index, layer in enumerate(layers):
        match = _UNIT.match(layer.name)
        if match and match.group(1) not in first:
            first[match.group(1)] = index
    boundaries = {}
    for unit, start in first.items():
        after = next(
            layer
            for layer in layers[start + 1 :]
            if not layer.name.startswith(unit + "_") and not re.fullmatch(r"stage\d+", layer.name)
        )
        boundaries[unit] = (layers[start].input, after.input)
    return boundaries


@pytest.mark.parametrize("name", sorted(IDENTITY_UNITS))
def test_identity_shortcuts_pass_the_unit_input_through_when_the_branch_is_zeroed(name):
    branch_end, expected = IDENTITY_UNITS[name]
    model = build_model(name, input_shape=(64, 64, 3), num_classes=2)
    boundaries = _unit_boundaries(model)
    assert expected <= set(boundaries), sorted(boundaries)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    passes = set()
    for unit, (unit_in, unit_out) in boundaries.items():
        zeroed = [layer for layer in model.layers if layer.name.startswith(f"{unit}_{branch_end}")]
        assert zeroed, f"{name}: no layer {unit}_{branch_end}*"
        saved = [layer.get_weights() for layer in zeroed]
        for layer in zeroed:
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
        got_in, got_out = (np.asarray(t) for t in keras.Model(model.input, [unit_in, unit_out])(x, training=False))
        for layer, weights in zip(zeroed, saved, strict=True):
            layer.set_weights(weights)
        assert np.abs(got_in).max() > 0, f"{name} {unit}: a zero input would make the check weak"
        if got_in.shape == got_out.shape and np.array_equal(got_in, got_out):
            passes.add(unit)
    assert passes == expected


@pytest.mark.parametrize("version", ["v1_0", "v1_1"])
def test_squeezeresnet_differs_from_squeezenet_with_the_same_weights(version):
    plain = build_model(f"squeezenet_{version}", input_shape=(64, 64, 1), num_classes=3)
    residual = build_model(f"squeezeresnet_{version}", input_shape=(64, 64, 1), num_classes=3)
    residual.set_weights(plain.get_weights())  # the shortcuts add no weights: the same list fits
    x = np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 1)).astype("float32")
    a, b = np.asarray(plain(x)), np.asarray(residual(x))
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    assert np.abs(a - b).max() > 1e-3 * (np.abs(a).max() + 1e-6)
    # The stage outputs differ already at the first shortcut (Fire 3, in stage 1 in both versions).
    stage1 = [keras.Model(m.input, m.get_layer("stage1").output) for m in (plain, residual)]
    assert not np.allclose(np.asarray(stage1[0](x)), np.asarray(stage1[1](x)))
