"""ShuffleNet and ShuffleNetV2 match osmr/imgclsmob: parameter counts, stage shapes, channel shuffle."""

from __future__ import annotations

import numpy as np
import pytest

from kd_keras.models import build_model, get_spec, list_models
from kd_keras.models.shufflenet import ChannelShuffle

# Trainable parameters at 1000 classes and 224x224x3, as asserted in the ``_test()`` functions of
# https://github.com/osmr/imgclsmob/blob/master/tensorflow2/tf2cv/models/shufflenet.py and .../shufflenetv2.py
# (the same counts are asserted in the PyTorch and Gluon versions of the collection).
IMGCLSMOB_PARAMS = {
    "shufflenet_g1_w1": 1_531_936,
    "shufflenet_g2_w1": 1_733_848,
    "shufflenet_g3_w1": 1_865_728,
    "shufflenet_g4_w1": 1_968_344,
    "shufflenet_g8_w1": 2_434_768,
    "shufflenet_g1_w3d4": 975_214,
    "shufflenet_g3_w3d4": 1_238_266,
    "shufflenet_g1_wd2": 534_484,
    "shufflenet_g3_wd2": 718_324,
    "shufflenet_g1_wd4": 209_746,
    "shufflenet_g3_wd4": 305_902,
    "shufflenetv2_wd2": 1_366_792,
    "shufflenetv2_w1": 2_278_604,
    "shufflenetv2_w3d2": 4_406_098,
    "shufflenetv2_w2": 7_601_686,
}


def trainable_params(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_every_shufflenet_is_registered():
    assert set(list_models(family="shufflenet")) | set(list_models(family="shufflenetv2")) == set(IMGCLSMOB_PARAMS)


@pytest.mark.parametrize("name", sorted(IMGCLSMOB_PARAMS))
def test_trainable_params_equal_imgclsmob(name):
    model = build_model(name, input_shape=(224, 224, 3), num_classes=1000)
    assert trainable_params(model) == IMGCLSMOB_PARAMS[name]
    assert get_spec(name).reference_params == IMGCLSMOB_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "stage_shapes"),
    [
        # imgclsmob at 224: stem 56x56, stages 28, 14, 7; widths from get_shufflenet / get_shufflenetv2.
        ("shufflenet_g3_w1", [(28, 28, 240), (14, 14, 480), (7, 7, 960)]),
        ("shufflenet_g3_wd4", [(28, 28, 60), (14, 14, 120), (7, 7, 240)]),
        ("shufflenetv2_wd2", [(28, 28, 48), (14, 14, 96), (7, 7, 192)]),
    ],
)
def test_stage_shapes_at_224(name, stage_shapes):
    model = build_model(name, input_shape=(224, 224, 3), num_classes=10)
    got = [tuple(model.get_layer(t).output.shape[1:]) for t in get_spec(name).taps]
    assert got == stage_shapes


@pytest.mark.parametrize("name", ["shufflenet_g3_wd4", "shufflenetv2_wd2"])
def test_odd_input_size_follows_pytorch_shapes(name):
    """33x47 grey input: both branches of every stride-2 unit agree, sizes follow PyTorch's formulas."""
    model = build_model(name, input_shape=(33, 47, 1), num_classes=1)

    def conv_s2(n):  # 3x3, stride 2, padding 1
        return (n - 1) // 2 + 1

    def pool(n):  # v1: padding 1 (like conv_s2); v2: padding 0 with ceil_mode
        return conv_s2(n) if name.startswith("shufflenet_") else n // 2

    sizes = [pool(conv_s2(n)) for n in (33, 47)]
    expected = []
    for _ in range(3):
        sizes = [conv_s2(n) for n in sizes]
        expected.append(tuple(sizes))
    got = [tuple(model.get_layer(t).output.shape[1:3]) for t in get_spec(name).taps]
    assert got == expected
    x = np.random.default_rng(0).uniform(0, 255, (2, 33, 47, 1)).astype("float32")
    assert np.asarray(model(x, training=False)).shape == (2, 1)


def test_channel_shuffle_interleaves_groups():
    # 2 pixels x 6 channels; groups=3 -> channels [0 1 | 2 3 | 4 5] become [0 2 4 1 3 5].
    x = np.arange(12, dtype="float32").reshape(1, 1, 2, 6)
    out = np.asarray(ChannelShuffle(groups=3)(x))
    expected = x[..., [0, 2, 4, 1, 3, 5]]
    np.testing.assert_array_equal(out, expected)
    # Any batch size (the reshape uses -1 for the batch axis).
    batch = np.stack([x[0], x[0] + 100, x[0] - 7])
    np.testing.assert_array_equal(np.asarray(ChannelShuffle(groups=3)(batch)), batch[..., [0, 2, 4, 1, 3, 5]])
