"""SqueezeNext (SqNxt-23 and SqNxt-23v5), as in the osmr/imgclsmob collection.

Gholami et al., "SqueezeNext: Hardware-Aware Neural Network Design", https://arxiv.org/abs/1803.10615.
Widths, kernels and parameter counts follow imgclsmob (``keras_/kerascv/models/squeezenext.py``, which study 002
adapted; the same network as its TF2/PyTorch versions):

- stem: 7x7 conv, stride 2, padding **1** (as imgclsmob, not 3), with bias -> BN -> ReLU, then a 3x3 stride-2
  max-pool in ceil mode (224 px: 110 -> 55);
- four stages of (6, 6, 8, 1) units (SqNxt-23) or (2, 4, 14, 1) units (SqNxt-23v5) with 32, 64, 128, 256 output
  channels times the width scale; the first unit of stages 2-4 has stride 2;
- a unit with input width ``c`` is 1x1 (``c/r``, stride s) -> 1x1 (``c/2r``) -> 1x3 (``c/r``) -> 3x1 (``c/r``)
  -> 1x1 (out), every conv with bias -> BN -> ReLU, added to the identity (a 1x1 conv -> BN -> ReLU shortcut
  when the stride is 2 or the width shrinks), then ReLU. ``r`` is 1 for stride 2, 4 when the width shrinks,
  otherwise 2;
- final block 1x1 conv (128 times the width scale) with bias -> BN -> ReLU, average pool, Dense logits.

imgclsmob's final pool is a fixed 7x7 average pool (the map size at 224 px); a global average pool (the layer
``"features"``) is the same at 224 px and works at any input size. Batch normalisation uses imgclsmob's epsilon
1e-5 and momentum 0.9. Optional dropout (layer ``"dropout"``) sits between the pooled features and the Dense
classifier; imgclsmob has none.

Example:
    >>> from kd_keras.models import build_model
    >>> model = build_model("sqnxt23_w1", input_shape=(224, 224, 3), num_classes=1000)
    >>> model.get_layer("stage4").output.shape  # (None, 7, 7, 256), as imgclsmob
"""

from __future__ import annotations

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model
from kd_keras.models.squeezenet import max_pool3x3_s2_ceil

_SOURCE = "Gholami et al. 2018 (arXiv:1803.10615); osmr/imgclsmob keras_/kerascv/models/squeezenext.py"
_TAPS = ("stage1", "stage2", "stage3", "stage4")
# Gluon/PyTorch batch-norm defaults used by imgclsmob.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
_UNITS_PER_STAGE = {"23": (6, 6, 8, 1), "23v5": (2, 4, 14, 1)}


