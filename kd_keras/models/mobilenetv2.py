"""MobileNetV2, as in the osmr/imgclsmob collection.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", https://arxiv.org/abs/1801.04381.

Layer for layer this follows imgclsmob's ``tensorflow2/tf2cv/models/mobilenetv2.py``:

- init block: 3x3 stride-2 conv + BN + ReLU6 (``int(32 * width_scale)`` channels);
- five stages of linear bottlenecks (1x1 expand x6 + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection, all
  with BN; identity shortcut when the shape is kept). The very first unit does not expand. Stage widths
  ``[16], [24]*2, [32]*3, [64]*4 + [96]*3, [160]*3 + [320]``, each scaled with ``int(c * width_scale)``;
  every stage but the first starts with stride 2;
- final 1x1 conv block to 1280 channels + ReLU6 (kept at 1280 for widths below 1, as imgclsmob does);
- global average pooling and a classifier **without bias** (imgclsmob's 1x1 ``output1`` conv has none).

Example:
    >>> from kd_keras.models import build_model
    >>> model = build_model("mobilenetv2_wd4", input_shape=(64, 64, 1), num_classes=2)
    >>> model.get_layer("features").output.shape
    (None, 1280)
"""

from __future__ import annotations

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, image_input
from kd_keras.models.mobilenet import conv_bn
from kd_keras.models.registry import register_model

_SOURCE = "Sandler et al. 2018 (arXiv:1801.04381); osmr/imgclsmob tensorflow2/tf2cv/models/mobilenetv2.py"
_TAPS = ("stage1", "stage2", "stage3", "stage4", "stage5")


def _linear_bottleneck(
    x: keras.KerasTensor, filters: int, strides: int, expansion: bool, *, name: str, out_name: str | None
) -> keras.KerasTensor:
    """Inverted residual unit: 1x1 expand (x6) -> 3x3 depthwise -> 1x1 linear projection (+ identity)."""
    in_channels = x.shape[-1]
    residual = in_channels == filters and strides == 1
    mid_channels = in_channels * 6 if expansion else in_channels
    identity = x
    # imgclsmob keeps the 1x1 conv block even when it does not expand (mid == in channels).
    y = conv_bn(x, mid_channels, 1, name=f"{name}_conv1", activation="relu6")
    y = conv_bn(y, None, 3, strides, depthwise=True, name=f"{name}_conv2", activation="relu6")
    y = conv_bn(y, filters, 1, name=f"{name}_conv3", activation=None, out_name=None if residual else out_name)
    if residual:
        y = layers.Add(name=out_name or f"{name}_add")([y, identity])
    return y


def _mobilenetv2(
    name: str, input_shape: tuple[int, int, int], num_classes: int, dropout: float, *, width_scale: float
) -> keras.Model:
    """MobileNetV2 at ``width_scale`` (see the module docstring)."""
    init_block_channels = 32
    final_block_channels = 1280
    channels = [[16], [24, 24], [32, 32, 32], [64, 64, 64, 64, 96, 96, 96], [160, 160, 160, 320]]
    if width_scale != 1.0:
        channels = [[int(c * width_scale) for c in stage] for stage in channels]
        init_block_channels = int(init_block_channels * width_scale)
        if width_scale > 1.0:
            final_block_channels = int(final_block_channels * width_scale)

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = conv_bn(x, init_block_channels, 3, 2, name="init_block", activation="relu6")
    for i, stage_channels in enumerate(channels, start=1):
        for j, filters in enumerate(stage_channels, start=1):
            strides = 2 if j == 1 and i != 1 else 1
            expansion = not (i == 1 and j == 1)
            out_name = f"stage{i}" if j == len(stage_channels) else None
            x = _linear_bottleneck(x, filters, strides, expansion, name=f"stage{i}_unit{j}", out_name=out_name)
    x = conv_bn(x, final_block_channels, 1, name="final_block", activation="relu6")
    x = layers.GlobalAveragePooling2D(name="features")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, use_bias=False, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


# Reference counts: the asserts in imgclsmob's tensorflow2/tf2cv/models/mobilenetv2.py `_test()`.


@register_model("mobilenetv2_w1", family="mobilenetv2", reference_params=3_504_960, taps=_TAPS, source=_SOURCE)
def mobilenetv2_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """1.0 MobileNetV2-224. Args as :func:`kd_keras.models.build_model`, which is how to call it."""
    return _mobilenetv2("mobilenetv2_w1", input_shape, num_classes, dropout, width_scale=1.0)


@register_model("mobilenetv2_w3d4", family="mobilenetv2", reference_params=2_627_592, taps=_TAPS, source=_SOURCE)
def mobilenetv2_w3d4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """0.75 MobileNetV2-224. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenetv2("mobilenetv2_w3d4", input_shape, num_classes, dropout, width_scale=0.75)


@register_model("mobilenetv2_wd2", family="mobilenetv2", reference_params=1_964_736, taps=_TAPS, source=_SOURCE)
def mobilenetv2_wd2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """0.5 MobileNetV2-224. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenetv2("mobilenetv2_wd2", input_shape, num_classes, dropout, width_scale=0.5)


@register_model("mobilenetv2_wd4", family="mobilenetv2", reference_params=1_516_392, taps=_TAPS, source=_SOURCE)
def mobilenetv2_wd4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """0.25 MobileNetV2-224. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenetv2("mobilenetv2_wd4", input_shape, num_classes, dropout, width_scale=0.25)
