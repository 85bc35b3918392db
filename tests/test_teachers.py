"""Teachers from keras.applications and their offline-safe weights.

Reference parameter counts are Keras' ``model.summary()`` of the include-top models at 1000 classes (ResNet50
25,636,712 total / 25,583,592 trainable; DenseNet-121 8,062,504 / 7,978,856; DenseNet-169 14,307,880 /
14,149,480; DenseNet-201 20,242,984 / 20,013,928; the trainable ones are also torchvision's DenseNet counts) and
the VGG16 notop backbone's 14,714,688. Those top models end in the same global-average-pool + Dense head as ours,
so only the Dense layer changes with the number of classes. Nothing here downloads: the "imagenet" tests point
KERAS_HOME at an empty directory and make the download fail.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from kd_keras.models import build_model, get_spec, list_models, with_taps
from kd_keras.models.layers import PixelNormalization
from kd_keras.models.weights import NOTOP_WEIGHTS, NotopWeights, WeightsUnavailableError

# name: (total params at 1000 classes, trainable at 1000 classes, width of the pooled features)
KERAS_TOP_COUNTS = {
    "resnet50": (25_636_712, 25_583_592, 2048),
    "densenet121": (8_062_504, 7_978_856, 1024),
    "densenet169": (14_307_880, 14_149_480, 1664),
    "densenet201": (20_242_984, 20_013_928, 1920),
}
VGG16_NOTOP_PARAMS = 14_714_688

# Stage resolutions at 32x32 input: VGG halves 5 times; ResNet/DenseNet taps start at 1/4.
STAGE_SIZES_32 = {
    "vgg16": (16, 8, 4, 2, 1),
    "resnet50": (8, 4, 2, 1),
    "densenet121": (8, 4, 2, 1),
    "densenet169": (8, 4, 2, 1),
    "densenet201": (8, 4, 2, 1),
}
PREPROCESS = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "densenet121": keras.applications.densenet.preprocess_input,
    "densenet169": keras.applications.densenet.preprocess_input,
    "densenet201": keras.applications.densenet.preprocess_input,
}


def _params(model, trainable=True) -> int:
    weights = model.trainable_weights if trainable else model.weights
    return int(sum(np.prod(w.shape) for w in weights))


def test_teachers_are_registered():
    # The keras.applications teachers, plus study 003's DenseNet-161 and Inception-V3 (their own modules).
    assert set(list_models(role="teacher")) == set(STAGE_SIZES_32) | {"densenet161", "inception_v3"}
    # Keras has no DenseNet-161 (study 003): the module says so (kd_keras.models.densenet161 builds it).
    from kd_keras.models import teachers

    assert "DenseNet-161" in teachers.__doc__ and "densenet201" in teachers.__doc__


def test_vgg16_params_and_grey_input():
    """A grey image goes through as RGB: same parameters, same logits as the RGB teacher on the repeated image."""
    model = build_model("vgg16", input_shape=(32, 32, 1), num_classes=3, dropout=0.3)
    assert _params(model) == VGG16_NOTOP_PARAMS + 512 * 3 + 3
    assert model.get_layer("block1_conv1").kernel.shape == (3, 3, 3, 64)
    assert model.get_layer("dropout").rate == pytest.approx(0.3)
    # The same weights in an RGB-input teacher give the same logits for the grey image repeated to RGB.
    rgb_model = build_model("vgg16", input_shape=(32, 32, 3), num_classes=3)
    rgb_model.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(model(x)), np.asarray(rgb_model(np.repeat(x, 3, axis=-1))), rtol=1e-5, atol=1e-5
    )


# Which preprocessing each Keras network's ImageNet weights expect (keras.applications.<net>.preprocess_input).
EXPECTED_MODE = {
    "vgg16": "caffe",
    "resnet50": "caffe",
    "densenet121": "imagenet",
    "densenet169": "imagenet",
    "densenet201": "imagenet",
}

@pytest.mark.parametrize("mode", ["caffe", "imagenet"])
def test_normalization_equals_keras_preprocess_input(mode):
    name = {"caffe": "resnet50", "imagenet": "densenet121"}[mode]
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(PixelNormalization(mode, to_rgb=True)(x))
    np.testing.assert_allclose(ours, np.asarray(PREPROCESS[name](x.copy())), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(STAGE_SIZES_32))
def test_params_normalization_and_taps(name):
    """One build per teacher (they are slow to build):

    - parameters at 5 classes: Keras' 1000-class counts with the Dense layer swapped (F*1000+1000 -> F*5+5);
      VGG16: Keras' notop count + 512*5+5;
    - the normalisation its Keras weights expect;
    - its taps are backbone layers at the expected stage sizes, and tapping leaves the logits unchanged.
    """
    model = build_model(name, input_shape=(32, 32, 3), num_classes=5)
    if name == "vgg16":
        assert _params(model) == _params(model, trainable=False) == VGG16_NOTOP_PARAMS + 512 * 5 + 5
        assert get_spec(name).reference_params is None  # its Keras top (4096-wide FC layers) is not ours
    else:
        total, trainable, features = KERAS_TOP_COUNTS[name]
        head_1000, head_5 = features * 1000 + 1000, features * 5 + 5
        assert _params(model) == trainable - head_1000 + head_5
        assert _params(model, trainable=False) == total - head_1000 + head_5
        assert get_spec(name).reference_params == trainable
        assert model.get_layer("features").output.shape[-1] == features
    normalization = model.get_layer("normalization")
    assert (normalization.mode, normalization.to_rgb) == (EXPECTED_MODE[name], True)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    taps = get_spec(name).taps
    tapped = with_taps(model, list(taps))
    assert tuple(t.shape[1] for t in tapped.outputs[1:]) == STAGE_SIZES_32[name]
    outs = tapped(x)
    np.testing.assert_allclose(np.asarray(outs[0]), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Weights


def _save_legacy_h5(model: keras.Model, path) -> None:
    """Write ``model``'s weights in Keras' legacy .h5 layout, the layout of Keras' cached notop files."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.fixture(scope="module")