def conv_bn_relu(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int | tuple[int, int],
    name: str,
    strides: int = 1,
) -> keras.KerasTensor:
    """Conv (with bias, "same" padding at stride 1, none at stride 2 for 1x1) -> BN -> ReLU.

    Args:
        x: input feature map.
        filters: output channels.
        kernel_size: 1, ``(1, 3)`` or ``(3, 1)`` (odd kernels, so "same" equals PyTorch's symmetric padding).
        name: prefix of the layer names.
        strides: 1, or 2 for a 1x1 conv (PyTorch's ``(n - 1) // 2 + 1`` outputs).

    Returns:
        The activated ``(batch, H', W', filters)`` output.

    Example:
        >>> y = conv_bn_relu(keras.Input((28, 28, 64)), 32, (1, 3), name="c")  # (None, 28, 28, 32)
    """
    padding = "same" if strides == 1 else "valid"
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def sqnxt_unit(
    x: keras.KerasTensor, out_channels: int, strides: int, name: str, output_name: str | None = None
) -> keras.KerasTensor:
    """One SqueezeNext unit (imgclsmob ``SqnxtUnit``).

    Args:
        x: input feature map with ``c`` channels.
        out_channels: output channels.
        strides: 1, or 2 for the first unit of stages 2-4.
        name: prefix of the layer names.
        output_name: name of the unit's final ReLU (``"stageN"`` for a stage's last unit).

    Returns:
        The ``(batch, H', W', out_channels)`` output.

    Example:
        >>> y = sqnxt_unit(keras.Input((55, 55, 32)), 64, strides=2, name="u")  # (None, 28, 28, 64)
    """
    in_channels = x.shape[-1]
    if strides == 2:
        reduction, resize_identity = 1, True
    elif in_channels > out_channels:
        reduction, resize_identity = 4, True
    else:
        reduction, resize_identity = 2, False
    identity = x
    if resize_identity:
        identity = conv_bn_relu(x, out_channels, 1, f"{name}_identity", strides=strides)
    y = conv_bn_relu(x, in_channels // reduction, 1, f"{name}_conv1", strides=strides)
    y = conv_bn_relu(y, in_channels // (2 * reduction), 1, f"{name}_conv2")
    y = conv_bn_relu(y, in_channels // reduction, (1, 3), f"{name}_conv3")
    y = conv_bn_relu(y, in_channels // reduction, (3, 1), f"{name}_conv4")
    y = conv_bn_relu(y, out_channels, 1, f"{name}_conv5")
    y = layers.Add(name=f"{name}_add")([y, identity])
    return layers.ReLU(name=output_name or f"{name}_relu")(y)


def squeezenext(
    version: str,
    width_scale: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    name: str = "squeezenext",
) -> keras.Model:
    """SqueezeNext (imgclsmob ``get_squeezenext``).

    Args:
        version: ``"23"`` or ``"23v5"``.
        width_scale: width multiplier (1, 1.5, 2 in the zoo).
        input_shape: ``(H, W, C)``, C 1 or 3, H and W at least 32.
        num_classes: number of logits.
        dropout: dropout rate before the Dense classifier.
        name: model name.

    Returns:
        A functional model from [0, 255] pixels to logits.

    Example:
        >>> model = squeezenext("23v5", 1.0, input_shape=(64, 64, 1), num_classes=2, name="sqnxt23v5_w1")
    """
    if version not in _UNITS_PER_STAGE:
        raise ValueError(f"squeezenext: version must be one of {sorted(_UNITS_PER_STAGE)}, got {version!r}")
    init_block_channels, final_block_channels = 64, 128
    channels = [[c] * n for c, n in zip((32, 64, 128, 256), _UNITS_PER_STAGE[version], strict=True)]
    if width_scale != 1:
        channels = [[int(c * width_scale) for c in stage] for stage in channels]
        init_block_channels = int(init_block_channels * width_scale)
        final_block_channels = int(final_block_channels * width_scale)

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = layers.ZeroPadding2D(1, name="init_block_pad")(x)  # imgclsmob pads the 7x7 stem conv by 1, not 3
    x = layers.Conv2D(init_block_channels, 7, strides=2, name="init_block_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="init_block_bn")(x)
    x = layers.ReLU(name="init_block_relu")(x)
    x = max_pool3x3_s2_ceil(x, name="init_block_pool")
    for i, stage in enumerate(channels):
        for j, out_channels in enumerate(stage):
            x = sqnxt_unit(
                x,
                out_channels,
                strides=2 if (j == 0 and i != 0) else 1,
                name=f"stage{i + 1}_unit{j + 1}",
                output_name=f"stage{i + 1}" if j == len(stage) - 1 else None,
            )
    x = conv_bn_relu(x, final_block_channels, 1, "final_block")
    outputs = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)


# reference_params: trainable parameters at 1000 classes and 224x224x3, from the asserts in imgclsmob's
# squeezenext.py ``_test()`` (keras_/kerascv, tensorflow2/tf2cv and pytorch/pytorchcv all assert the same).


@register_model("sqnxt23_w1", family="squeezenext", reference_params=724_056, taps=_TAPS, source=_SOURCE)
def sqnxt23_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """1.0-SqNxt-23."""
    return squeezenext("23", 1.0, input_shape, num_classes, dropout, name="sqnxt23_w1")


@register_model("sqnxt23_w3d2", family="squeezenext", reference_params=1_511_824, taps=_TAPS, source=_SOURCE)
def sqnxt23_w3d2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """1.5-SqNxt-23."""
    return squeezenext("23", 1.5, input_shape, num_classes, dropout, name="sqnxt23_w3d2")


@register_model("sqnxt23_w2", family="squeezenext", reference_params=2_583_752, taps=_TAPS, source=_SOURCE)
def sqnxt23_w2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """2.0-SqNxt-23."""
    return squeezenext("23", 2.0, input_shape, num_classes, dropout, name="sqnxt23_w2")


@register_model("sqnxt23v5_w1", family="squeezenext", reference_params=921_816, taps=_TAPS, source=_SOURCE)
def sqnxt23v5_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """1.0-SqNxt-23v5."""
    return squeezenext("23v5", 1.0, input_shape, num_classes, dropout, name="sqnxt23v5_w1")


@register_model("sqnxt23v5_w3d2", family="squeezenext", reference_params=1_953_616, taps=_TAPS, source=_SOURCE)
def sqnxt23v5_w3d2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """1.5-SqNxt-23v5."""
    return squeezenext("23v5", 1.5, input_shape, num_classes, dropout, name="sqnxt23v5_w3d2")


@register_model("sqnxt23v5_w2", family="squeezenext", reference_params=3_366_344, taps=_TAPS, source=_SOURCE)
def sqnxt23v5_w2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """2.0-SqNxt-23v5."""
    return squeezenext("23v5", 2.0, input_shape, num_classes, dropout, name="sqnxt23v5_w2")
