"""Study 000's students (simple10, vgg16_d2, vgg16_d4) and study 004's densenet40.

Expected parameter counts are computed here from the architecture, layer by layer, not read from the registry:
a 3x3 convolution with bias has 9*in*out + out parameters, a BN layer 2*channels trainable ones (plus 2*channels
moving statistics), a Dense layer in*out + out. Two external anchors: Keras' VGG16 notop backbone has 14,714,688
parameters, and study 004 reports "DenseNet-40 ... with 1,364,142 trainable parameters" for its 14-label head.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from kd_keras.models import build_model, get_spec
from kd_keras.models.densenet_small import AdaptiveAveragePooling2D, adaptive_pool_matrix
from kd_keras.models.vgg_small import plain_vgg, vgg16_widths
from kd_keras.models.weights import NOTOP_WEIGHTS, WeightsUnavailableError


def _params(model, trainable=True) -> int:
    weights = model.trainable_weights if trainable else model.weights
    return int(sum(np.prod(w.shape) for w in weights))


def _conv3x3_stack(widths, in_channels, *, batch_norm=False) -> int:
    total, c = 0, in_channels
    for out in widths:
        total += 9 * c * out + (2 * out if batch_norm else out)  # kernel + (BN gamma/beta | bias)
        c = out
    return total


# ---------------------------------------------------------------------------------------------------------------
# Study 000


@pytest.mark.parametrize(
    ("name", "widths"),
    [
        ("simple10", [20, 20, 30, 30, 40, 40, 160, 160, 250, 250]),
        ("vgg16_d2", [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]),
        ("vgg16_d4", [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]),
    ],
)
@pytest.mark.parametrize(("channels", "classes"), [(3, 1000), (1, 2)])
def test_study000_params(name, widths, channels, classes):
    model = build_model(name, input_shape=(32, 32, channels), num_classes=classes)
    expected = _conv3x3_stack(widths, channels) + widths[-1] * classes + classes
    assert _params(model) == _params(model, trainable=False) == expected
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == widths
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_simple10_reference_figure():
    """Simple10 at 224x224x3, 1000 classes: 1,254,340 conv + 251,000 head parameters (per layer, written out)."""
    conv = 560 + 3_620 + 5_430 + 8_130 + 10_840 + 14_440 + 57_760 + 230_560 + 360_250 + 562_750
    assert conv == 1_254_340
    model = build_model("simple10", input_shape=(224, 224, 3), num_classes=1000)
    assert _params(model) == conv + 250 * 1000 + 1000


def test_batch_norm_option():
    model = build_model("vgg16_d4", input_shape=(32, 32, 3), num_classes=2, batch_norm=True)
    widths = [w for block in vgg16_widths(4) for w in block]
    assert _params(model) == _conv3x3_stack(widths, 3, batch_norm=True) + 128 * 2 + 2
    assert _params(model, trainable=False) - _params(model) == 2 * sum(widths)  # BN moving mean/variance


def test_vgg16_width_divisor_one_is_keras_vgg16():
    """vgg16_widths(1) rebuilds VGG16's conv part: Keras' notop count and its kernel shapes, layer by layer."""
    ours = plain_vgg("vgg16_d1", (32, 32, 3), 1000, 0.0, vgg16_widths(1))
    keras_vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert _params(ours) - (512 * 1000 + 1000) == _params(keras_vgg) == 14_714_688
    ours_kernels = [layer.kernel.shape for layer in ours.layers if isinstance(layer, keras.layers.Conv2D)]
    keras_kernels = [layer.kernel.shape for layer in keras_vgg.layers if isinstance(layer, keras.layers.Conv2D)]
    assert ours_kernels == keras_kernels
    with pytest.raises(ValueError, match="divide 64"):
        vgg16_widths(3)


def test_study000_stages_at_300px():
    """Study 000 feeds 300x300 images: stages at 150, 75, 37, 18, 9 (2x2 max pooling floors), like VGG16's."""
    model = build_model("vgg16_d2", input_shape=(300, 300, 3), num_classes=5, dropout=0.5)
    assert get_spec("vgg16_d2").taps == ("stage1", "stage2", "stage3", "stage4", "stage5")
    assert [model.get_layer(f"stage{i}").output.shape[1] for i in range(1, 6)] == [150, 75, 37, 18, 9]
    assert model.get_layer("dropout").rate == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# Study 004: densenet40


