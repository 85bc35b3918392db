"""SqueezeNet and SqueezeResNet (v1.0, v1.1), as in the osmr/imgclsmob collection.

Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
https://arxiv.org/abs/1602.07360. Widths, kernels and parameter counts follow imgclsmob
(``keras_/kerascv/models/squeezenet.py``, which study 002 adapted; the same network as its TF2/PyTorch versions):

- stem: conv (7x7 with 96 filters in v1.0, 3x3 with 64 in v1.1), stride 2, no padding, with bias -> ReLU;
- three stages, each a 3x3 stride-2 max-pool in **ceil mode** followed by Fire units; a Fire unit with ``C``
  output channels is squeeze 1x1 conv (``C/8``) -> ReLU, then expand 1x1 (``C/2``) and expand 3x3 (``C/2``,
  padding 1), each -> ReLU, concatenated. Every conv has a bias; there is no batch normalisation;
- SqueezeResNet adds the identity to the Fire units whose input and output widths agree (imgclsmob's
  ``residuals`` table), which adds no parameters;
- classifier: dropout (imgclsmob: 0.5) -> 1x1 conv to ``num_classes`` (with bias) -> global average pool.

Differences from imgclsmob, none of which changes a parameter:

- imgclsmob applies a ReLU after the classifier conv. It is **omitted** here so the outputs are real logits
  (a ReLU-clipped logit cannot be negative, which breaks softmax temperature distillation and binary heads).
- imgclsmob's final pool is a fixed 13x13 average pool (the map size at 224 px); a global average pool is the same
  at 224 px and works at any input size.
- The dropout rate is the ``dropout`` argument (``build_model`` passes 0.0 unless told; pass ``dropout=0.5`` for
  imgclsmob's rate). The ``Dropout`` layer is named ``"dropout"`` and acts on the last feature map, as in
  imgclsmob.
- The classifier is a convolution, so this family has no pooled ``"features"`` vector; the last stage
  (``"stage3"``) is the feature map the classifier sees.

Ceil-mode pooling: PyTorch's ``MaxPool2d(3, 2, ceil_mode=True)`` gives ``ceil((n - 3) / 2) + 1`` outputs, one more
than a "valid" pool when ``n`` is even. Here the map is zero-padded by one row/column at the bottom/right when
its size is even, then pooled "valid" (exact, because the pooled maps follow a ReLU and are non-negative; the same
as imgclsmob's Keras port, which switches to "same" padding in that case). This converts to TFLite and ONNX as
plain Pad + MaxPool, and keeps at least one output at the smallest inputs (32 px gives a 1x1 last stage).

Example:
    >>> from kd_keras.models import build_model
    >>> model = build_model("squeezenet_v1_1", input_shape=(224, 224, 3), num_classes=1000)
    >>> model.get_layer("stage3").output.shape  # (None, 13, 13, 512), as imgclsmob
"""

from __future__ import annotations

import keras
from keras import layers

from kd_keras.models.layers import PixelNormalization, image_input
from kd_keras.models.registry import register_model

_SOURCE = "Iandola et al. 2016 (arXiv:1602.07360); osmr/imgclsmob keras_/kerascv/models/squeezenet.py"
_TAPS = ("stage1", "stage2", "stage3")

# Per version: stem kernel size, stem filters, Fire output widths per stage, and imgclsmob's residual flags
# (1 = SqueezeResNet adds the identity to that unit).
_VERSIONS = {
    "1.0": (7, 96, [[128, 128, 256], [256, 384, 384, 512], [512]], [[0, 1, 0], [1, 0, 1, 0], [1]]),
    "1.1": (3, 64, [[128, 128], [256, 256], [384, 384, 512, 512]], [[0, 1], [0, 1], [0, 1, 0, 1]]),
}


