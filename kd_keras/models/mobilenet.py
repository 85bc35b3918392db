"""MobileNet and FD-MobileNet, as in the osmr/imgclsmob collection.

- MobileNet: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", https://arxiv.org/abs/1704.04861.
- FD-MobileNet: Qin et al., "FD-MobileNet: Improved MobileNet with a Fast Downsampling Strategy",
  https://arxiv.org/abs/1802.03750.

Layer for layer these follow imgclsmob's ``tensorflow2/tf2cv/models/mobilenet.py`` (the OCT study 002 took its
students from there): a 3x3 stride-2 conv block, then depthwise-separable units (3x3 depthwise conv + BN + ReLU,
1x1 conv + BN + ReLU), convolutions without bias, BN with momentum 0.9 and epsilon 1e-5, widths scaled with
``int(channels * width_scale)``, global average pooling and a Dense classifier. Strided convolutions pad one
pixel on each side (PyTorch style) instead of Keras' asymmetric ``"same"``, so the sampling grid is imgclsmob's.

The conv/BN/activation helpers here are also used by :mod:`kd_keras.models.mobilenetv2` and
:mod:`kd_keras.models.mobilenetv3`.

Example:
    >>> from kd_keras.models import build_model
    >>> model = build_model("mobilenet_wd4", input_shape=(64, 64, 1), num_classes=2)
    >>> model.output.shape
    (None, 2)
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model

# imgclsmob uses Gluon-style batch normalisation (momentum 0.9, epsilon 1e-5), not Keras' defaults.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

_SOURCE_V1 = "Howard et al. 2017 (arXiv:1704.04861); osmr/imgclsmob tensorflow2/tf2cv/models/mobilenet.py"
_SOURCE_FD = "Qin et al. 2018 (arXiv:1802.03750); osmr/imgclsmob tensorflow2/tf2cv/models/mobilenet.py"

Activation = str | Callable[[str], layers.Layer] | None


def activation_layer(activation: Activation, name: str) -> layers.Layer | None:
    """An activation layer named ``name``: ``"relu"``, ``"relu6"``, ``None`` or a factory ``f(name) -> Layer``."""
    if activation is None:
        return None
    if activation == "relu":
        return layers.ReLU(name=name)
    if activation == "relu6":
        return layers.ReLU(max_value=6.0, name=name)
    if callable(activation):
        return activation(name)
    raise ValueError(f"unknown activation {activation!r}")


def conv_bn(
    x: keras.KerasTensor,
    filters: int | None,
    kernel_size: int,
    strides: int = 1,
    *,
    name: str,
    depthwise: bool = False,
    activation: Activation = "relu",
    out_name: str | None = None,
) -> keras.KerasTensor:
    """Convolution (no bias) -> BatchNorm -> optional activation, imgclsmob's ``ConvBlock``.

    Args:
        x: input feature map (NHWC).
        filters: output channels (ignored for a depthwise convolution, which keeps the channel count).
        kernel_size: odd square kernel size.
        strides: 1 or 2. A strided convolution pads ``kernel_size // 2`` pixels on every side first (as
            PyTorch's ``padding=k//2``); stride 1 uses ``"same"``, which is the same thing.
        name: prefix of the layer names.
        depthwise: depthwise convolution instead of a full one.
        activation: see :func:`activation_layer`.
        out_name: name of the block's last layer (for stage taps); default ``{name}_{activ|bn}``.

    Returns:
        The block's output tensor.

    Example:
        >>> x = keras.Input((32, 32, 3))
        >>> conv_bn(x, 16, 3, 2, name="init_block").shape
        (None, 16, 16, 16)
    """
    padding = "same"
    if strides > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")(
            x
        )
    else:
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{name}_conv")(
            x
        )
    bn_name = out_name if (activation is None and out_name) else f"{name}_bn"
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=bn_name)(x)
    activ = activation_layer(activation, out_name or f"{name}_activ")
    return activ(x) if activ is not None else x


def _dws_conv_block(
    x: keras.KerasTensor, filters: int, strides: int, *, name: str, out_name: str | None
) -> keras.KerasTensor:
    """Depthwise-separable unit: 3x3 depthwise conv block, then 1x1 conv block (both BN + ReLU)."""
    x = conv_bn(x, None, 3, strides, depthwise=True, name=f"{name}_dw")
    return conv_bn(x, filters, 1, name=f"{name}_pw", out_name=out_name)


def _mobilenet(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    *,
    version: str,
    width_scale: float,
) -> keras.Model:
    """MobileNet (``version="orig"``) or FD-MobileNet (``version="fd"``) at ``width_scale``."""
    if version == "orig":
        channels = [[32], [64], [128, 128], [256, 256], [512] * 6, [1024, 1024]]
        first_stage_stride = False
    elif version == "fd":
        # Fast downsampling: the first stage already strides, and the last stage ends at 1024 channels.
        channels = [[32], [64], [128, 128], [256, 256], [512] * 5 + [1024]]
        first_stage_stride = True
    else:
        raise ValueError(f"unknown MobileNet version {version!r}")
    if width_scale != 1.0:
        channels = [[int(c * width_scale) for c in stage] for stage in channels]

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = conv_bn(x, channels[0][0], 3, 2, name="init_block")
    for i, stage_channels in enumerate(channels[1:], start=1):
        for j, filters in enumerate(stage_channels, start=1):
            strides = 2 if j == 1 and (i != 1 or first_stage_stride) else 1
            out_name = f"stage{i}" if j == len(stage_channels) else None
            x = _dws_conv_block(x, filters, strides, name=f"stage{i}_unit{j}", out_name=out_name)
    logits = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, logits, name=name)


_TAPS_V1 = ("stage1", "stage2", "stage3", "stage4", "stage5")
_TAPS_FD = ("stage1", "stage2", "stage3", "stage4")

# Reference counts: the asserts in imgclsmob's tensorflow2/tf2cv/models/mobilenet.py `_test()`.


@register_model("mobilenet_w1", family="mobilenet", reference_params=4_231_976, taps=_TAPS_V1, source=_SOURCE_V1)
def mobilenet_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """1.0 MobileNet-224. Args as :func:`kd_keras.models.build_model`, which is how to call it."""
    return _mobilenet("mobilenet_w1", input_shape, num_classes, dropout, version="orig", width_scale=1.0)


@register_model("mobilenet_w3d4", family="mobilenet", reference_params=2_585_560, taps=_TAPS_V1, source=_SOURCE_V1)
def mobilenet_w3d4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """0.75 MobileNet-224. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("mobilenet_w3d4", input_shape, num_classes, dropout, version="orig", width_scale=0.75)


