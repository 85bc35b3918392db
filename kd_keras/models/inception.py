"""Inception-V3 (Szegedy et al. 2016) from ``keras.applications``: study 003's supervised baseline (its Table 1:
"Supervised, InceptionV3" on 2% and on 100% of the training labels).

``image`` ([0, 255] pixels) -> ``Resizing`` to 75 px when the input is smaller (Inception-V3's smallest input; the
zoo's contract is 32 px and up) -> :class:`~kd_keras.models.layers.PixelNormalization` ``"tf"`` (scale to [-1, 1],
what Keras' ImageNet weights expect; a grey image is repeated to RGB) -> the Keras backbone (``include_top=False``,
Keras' layer names) -> global average pooling ``"features"`` -> optional ``"dropout"`` -> Dense ``"logits"``.
Taps: ``mixed2`` (35x35 at 299 px), ``mixed7`` (17x17) and ``mixed10`` (8x8).

Weights: ``None``, ``"imagenet"`` (Keras' cached notop file; offline, one
:class:`~kd_keras.models.weights.WeightsUnavailableError` naming the file), a Keras notop ``.h5`` file, or a
``.weights.h5`` file saved from this model.

Example:
    >>> from kd_keras.models import build_model
    >>> model = build_model("inception_v3", input_shape=(299, 299, 3), num_classes=2)
    >>> model.get_layer("features").output.shape
    (None, 2048)
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model
from kd_keras.models.weights import load_backbone_weights, resolve_backbone_weights

MIN_SIZE = 75  # keras.applications.InceptionV3's smallest input
TAPS = ("mixed2", "mixed7", "mixed10")


@register_model(
    "inception_v3",
    family="inception",
    role="teacher",
    reference_params=23_817_352,
    taps=TAPS,
    source="Szegedy et al. 2016 (arXiv:1512.00567); keras.applications.InceptionV3; study 003's supervised baseline",
)
def inception_v3(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    weights: str | os.PathLike | None = None,
) -> keras.Model:
    """Inception-V3 with a fresh ``num_classes`` head.

    Args:
        input_shape: ``(height, width, channels)``; inputs under 75 px are resized to 75 inside the model.
        num_classes: number of logits.
        dropout: dropout rate before the classifier (0 disables).
        weights: ``None``, ``"imagenet"``, a Keras notop ``.h5`` file, or a ``.weights.h5`` file of this model.
    """
    whole_model_file = None
    backbone_file = None
    if weights is not None and str(weights).endswith(".weights.h5"):
        whole_model_file = Path(weights).expanduser()
        if not whole_model_file.is_file():
            raise FileNotFoundError(f"inception_v3: weights file {whole_model_file} does not exist")
    else:
        backbone_file = resolve_backbone_weights("inception_v3", weights)  # offline: one line, before building
    inputs = image_input(input_shape)
    x = inputs
    height, width = input_shape[:2]
    if min(height, width) < MIN_SIZE:
        x = keras.layers.Resizing(max(height, MIN_SIZE), max(width, MIN_SIZE), name="resize_to_minimum")(x)
    x = PixelNormalization("tf", to_rgb=True, name="normalization")(x)
    backbone = keras.applications.InceptionV3(include_top=False, weights=None, input_tensor=x)
    if backbone_file is not None:
        load_backbone_weights(backbone, backbone_file, "inception_v3")
    model = keras.Model(inputs, classifier_head(backbone.output, num_classes, dropout), name="inception_v3")
    if whole_model_file is not None:
        model.load_weights(str(whole_model_file))
    return model