def vgg16_notop(tmp_path_factory):
    """A randomly initialised Keras VGG16 notop backbone and its weights as a Keras-style notop file."""
    backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path_factory.mktemp("notop") / NOTOP_WEIGHTS["vgg16"].file_name
    _save_legacy_h5(backbone, path)
    return backbone, path


@pytest.fixture
def offline_keras_home(tmp_path, monkeypatch):
    """An empty Keras cache and a download that fails as it does without internet."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def no_internet(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", no_internet)
    return tmp_path / "keras_home" / "models"


@pytest.mark.parametrize("name", sorted(STAGE_SIZES_32))
def test_imagenet_offline_is_one_clear_error(name, offline_keras_home):
    with pytest.raises(WeightsUnavailableError) as info:
        build_model(name, input_shape=(32, 32, 3), num_classes=2, weights="imagenet")
    message = str(info.value)
    file_name = f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert "\n" not in message
    assert file_name in message  # the exact file to provide
    assert str(offline_keras_home) in message and "~/.keras/models/" in message  # where Keras caches it
    assert "weights=None" in message and f"weights='/path/to/{file_name}'" in message  # the ways out
    assert "Temporary failure in name resolution" in message  # what failed
    # No chained URL/socket traceback under it.
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_imagenet_real_download_failure(tmp_path, monkeypatch):
    """Keras' real get_file against a closed local port (no internet needed) ends in the same single error."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = NOTOP_WEIGHTS["vgg16"]
    monkeypatch.setitem(NOTOP_WEIGHTS, "vgg16", NotopWeights(spec.file_name, "http://127.0.0.1:9/none.h5", spec.md5))
    with pytest.raises(WeightsUnavailableError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        build_model("vgg16", input_shape=(32, 32, 3), num_classes=2, weights="imagenet")
    assert not (tmp_path / "models" / spec.file_name).exists()  # no partial file left for the next run


def _assert_backbone_equal(model, backbone):
    for layer in backbone.layers:
        if not layer.weights:
            continue
        for a, b in zip(layer.weights, model.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_imagenet_uses_cached_file_offline(vgg16_notop, offline_keras_home):
    backbone, notop_file = vgg16_notop
    offline_keras_home.mkdir(parents=True)
    (offline_keras_home / notop_file.name).write_bytes(notop_file.read_bytes())
    model = build_model("vgg16", input_shape=(32, 32, 3), num_classes=2, weights="imagenet")
    _assert_backbone_equal(model, backbone)


def test_notop_weights_path(vgg16_notop):
    """A notop file by path: backbone weights loaded; block5 features equal Keras' VGG16 on the normalised input."""
    backbone, notop_file = vgg16_notop
    model = build_model("vgg16", input_shape=(32, 32, 1), num_classes=4, weights=str(notop_file))
    _assert_backbone_equal(model, backbone)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    ours = np.asarray(with_taps(model, ["block5_pool"])(x)[1])
    normalized = np.asarray(model.get_layer("normalization")(x))  # (its mean: see test_normalization_equals_...)
    assert normalized.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(ours, np.asarray(backbone(normalized)), rtol=1e-4, atol=1e-4)


def test_bad_weights_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.h5"):
        build_model("vgg16", input_shape=(32, 32, 3), num_classes=2, weights=str(tmp_path / "no_such.h5"))
    # A Keras weights file of another network: one ValueError naming the file, not a deep Keras traceback.
    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="c")])
    wrong = tmp_path / "other.h5"
    _save_legacy_h5(other, wrong)
    with pytest.raises(ValueError, match=r"other\.h5 does not fit the vgg16 backbone"):
        build_model("vgg16", input_shape=(32, 32, 3), num_classes=2, weights=str(wrong))


def test_whole_teacher_weights_round_trip(tmp_path):
    """A .weights.h5 file saved from a teacher restores all of it, head included."""
    model = build_model("vgg16", input_shape=(32, 32, 3), num_classes=2)
    path = tmp_path / "teacher.weights.h5"
    model.save_weights(path)
    again = build_model("vgg16", input_shape=(32, 32, 3), num_classes=2, weights=str(path))
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
