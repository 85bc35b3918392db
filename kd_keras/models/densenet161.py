"""DenseNet-161 (Huang et al. 2017), study 003's student: growth rate 48, a 96-filter stem, dense blocks of 6, 12, 36
and 24 layers.

``keras.applications`` offers DenseNet-121/169/201 only, all with growth rate 32 and a 64-filter stem, so this file
builds the network itself with the same layer structure and Keras' layer names (``conv1_conv``,
``conv2_block1_1_conv``, ``pool2_relu``, ..., the final ``bn``/``relu``): BN -> ReLU -> 1x1 conv (4 x growth) ->
BN -> ReLU -> 3x3 conv (growth) per dense layer, transitions that halve the channels and the resolution, bias-free
convolutions, BatchNorm epsilon 1.001e-5. With a 1000-class head it has 28,681,000 trainable parameters, torchvision's
``densenet161`` count (BatchNorm running statistics are not trainable in either).

Input: [0, 255] pixels, normalised inside the model with ImageNet's mean/std, a grey image repeated to RGB (as the
DenseNet teachers). Stage outputs (``taps``): ``pool2_relu``, ``pool3_relu``, ``pool4_relu`` (each dense block's
output before its transition) and ``relu`` (the last block's). No ImageNet weights exist for Keras; ``weights`` is
``None`` or the ``.weights.h5`` file of this model.

Example:
    >>> from kd_keras.models import build_model
    >>> student = build_model("densenet161", input_shape=(299, 299, 3), num_classes=2)
    >>> student.get_layer("features").output.shape
    (None, 2208)
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model

_BN_EPSILON = 1.001e-5  # keras.applications' DenseNet
TAPS = ("pool2_relu", "pool3_relu", "pool4_relu", "relu")


def _bn_relu(x, name: str):
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _dense_layer(x, growth_rate: int, name: str):
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(x)
    y = layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = layers.Conv2D(4 * growth_rate, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = _bn_relu(y, f"{name}_1")
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def _transition(x, name: str):
    x = _bn_relu(x, name)
    x = layers.Conv2D(int(x.shape[-1] * 0.5), 1, use_bias=False, name=f"{name}_conv")(x)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def densenet_features(x, blocks: tuple[int, ...], growth_rate: int, stem_filters: int):
    """The DenseNet trunk on a normalised RGB tensor, up to the final BN -> ReLU (layer ``"relu"``).

    Args:
        x: the normalised input tensor.
        blocks: dense layers per block (DenseNet-161: ``(6, 12, 36, 24)``).
        growth_rate: channels each dense layer adds (DenseNet-161: 48).
        stem_filters: filters of the 7x7 stem convolution (DenseNet-161: 96).
    """
    x = layers.ZeroPadding2D(3)(x)
    x = layers.Conv2D(stem_filters, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = _bn_relu(x, "conv1")
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for stage, count in enumerate(blocks, start=2):
        for k in range(1, count + 1):
            x = _dense_layer(x, growth_rate, f"conv{stage}_block{k}")
        if stage < len(blocks) + 1:
            x = _transition(x, f"pool{stage}")
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="bn")(x)
    return layers.Activation("relu", name="relu")(x)


@register_model(
    "densenet161",
    family="densenet",
    role="teacher",
    reference_params=28_681_000,
    taps=TAPS,
    source="Huang et al. 2017 (arXiv:1608.06993); torchvision densenet161; study 003's student",
)
def densenet161(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    weights: str | os.PathLike | None = None,
) -> keras.Model:
    """DenseNet-161 with a fresh ``num_classes`` head.

    Args:
        input_shape: ``(height, width, channels)``, 1 or 3 channels, at least 32 px.
        num_classes: number of logits.
        dropout: dropout rate before the classifier (0 disables).
        weights: ``None`` or the path of a ``.weights.h5`` file of this model (Keras has no ImageNet weights for
            DenseNet-161; ``"imagenet"`` is refused with one line).
    """
    if weights is not None and str(weights) == "imagenet":
        raise ValueError("densenet161: Keras offers no ImageNet weights for DenseNet-161; build it with "
                         "weights=None (or densenet121/169/201, which have them)")
    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", to_rgb=True, name="normalization")(inputs)
    x = densenet_features(x, (6, 12, 36, 24), growth_rate=48, stem_filters=96)
    model = keras.Model(inputs, classifier_head(x, num_classes, dropout), name="densenet161")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"densenet161: weights file {path} does not exist")
        model.load_weights(str(path))
    return model
