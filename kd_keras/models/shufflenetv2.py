"""ShuffleNetV2, as in the osmr/imgclsmob collection.

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
https://arxiv.org/abs/1807.11164. Widths, unit layout and parameter counts follow imgclsmob
(``tensorflow2/tf2cv/models/shufflenetv2.py``):

- stem: 3x3 conv stride 2 (no bias) -> BN -> ReLU -> 3x3 max-pool stride 2 with ``ceil_mode`` (no padding);
- three stages of 4, 8, 4 units, then a 1x1 conv block (``final_block``, 1024 channels; 2153 for 2x);
- a unit splits its input channels in two halves, passes one half on unchanged and sends the other through
  1x1 conv -> BN -> ReLU -> 3x3 depthwise conv -> BN -> 1x1 conv -> BN -> ReLU, concatenates the halves and
  shuffles them in 2 groups. A stage's first unit halves the resolution; it feeds the whole input to both
  branches, the pass-through branch becoming 3x3 depthwise conv stride 2 -> BN -> 1x1 conv -> BN -> ReLU.

Width multipliers are imgclsmob's fractions of 116 channels (12/29, 1, 44/29, 61/29), computed with the same
floating-point expression so the channel counts (and parameter counts) are identical.
"""

from __future__ import annotations

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model
from kd_keras.models.shufflenet import ChannelShuffle, ChannelSplit, batch_norm, depthwise_conv3x3

_SOURCE = "Ma et al. 2018 (arXiv:1807.11164); osmr/imgclsmob tf2cv/models/shufflenetv2.py"
_TAPS = ("stage1", "stage2", "stage3")


def conv1x1_bn(x: keras.KerasTensor, filters: int, name: str, relu: bool = True) -> keras.KerasTensor:
    """1x1 conv (no bias) -> BN -> optional ReLU; layers ``{name}_conv``, ``{name}_bn``, ``{name}_relu``."""
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm(x, f"{name}_bn")
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def shuffle_unit_v2(
    x: keras.KerasTensor, out_channels: int, downsample: bool, name: str, output_name: str | None = None
) -> keras.KerasTensor:
    """One ShuffleNetV2 unit (imgclsmob ``ShuffleUnit`` without SE and residual).

    Args:
        x: input feature map.
        out_channels: output channels (even; half come from each branch).
        downsample: halve the resolution; both branches then read the whole input.
        name: prefix of the layer names.
        output_name: name of the final channel shuffle (``"stageN"`` for a stage's last unit).
    """
    mid_channels = out_channels // 2
    if downsample:
        y1 = depthwise_conv3x3(x, 2, f"{name}_dw_conv4")
        y1 = batch_norm(y1, f"{name}_dw_bn4")
        y1 = conv1x1_bn(y1, mid_channels, f"{name}_expand5")
        x2 = x
    else:
        y1, x2 = ChannelSplit(2, name=f"{name}_split")(x)
    y2 = conv1x1_bn(x2, mid_channels, f"{name}_compress1")
    y2 = depthwise_conv3x3(y2, 2 if downsample else 1, f"{name}_dw_conv2")
    y2 = batch_norm(y2, f"{name}_dw_bn2")
    y2 = conv1x1_bn(y2, mid_channels, f"{name}_expand3")
    y = layers.Concatenate(name=f"{name}_concat")([y1, y2])
    return ChannelShuffle(2, name=output_name or f"{name}_shuffle")(y)


def shufflenetv2(
    width_scale: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    name: str = "shufflenetv2",
) -> keras.Model:
    """ShuffleNetV2 with widths scaled by ``width_scale`` (imgclsmob ``get_shufflenetv2``).

    Args:
        width_scale: width multiplier of the stage channels 116, 232, 464 (the final block widens only
            above 1.5, as in imgclsmob).
        input_shape: ``(H, W, C)``, C 1 or 3, H and W at least 32.
        num_classes: number of logits.
        dropout: dropout rate before the classifier.
        name: model name.

    Returns:
        A functional model from [0, 255] pixels to logits.

    Example:
        >>> model = shufflenetv2(12.0 / 29.0, input_shape=(64, 64, 1), num_classes=2, name="shufflenetv2_wd2")
    """
    init_block_channels = 24
    final_block_channels = 1024
    units_per_stage = (4, 8, 4)
    channels = [[c] * n for c, n in zip((116, 232, 464), units_per_stage, strict=True)]
    if width_scale != 1.0:
        channels = [[int(c * width_scale) for c in stage] for stage in channels]
        if width_scale > 1.5:
            final_block_channels = int(final_block_channels * width_scale)

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = layers.ZeroPadding2D(1, name="init_block_conv_pad")(x)
    x = layers.Conv2D(init_block_channels, 3, strides=2, use_bias=False, name="init_block_conv")(x)
    x = batch_norm(x, "init_block_bn")
    x = layers.ReLU(name="init_block_relu")(x)
    # PyTorch MaxPool2d(3, 2, ceil_mode=True) == one row/column of padding at the end, then a valid pool
    # (the extra row is only read at even sizes; zero padding is safe after ReLU).
    x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="init_block_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="init_block_pool")(x)
    for i, stage in enumerate(channels):
        for j, out_channels in enumerate(stage):
            x = shuffle_unit_v2(
                x,
                out_channels,
                downsample=(j == 0),
                name=f"stage{i + 1}_unit{j + 1}",
                output_name=f"stage{i + 1}" if j == len(stage) - 1 else None,
            )
    x = conv1x1_bn(x, final_block_channels, "final_block")
    outputs = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)


# reference_params: trainable parameters at 1000 classes and 224x224x3, from the asserts in
# imgclsmob's tensorflow2/tf2cv/models/shufflenetv2.py ``_test()``.


@register_model("shufflenetv2_wd2", family="shufflenetv2", reference_params=1_366_792, taps=_TAPS, source=_SOURCE)
def shufflenetv2_wd2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNetV2 0.5x (stage widths 48, 96, 192)."""
    return shufflenetv2(12.0 / 29.0, input_shape, num_classes, dropout, name="shufflenetv2_wd2")


@register_model("shufflenetv2_w1", family="shufflenetv2", reference_params=2_278_604, taps=_TAPS, source=_SOURCE)
def shufflenetv2_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNetV2 1x (stage widths 116, 232, 464)."""
    return shufflenetv2(1.0, input_shape, num_classes, dropout, name="shufflenetv2_w1")


@register_model("shufflenetv2_w3d2", family="shufflenetv2", reference_params=4_406_098, taps=_TAPS, source=_SOURCE)
def shufflenetv2_w3d2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNetV2 1.5x (stage widths 176, 352, 704)."""
    return shufflenetv2(44.0 / 29.0, input_shape, num_classes, dropout, name="shufflenetv2_w3d2")


@register_model("shufflenetv2_w2", family="shufflenetv2", reference_params=7_601_686, taps=_TAPS, source=_SOURCE)
def shufflenetv2_w2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNetV2 2x (stage widths 244, 488, 976; final block 2153)."""
    return shufflenetv2(61.0 / 29.0, input_shape, num_classes, dropout, name="shufflenetv2_w2")
