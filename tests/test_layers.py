import numpy as np
import pytest

from kd_keras.models.layers import IMAGENET_MEAN, IMAGENET_STD, PixelNormalization


def test_imagenet_mode_matches_hand_computation():
    x = np.array([[[[0.0, 128.0, 255.0]]]], dtype="float32")
    got = np.asarray(PixelNormalization("imagenet")(x))
    want = (x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_caffe_mode_swaps_to_bgr_and_subtracts_mean():
    x = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    got = np.asarray(PixelNormalization("caffe")(x))
    np.testing.assert_allclose(got[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_grey_to_rgb_and_unit_modes():
    x = np.full((1, 2, 2, 1), 51.0, dtype="float32")
    assert PixelNormalization("unit", to_rgb=True)(x).shape == (1, 2, 2, 3)
    np.testing.assert_allclose(np.asarray(PixelNormalization("tf")(x)), 51 / 127.5 - 1, rtol=1e-6)


def test_unknown_mode_refused():
    with pytest.raises(ValueError):
        PixelNormalization("zscore")