def _densenet40_params(classes: int, in_channels: int = 3) -> int:
    """Trainable parameters of table VI's DenseNet-40 (torchvision/Keras DenseNet-121 layers), by hand."""

    def dense_layer(c):  # BN(c), 1x1 conv c->128, BN(128), 3x3 conv 128->32
        return 2 * c + c * 128 + 2 * 128 + 9 * 128 * 32

    total = 7 * 7 * in_channels * 64 + 2 * 64  # stem conv + BN
    total += sum(dense_layer(64 + 32 * i) for i in range(6))  # dense block 1: 64 -> 256 channels
    total += 2 * 256 + 256 * 128  # transition: BN + 1x1 conv 256 -> 128
    total += sum(dense_layer(128 + 32 * i) for i in range(12))  # dense block 2: 128 -> 512 channels
    total += 512 * 32 + 32 + 32 * 1024 + 1024 + 2 * 1024  # 1x1 conv 512->32, 1x1 conv 32->1024 (biases), BN
    return total + 1024 * classes + classes


def test_densenet40_params_equal_study004():
    assert _densenet40_params(14) == 1_364_142  # the paper's figure (14 CheXpert labels)
    model = build_model("densenet40", input_shape=(256, 256, 1), num_classes=14)
    assert _params(model) == 1_364_142
    assert get_spec("densenet40").reference_params == _densenet40_params(1000)
    # 40 = 1 stem + 2*6 + 1 transition + 2*12 + 2 convolutions
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 40
    # Table VI at 256x256: 64x64 (block 1), 32x32 (block 2), 8x8 with 32 planes (the attention-transfer map).
    shapes = [tuple(model.get_layer(t).output.shape[1:]) for t in get_spec("densenet40").taps]
    assert shapes == [(64, 64, 256), (32, 32, 512), (8, 8, 32), (8, 8, 1024)]


def _torch_adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's AdaptiveAvgPool2d definition, written as loops over NHWC."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c), dtype=np.float64)
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
            out[:, i, j, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((32, 32), (8, 8)), ((28, 28), (8, 8)), ((4, 6), (8, 8)), ((7, 9), (3, 2))]
)
def test_adaptive_average_pooling_matches_torch_definition(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=(2, *in_hw, 5)).astype("float32")
    ours = np.asarray(AdaptiveAveragePooling2D(out_hw)(x))
    np.testing.assert_allclose(ours, _torch_adaptive_avg_pool(x, *out_hw), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adaptive_pool_matrix(in_hw[0], out_hw[0]).sum(axis=1), 1.0, rtol=1e-6)


def test_densenet40_small_grey_input():
    """At 32 px dense block 2 is 4x4; the adaptive pool still gives study 004's 8x8 map (cells repeated)."""
    model = build_model("densenet40", input_shape=(32, 32, 1), num_classes=2)
    assert model.get_layer("stage2").output.shape[1:3] == (4, 4)
    assert model.get_layer("stage3").output.shape[1:] == (8, 8, 32)
    assert _params(model) == _densenet40_params(2)  # grey is repeated to RGB: same count as RGB
    logits = np.asarray(model(np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype("float32")))
    assert logits.shape == (2, 2) and np.all(np.isfinite(logits))


def test_densenet40_starts_from_densenet121_weights(tmp_path):
    """backbone_weights: the layers shared with Keras' DenseNet-121 come from its notop file; block 2's output
    equals Keras' DenseNet-121 "conv3_block12_concat" on the same (preprocessed) image."""
    keras_dn121 = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    notop = tmp_path / NOTOP_WEIGHTS["densenet121"].file_name
    with h5py.File(notop, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras_dn121)
    model = build_model("densenet40", input_shape=(32, 32, 3), num_classes=3, backbone_weights=str(notop))
    shared = [layer for layer in model.layers if layer.weights and layer.name in {x.name for x in keras_dn121.layers}]
    assert len(shared) == 2 + 6 * 4 + 2 + 12 * 4  # stem conv+BN, 4 per dense layer, transition BN+conv
    for layer in shared:
        for a, b in zip(layer.weights, keras_dn121.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    reference = keras.Model(keras_dn121.input, keras_dn121.get_layer("conv3_block12_concat").output)
    expected = np.asarray(reference(keras.applications.densenet.preprocess_input(x.copy())))
    ours = np.asarray(keras.Model(model.input, model.get_layer("stage2").output)(x))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_densenet40_imagenet_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_internet(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_internet)
    with pytest.raises(WeightsUnavailableError, match="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        build_model("densenet40", input_shape=(32, 32, 3), num_classes=2, backbone_weights="imagenet")
    # The registry keeps refusing weights="imagenet" for a student (the option is backbone_weights).
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("densenet40", input_shape=(32, 32, 3), num_classes=2, weights="imagenet")


def test_densenet40_keras_file_round_trip(tmp_path):
    """The custom adaptive-pooling layer is serialisable: a saved .keras file reloads and computes the same."""
    model = build_model("densenet40", input_shape=(40, 40, 1), num_classes=2, dropout=0.2)
    path = tmp_path / "densenet40.keras"
    model.save(path)
    again = keras.models.load_model(path)
    x = np.random.default_rng(3).uniform(0, 255, (1, 40, 40, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
