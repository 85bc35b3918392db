"""Study 000's students: ``simple10``, ``vgg16_d2`` and ``vgg16_d4`` (plain VGG-style networks).

Study 000 (knowledge distillation with unlabeled random images for diabetic retinopathy) distils a VGG16 teacher
into three small networks trained from scratch:

- **VGG/2, VGG/4** ("two small versions of the VGG network with 16 layers ... in which the number of their filters
  are divided by 4 and 2"): VGG16's 13 convolutions (3x3, stride 1, same padding, ReLU) in five blocks of 2, 2, 3,
  3, 3 convolutions, each block ending in 2x2 max pooling, with 32..256 (``vgg16_d2``) and 16..128 (``vgg16_d4``)
  filters.
- **Simple10** ("a random and small structure with ten convolutional layers ... 20, 20, 30, 30, 40, 40, 160, 160,
  250, 250 convolutional filters").

The paper gives nothing else (no pooling placement, head, normalisation or initialisation), so we choose and say
so: Simple10 is laid out like VGG, five blocks of two 3x3 convolutions each ending in 2x2 max pooling; every student
ends in the same head as our VGG16 teacher (global average pooling ``"features"`` -> optional ``"dropout"`` -> Dense
``"logits"``) instead of VGG16's 4096-wide FC layers, so VGG/2 is the teacher's architecture at half width, and its
stage outputs have the teacher's resolutions (attention transfer / hints need no resizing). Convolutions use He
initialisation (the network is trained from scratch, with ReLU) and, by default, no batch normalisation, as VGG;
``batch_norm=True`` (a builder option) adds it after every convolution. Input normalisation: ImageNet mean/std.

Stage outputs ``"stage1"`` .. ``"stage5"`` are the five max-pooling outputs (1/2 .. 1/32 of the input).

Example:
    >>> from kd_keras.models import build_model
    >>> student = build_model("vgg16_d4", input_shape=(300, 300, 3), num_classes=5, dropout=0.5)
    >>> student.get_layer("stage5").output.shape
    (None, 9, 9, 128)
"""

from __future__ import annotations

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model

# Filters of VGG16's 13 convolutions, by block (Simonyan & Zisserman 2015, configuration D).
VGG16_WIDTHS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Study 000's Simple10: ten convolutions, laid out (our choice) as five VGG blocks of two.
SIMPLE10_WIDTHS: tuple[tuple[int, ...], ...] = ((20, 20), (30, 30), (40, 40), (160, 160), (250, 250))

_SOURCE_000 = "study 000 (KD with unlabeled random images, DR); VGG16 of Simonyan & Zisserman 2015 (arXiv:1409.1556)"
_TAPS = ("stage1", "stage2", "stage3", "stage4", "stage5")


def vgg16_widths(divisor: int) -> tuple[tuple[int, ...], ...]:
    """VGG16's convolution widths divided by ``divisor`` (1, 2, 4, ... up to 64), by block.

    Example:
        >>> vgg16_widths(4)[0], vgg16_widths(4)[-1]
        ((16, 16), (128, 128, 128))
    """
    if divisor < 1 or 64 % divisor:
        raise ValueError(f"divisor must divide 64 (the narrowest VGG16 layer), got {divisor}")
    return tuple(tuple(w // divisor for w in block) for block in VGG16_WIDTHS)


def plain_vgg(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float,
    widths: tuple[tuple[int, ...], ...],
    *,
    batch_norm: bool = False,
) -> keras.Model:
    """A VGG-style network: blocks of 3x3 convolutions (+ReLU), each ending in 2x2 max pooling, then the head.

    Args:
        name: model name.
        input_shape: ``(height, width, channels)``.
        num_classes: number of logits.
        dropout: dropout rate before the classifier (0 disables).
        widths: filters of every convolution, one tuple per block, e.g. :func:`vgg16_widths` ``(2)``.
        batch_norm: batch normalisation after every convolution (its bias is then dropped).

    Returns:
        A ``keras.Model`` whose block outputs are ``"stage1"``, ``"stage2"``, ...

    Example:
        >>> model = plain_vgg("vgg16_d1", (224, 224, 3), 1000, 0.0, vgg16_widths(1))  # VGG16's conv part
    """
    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    for i, block in enumerate(widths, start=1):
        for j, filters in enumerate(block, start=1):
            conv_name = f"block{i}_conv{j}"
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not batch_norm,
                activation=None if batch_norm else "relu",
                kernel_initializer="he_normal",
                name=conv_name,
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"{conv_name}_bn")(x)
                x = layers.ReLU(name=f"{conv_name}_relu")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"stage{i}")(x)
    logits = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, logits, name=name)


@register_model("simple10", family="simple10", taps=_TAPS, source=_SOURCE_000)
def simple10(
    input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0, batch_norm: bool = False
) -> keras.Model:
    """Study 000's Simple10 (20, 20, 30, 30, 40, 40, 160, 160, 250, 250 filters). Args as :func:`plain_vgg`."""
    return plain_vgg("simple10", input_shape, num_classes, dropout, SIMPLE10_WIDTHS, batch_norm=batch_norm)


@register_model("vgg16_d2", family="vgg", taps=_TAPS, source=_SOURCE_000)
def vgg16_d2(
    input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0, batch_norm: bool = False
) -> keras.Model:
    """Study 000's VGG/2: VGG16 with half the filters (32 .. 256). Args as :func:`plain_vgg`."""
    return plain_vgg("vgg16_d2", input_shape, num_classes, dropout, vgg16_widths(2), batch_norm=batch_norm)


@register_model("vgg16_d4", family="vgg", taps=_TAPS, source=_SOURCE_000)
def vgg16_d4(
    input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0, batch_norm: bool = False
) -> keras.Model:
    """Study 000's VGG/4: VGG16 with a quarter of the filters (16 .. 128). Args as :func:`plain_vgg`."""
    return plain_vgg("vgg16_d4", input_shape, num_classes, dropout, vgg16_widths(4), batch_norm=batch_norm)
