"""Study 003's models at the paper's scale: DenseNet-161 (the student) against torchvision's parameter count and
DenseNet's channel arithmetic, Inception-V3 (the supervised baseline) against keras.applications."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd_keras.models import build_model, get_spec, list_models, with_taps
from kd_keras.models.weights import WeightsUnavailableError

# torchvision.models.densenet161(): sum(p.numel() for p in model.parameters()) with its 1000-class classifier.
TORCHVISION_DENSENET161 = 28_681_000


def _trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_densenet161_has_torchvisions_parameters_and_densenet_widths():
    model = build_model("densenet161", input_shape=(224, 224, 3), num_classes=1000)
    assert _trainable(model) == TORCHVISION_DENSENET161 == get_spec("densenet161").reference_params
    # Growth 48 from a 96-filter stem, blocks 6-12-36-24, transitions halving the channels.
    widths, channels = [], 96
    for k, layers in enumerate((6, 12, 36, 24)):
        channels += 48 * layers
        widths.append(channels)
        channels = channels // 2 if k < 3 else channels
    assert widths == [384, 768, 2112, 2208]
    tapped = with_taps(model, list(get_spec("densenet161").taps))
    assert [(t.shape[1], t.shape[-1]) for t in tapped.outputs[1:]] == list(zip((56, 28, 14, 7), widths, strict=True))
    assert model.get_layer("conv2_block1_1_conv").filters == 4 * 48  # the bottleneck: 4 x growth
    assert model.get_layer("conv1_conv").filters == 96
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("densenet161", input_shape=(64, 64, 3), num_classes=2, weights="imagenet")


def test_inception_v3_is_keras_applications_with_our_head(tmp_path, monkeypatch):
    model = build_model("inception_v3", input_shape=(299, 299, 3), num_classes=1000)
    reference = keras.applications.InceptionV3(weights=None)  # include_top: GAP + Dense(1000), as ours
    assert _trainable(model) == _trainable(reference) == get_spec("inception_v3").reference_params
    assert model.get_layer("normalization").mode == "tf"
    assert {"densenet161", "inception_v3"} <= set(list_models(role="teacher"))
    # Offline, ImageNet weights stop with the one-line message that names the file.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(WeightsUnavailableError, match="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        build_model("inception_v3", input_shape=(299, 299, 3), num_classes=2, weights="imagenet")