def max_pool3x3_s2_ceil(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """3x3 max-pool, stride 2, no padding, in PyTorch's ceil mode, for a NON-NEGATIVE input.

    An even side gets one zero row/column at its end so the last, partial window exists, as in PyTorch's
    ``MaxPool2d(3, 2, ceil_mode=True)``; zeros never win the max of a non-negative map.

    Args:
        x: input feature map ``(batch, H, W, C)`` with static ``H`` and ``W`` (at least 3), values >= 0.
        name: name of the pooling layer (the padding layer is ``name + "_pad"``).

    Returns:
        The ``(batch, ceil((H - 3) / 2) + 1, ceil((W - 3) / 2) + 1, C)`` pooled map.

    Example:
        >>> max_pool3x3_s2_ceil(keras.Input((110, 55, 8)), "pool").shape  # (None, 55, 27, 8)
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError(f"{name}: ceil-mode pooling needs a fixed input size, got {tuple(x.shape)}")
    if height < 3 or width < 3:
        raise ValueError(f"{name}: a 3x3 pool needs at least 3x3 pixels, got {height}x{width}")
    pad = ((0, 1 - height % 2), (0, 1 - width % 2))
    if pad != ((0, 0), (0, 0)):
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name=name)(x)


def fire_unit(
    x: keras.KerasTensor, out_channels: int, residual: bool, name: str, output_name: str | None = None
) -> keras.KerasTensor:
    """One Fire unit (imgclsmob ``FireUnit``): squeeze 1x1 -> [expand 1x1, expand 3x3] -> concat (+ identity).

    Args:
        x: input feature map.
        out_channels: output width ``C``; squeeze has ``C // 8`` filters, each expand branch ``C // 2``.
        residual: add the input to the output (SqueezeResNet); needs input width ``C``.
        name: prefix of the layer names.
        output_name: name of the unit's last layer (``"stageN"`` for a stage's last unit).

    Returns:
        The ``(batch, H, W, out_channels)`` output.

    Example:
        >>> y = fire_unit(keras.Input((27, 27, 128)), 128, residual=True, name="fire")  # (None, 27, 27, 128)
    """
    squeeze = layers.Conv2D(out_channels // 8, 1, name=f"{name}_squeeze_conv")(x)
    squeeze = layers.ReLU(name=f"{name}_squeeze_relu")(squeeze)
    expand1 = layers.Conv2D(out_channels // 2, 1, name=f"{name}_expand1x1_conv")(squeeze)
    expand1 = layers.ReLU(name=f"{name}_expand1x1_relu")(expand1)
    expand3 = layers.Conv2D(out_channels // 2, 3, padding="same", name=f"{name}_expand3x3_conv")(squeeze)
    expand3 = layers.ReLU(name=f"{name}_expand3x3_relu")(expand3)
    if not residual:
        return layers.Concatenate(name=output_name or f"{name}_concat")([expand1, expand3])
    if x.shape[-1] != out_channels:
        raise ValueError(f"{name}: a residual Fire unit needs {out_channels} input channels, got {x.shape[-1]}")
    y = layers.Concatenate(name=f"{name}_concat")([expand1, expand3])
    return layers.Add(name=output_name or f"{name}_add")([y, x])


def squeezenet(
    version: str,
    residual: bool,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    name: str = "squeezenet",
) -> keras.Model:
    """SqueezeNet / SqueezeResNet (imgclsmob ``get_squeezenet``), with a real-logit classifier.

    Args:
        version: ``"1.0"`` or ``"1.1"``.
        residual: SqueezeResNet (identity shortcuts on the Fire units imgclsmob marks).
        input_shape: ``(H, W, C)``, C 1 or 3, H and W at least 32.
        num_classes: number of logits.
        dropout: dropout rate on the last feature map, before the classifier conv (imgclsmob: 0.5).
        name: model name.

    Returns:
        A functional model from [0, 255] pixels to logits; the output layer is the pool named ``"logits"``.

    Example:
        >>> model = squeezenet("1.1", False, input_shape=(64, 64, 1), num_classes=2, name="squeezenet_v1_1")
    """
    if version not in _VERSIONS:
        raise ValueError(f"squeezenet: version must be one of {sorted(_VERSIONS)}, got {version!r}")
    stem_kernel, stem_channels, channels, residuals = _VERSIONS[version]

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = layers.Conv2D(stem_channels, stem_kernel, strides=2, name="init_block_conv")(x)
    x = layers.ReLU(name="init_block_relu")(x)
    for i, stage in enumerate(channels):
        x = max_pool3x3_s2_ceil(x, name=f"stage{i + 1}_pool")
        for j, out_channels in enumerate(stage):
            x = fire_unit(
                x,
                out_channels,
                residual=residual and residuals[i][j] == 1,
                name=f"stage{i + 1}_unit{j + 1}",
                output_name=f"stage{i + 1}" if j == len(stage) - 1 else None,
            )
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    # Linear classifier conv: imgclsmob's ReLU after it is left out so the outputs are logits.
    x = layers.Conv2D(num_classes, 1, name="final_conv")(x)
    outputs = layers.GlobalAveragePooling2D(name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# reference_params: trainable parameters at 1000 classes and 224x224x3, from the asserts in imgclsmob's
# squeezenet.py ``_test()`` (keras_/kerascv, tensorflow2/tf2cv and pytorch/pytorchcv all assert the same).


@register_model("squeezenet_v1_0", family="squeezenet", reference_params=1_248_424, taps=_TAPS, source=_SOURCE)
def squeezenet_v1_0(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """SqueezeNet v1.0 (7x7 stem with 96 filters, late downsampling)."""
    return squeezenet("1.0", False, input_shape, num_classes, dropout, name="squeezenet_v1_0")


@register_model("squeezenet_v1_1", family="squeezenet", reference_params=1_235_496, taps=_TAPS, source=_SOURCE)
def squeezenet_v1_1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """SqueezeNet v1.1 (3x3 stem with 64 filters, earlier downsampling; about 2.4x cheaper than v1.0)."""
    return squeezenet("1.1", False, input_shape, num_classes, dropout, name="squeezenet_v1_1")


@register_model("squeezeresnet_v1_0", family="squeezenet", reference_params=1_248_424, taps=_TAPS, source=_SOURCE)
def squeezeresnet_v1_0(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """SqueezeNet v1.0 with identity shortcuts (SqueezeResNet)."""
    return squeezenet("1.0", True, input_shape, num_classes, dropout, name="squeezeresnet_v1_0")


@register_model("squeezeresnet_v1_1", family="squeezenet", reference_params=1_235_496, taps=_TAPS, source=_SOURCE)
def squeezeresnet_v1_1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """SqueezeNet v1.1 with identity shortcuts (SqueezeResNet)."""
    return squeezenet("1.1", True, input_shape, num_classes, dropout, name="squeezeresnet_v1_1")