@register_model("mobilenet_wd2", family="mobilenet", reference_params=1_331_592, taps=_TAPS_V1, source=_SOURCE_V1)
def mobilenet_wd2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """0.5 MobileNet-224. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("mobilenet_wd2", input_shape, num_classes, dropout, version="orig", width_scale=0.5)


@register_model("mobilenet_wd4", family="mobilenet", reference_params=470_072, taps=_TAPS_V1, source=_SOURCE_V1)
def mobilenet_wd4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """0.25 MobileNet-224. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("mobilenet_wd4", input_shape, num_classes, dropout, version="orig", width_scale=0.25)


@register_model("fdmobilenet_w1", family="fdmobilenet", reference_params=2_901_288, taps=_TAPS_FD, source=_SOURCE_FD)
def fdmobilenet_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """FD-MobileNet 1.0x. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("fdmobilenet_w1", input_shape, num_classes, dropout, version="fd", width_scale=1.0)


@register_model("fdmobilenet_w3d4", family="fdmobilenet", reference_params=1_833_304, taps=_TAPS_FD, source=_SOURCE_FD)
def fdmobilenet_w3d4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """FD-MobileNet 0.75x. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("fdmobilenet_w3d4", input_shape, num_classes, dropout, version="fd", width_scale=0.75)


@register_model("fdmobilenet_wd2", family="fdmobilenet", reference_params=993_928, taps=_TAPS_FD, source=_SOURCE_FD)
def fdmobilenet_wd2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """FD-MobileNet 0.5x. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("fdmobilenet_wd2", input_shape, num_classes, dropout, version="fd", width_scale=0.5)


@register_model("fdmobilenet_wd4", family="fdmobilenet", reference_params=383_160, taps=_TAPS_FD, source=_SOURCE_FD)
def fdmobilenet_wd4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """FD-MobileNet 0.25x. Args as :func:`kd_keras.models.build_model`."""
    return _mobilenet("fdmobilenet_wd4", input_shape, num_classes, dropout, version="fd", width_scale=0.25)
