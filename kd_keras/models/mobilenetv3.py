"""MobileNetV3 (small and large), as in the osmr/imgclsmob collection.

Howard et al., "Searching for MobileNetV3", https://arxiv.org/abs/1905.02244.

Layer for layer this follows imgclsmob's ``tensorflow2/tf2cv/models/mobilenetv3.py`` (and its final PyTorch
version): a 3x3 stride-2 conv block with hard-swish, units of [1x1 expand] -> 3x3/5x5 depthwise -> [SE] -> 1x1
linear projection (+ identity when the shape is kept; the expand conv is skipped when the expanded width equals
the output width), a 1x1 conv block with hard-swish (576 / 960 channels, no SE), global average pooling, then
imgclsmob's classifier: a 1x1 conv to 1280 **without bias**, hard-swish, dropout, a 1x1 conv with bias to the
classes (here Dense layers on the pooled vector, the same thing). SE blocks squeeze to
``round_channels(channels / 4)`` with ReLU and gate with hard-sigmoid.

imgclsmob always applies dropout 0.2 before its last layer; here the rate is ``build_model``'s ``dropout``
(pass ``dropout=0.2`` to train as imgclsmob does).

Hard-swish and hard-sigmoid are written as ``x * relu6(x + 3) / 6`` and ``relu6(x + 3) / 6``: plain ops that
every converter handles.

Example:
    >>> from kd_keras.models import build_model
    >>> model = build_model("mobilenetv3_small_w1", input_shape=(64, 64, 3), num_classes=2, dropout=0.2)
    >>> model.output.shape
    (None, 2)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from kd_keras.models.layers import PixelNormalization, image_input
from kd_keras.models.mobilenet import conv_bn
from kd_keras.models.registry import register_model

_SOURCE = "Howard et al. 2019 (arXiv:1905.02244); osmr/imgclsmob tensorflow2/tf2cv/models/mobilenetv3.py"


def _relu6_shifted(x):
    """``relu6(x + 3) / 6``, with the 3 as a per-channel vector.

    A per-channel constant (not a scalar) lets tf2onnx fold the addition into the preceding convolution's bias;
    with a scalar its transpose optimiser fails and leaves NHWC/NCHW transposes around every activation.
    """
    offset = ops.convert_to_tensor(np.full((x.shape[-1],), 3.0), dtype=x.dtype)
    return ops.relu6(x + offset) / 6.0


@keras.saving.register_keras_serializable(package="kd_keras.mobilenetv3")
class HardSigmoid(layers.Layer):
    """``relu6(x + 3) / 6`` (MobileNetV3's hard sigmoid), in ops every converter knows."""

    def call(self, x):
        return _relu6_shifted(x)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="kd_keras.mobilenetv3")
class HardSwish(layers.Layer):
    """``x * relu6(x + 3) / 6`` (MobileNetV3's hard swish), in ops every converter knows."""

    def call(self, x):
        return x * _relu6_shifted(x)

    def compute_output_shape(self, input_shape):
        return input_shape


