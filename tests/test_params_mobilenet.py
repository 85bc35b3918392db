"""Trainable-parameter counts of the MobileNet families equal imgclsmob's, at 1000 classes and 224x224x3.

The reference numbers are copied from the ``_test()`` asserts of osmr/imgclsmob (the collection the OCT study 002
took its students from), not from our registry, so a wrong width, bias or SE rounding fails here:

- ``tensorflow2/tf2cv/models/mobilenet.py`` (MobileNet and FD-MobileNet; the same FD numbers are asserted in
  ``tensorflow2/tf2cv/models/fdmobilenet.py``);
- ``tensorflow2/tf2cv/models/mobilenetv2.py``;
- ``tensorflow2/tf2cv/models/mobilenetv3.py`` (the same numbers are asserted by the final
  ``pytorch/pytorchcv/models/mobilenetv3.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from kd_keras.models import build_model, get_spec, list_models

IMGCLSMOB_PARAMS = {
    # tensorflow2/tf2cv/models/mobilenet.py, _test()
    "mobilenet_w1": 4_231_976,
    "mobilenet_w3d4": 2_585_560,
    "mobilenet_wd2": 1_331_592,
    "mobilenet_wd4": 470_072,
    "fdmobilenet_w1": 2_901_288,
    "fdmobilenet_w3d4": 1_833_304,
    "fdmobilenet_wd2": 993_928,
    "fdmobilenet_wd4": 383_160,
    # tensorflow2/tf2cv/models/mobilenetv2.py, _test()
    "mobilenetv2_w1": 3_504_960,
    "mobilenetv2_w3d4": 2_627_592,
    "mobilenetv2_wd2": 1_964_736,
    "mobilenetv2_wd4": 1_516_392,
    # tensorflow2/tf2cv/models/mobilenetv3.py, _test()
    "mobilenetv3_small_w1": 2_945_288,
    "mobilenetv3_large_w1": 5_481_752,
}


def _trainable_params(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("name", sorted(IMGCLSMOB_PARAMS))
def test_trainable_params_equal_imgclsmob(name):
    model = build_model(name, input_shape=(224, 224, 3), num_classes=1000)
    assert _trainable_params(model) == IMGCLSMOB_PARAMS[name]
    # The registry advertises the same number (the README zoo table is generated from it).
    assert get_spec(name).reference_params == IMGCLSMOB_PARAMS[name]


def test_every_mobilenet_variant_has_a_reference():
    registered = {n for n in list_models() if "mobilenet" in n}
    assert registered == set(IMGCLSMOB_PARAMS)


@pytest.mark.parametrize(
    ("name", "taps", "stage_sizes"),
    [
        # 64 px: imgclsmob's strides give these stage resolutions (stride-2 convs pad 1 pixel on each side).
        ("mobilenet_wd4", ("stage1", "stage2", "stage3", "stage4", "stage5"), (32, 16, 8, 4, 2)),
        ("fdmobilenet_wd4", ("stage1", "stage2", "stage3", "stage4"), (16, 8, 4, 2)),
        ("mobilenetv2_wd4", ("stage1", "stage2", "stage3", "stage4", "stage5"), (32, 16, 8, 4, 2)),
        ("mobilenetv3_small_w1", ("stage1", "stage2", "stage3", "stage4"), (16, 8, 4, 2)),
        ("mobilenetv3_large_w1", ("stage1", "stage2", "stage3", "stage4", "stage5"), (32, 16, 8, 4, 2)),
    ],
)
def test_stage_resolutions(name, taps, stage_sizes):
    assert get_spec(name).taps == taps
    model = build_model(name, input_shape=(64, 64, 3), num_classes=2)
    assert tuple(model.get_layer(t).output.shape[1] for t in taps) == stage_sizes


def test_odd_input_size():
    """33x47 grey input, one logit: every stride-2 conv gives ceil(n / 2) (33->17->9->5->3->2, 47->24->...->2)."""
    model = build_model("mobilenetv2_wd4", input_shape=(33, 47, 1), num_classes=1)
    assert model.get_layer("stage5").output.shape[1:3] == (2, 2)
    x = np.random.default_rng(0).uniform(0, 255, (2, 33, 47, 1)).astype("float32")
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (2, 1) and np.all(np.isfinite(logits))


def test_strided_conv_pads_like_pytorch():
    """A 3x3 stride-2 conv on 6x6 pads one pixel on every side (PyTorch padding=1), not Keras' bottom/right only.

    With an all-ones input and kernel, the window sums are 4/6/9 (top-left window half outside the image); Keras'
    "same" would give 9 in the top-left corner.
    """
    import keras

    from kd_keras.models.mobilenet import BN_EPSILON, conv_bn

    inputs = keras.Input((6, 6, 1))
    model = keras.Model(inputs, conv_bn(inputs, 1, 3, 2, name="c", activation=None))
    model.get_layer("c_conv").kernel.assign(np.ones((3, 3, 1, 1), "float32"))
    out = np.asarray(model(np.ones((1, 6, 6, 1), "float32"), training=False))[0, :, :, 0]
    expected = np.array([[4, 6, 6], [6, 9, 9], [6, 9, 9]], "float32") / np.sqrt(1.0 + BN_EPSILON)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_hard_swish_and_sigmoid_values():
    from kd_keras.models.mobilenetv3 import HardSigmoid, HardSwish, round_channels

    x = np.array([[-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0]], dtype="float32")
    expected_sigmoid = np.clip(x + 3.0, 0.0, 6.0) / 6.0  # the paper's definition
    np.testing.assert_allclose(np.asarray(HardSigmoid()(x)), expected_sigmoid, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(HardSwish()(x)), x * expected_sigmoid, rtol=1e-6)
    # imgclsmob's make-divisible rule: SE squeezes of 16, 72, 960 channels; 0.35 x 40 channels.
    assert [round_channels(16 / 4), round_channels(72 / 4), round_channels(960 / 4)] == [8, 24, 240]
    assert round_channels(0.35 * 40) == 16