def round_channels(channels: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor``, never below 90 % of it (imgclsmob's rule).

    Example:
        >>> round_channels(16 / 4), round_channels(72 / 4), round_channels(0.35 * 40)
        (8, 24, 16)
    """
    rounded = max(int(channels + divisor / 2.0) // divisor * divisor, divisor)
    if float(rounded) < 0.9 * channels:
        rounded += divisor
    return rounded


def _hswish(name: str) -> layers.Layer:
    return HardSwish(name=name)


def _se_block(x: keras.KerasTensor, *, name: str) -> keras.KerasTensor:
    """Squeeze-and-excitation: GAP -> 1x1 (round(C/4), ReLU) -> 1x1 (C) -> hard-sigmoid -> scale."""
    channels = x.shape[-1]
    w = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    w = layers.Conv2D(round_channels(channels / 4), 1, name=f"{name}_conv1")(w)
    w = layers.ReLU(name=f"{name}_activ")(w)
    w = layers.Conv2D(channels, 1, name=f"{name}_conv2")(w)
    w = HardSigmoid(name=f"{name}_sigmoid")(w)
    return layers.Multiply(name=f"{name}_scale")([x, w])


def _mobilenetv3_unit(
    x: keras.KerasTensor,
    filters: int,
    exp_channels: int,
    strides: int,
    kernel_size: int,
    activation: str,
    use_se: bool,
    *,
    name: str,
    out_name: str | None,
) -> keras.KerasTensor:
    """[1x1 expand] -> depthwise k x k -> [SE] -> 1x1 linear projection [+ identity]."""
    residual = x.shape[-1] == filters and strides == 1
    activ = "relu" if activation == "relu" else _hswish
    identity = x
    y = x
    if exp_channels != filters:
        y = conv_bn(y, exp_channels, 1, name=f"{name}_exp_conv", activation=activ)
    y = conv_bn(y, None, kernel_size, strides, depthwise=True, name=f"{name}_conv1", activation=activ)
    if use_se:
        y = _se_block(y, name=f"{name}_se")
    y = conv_bn(y, filters, 1, name=f"{name}_conv2", activation=None, out_name=None if residual else out_name)
    if residual:
        y = layers.Add(name=out_name or f"{name}_add")([y, identity])
    return y


# Per unit: (output channels, expanded channels, kernel size, activation, SE), grouped by stage.
_SMALL = [
    [(16, 16, 3, "relu", True)],
    [(24, 72, 3, "relu", False), (24, 88, 3, "relu", False)],
    [(40, 96, 5, "hswish", True), (40, 240, 5, "hswish", True), (40, 240, 5, "hswish", True),
     (48, 120, 5, "hswish", True), (48, 144, 5, "hswish", True)],
    [(96, 288, 5, "hswish", True), (96, 576, 5, "hswish", True), (96, 576, 5, "hswish", True)],
]  # fmt: skip
_LARGE = [
    [(16, 16, 3, "relu", False)],
    [(24, 64, 3, "relu", False), (24, 72, 3, "relu", False)],
    [(40, 72, 5, "relu", True), (40, 120, 5, "relu", True), (40, 120, 5, "relu", True)],
    [(80, 240, 3, "hswish", False), (80, 200, 3, "hswish", False), (80, 184, 3, "hswish", False),
     (80, 184, 3, "hswish", False), (112, 480, 3, "hswish", True), (112, 672, 3, "hswish", True)],
    [(160, 672, 5, "hswish", True), (160, 960, 5, "hswish", True), (160, 960, 5, "hswish", True)],
]  # fmt: skip


def _mobilenetv3(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    *,
    version: str,
    width_scale: float,
) -> keras.Model:
    """MobileNetV3 ``version`` ("small" or "large") at ``width_scale`` (see the module docstring)."""
    if version == "small":
        stages, first_stride, final_block_channels = _SMALL, True, 576
    elif version == "large":
        stages, first_stride, final_block_channels = _LARGE, False, 960
    else:
        raise ValueError(f"unknown MobileNetV3 version {version!r}")
    init_block_channels = 16
    classifier_mid_channels = 1280
    if width_scale != 1.0:
        stages = [
            [(round_channels(c * width_scale), round_channels(e * width_scale), *rest) for c, e, *rest in stage]
            for stage in stages
        ]
        init_block_channels = round_channels(init_block_channels * width_scale)
        if width_scale > 1.0:
            final_block_channels = round_channels(final_block_channels * width_scale)

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = conv_bn(x, init_block_channels, 3, 2, name="init_block", activation=_hswish)
    for i, stage in enumerate(stages, start=1):
        for j, (filters, exp_channels, kernel_size, activation, use_se) in enumerate(stage, start=1):
            strides = 2 if j == 1 and (i != 1 or first_stride) else 1
            out_name = f"stage{i}" if j == len(stage) else None
            x = _mobilenetv3_unit(
                x, filters, exp_channels, strides, kernel_size, activation, use_se,
                name=f"stage{i}_unit{j}", out_name=out_name,
            )  # fmt: skip
    x = conv_bn(x, final_block_channels, 1, name="final_block", activation=_hswish)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    x = layers.Dense(classifier_mid_channels, use_bias=False, name="classifier_conv1")(x)
    x = HardSwish(name="classifier_activ")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


# Reference counts: the asserts in imgclsmob's tensorflow2/tf2cv/models/mobilenetv3.py `_test()`.


@register_model(
    "mobilenetv3_small_w1",
    family="mobilenetv3",
    reference_params=2_945_288,
    taps=("stage1", "stage2", "stage3", "stage4"),
    source=_SOURCE,
)
def mobilenetv3_small_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """MobileNetV3 Small 224/1.0. Args as :func:`kd_keras.models.build_model`, which is how to call it."""
    return _mobilenetv3("mobilenetv3_small_w1", input_shape, num_classes, dropout, version="small", width_scale=1.0)


@register_model(
    "mobilenetv3_large_w1",
    family="mobilenetv3",
    reference_params=5_481_752,
    taps=("stage1", "stage2", "stage3", "stage4", "stage5"),
    source=_SOURCE,
)
def mobilenetv3_large_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """MobileNetV3 Large 224/1.0. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenetv3("mobilenetv3_large_w1", input_shape, num_classes, dropout, version="large", width_scale=1.0)
