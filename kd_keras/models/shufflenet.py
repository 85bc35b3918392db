"""ShuffleNet (v1), as in the osmr/imgclsmob collection.

Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
https://arxiv.org/abs/1707.01083. Widths, unit layout and parameter counts follow imgclsmob
(``tensorflow2/tf2cv/models/shufflenet.py``; the same network as its PyTorch/Gluon versions):

- stem: 3x3 conv stride 2 (no bias) -> BN -> ReLU -> 3x3 max-pool stride 2, padding 1;
- three stages of 4, 8, 4 units; the first unit of a stage halves the resolution and concatenates a 3x3
  average-pooled copy of its input to the conv branch, the others add the identity;
- a unit is grouped 1x1 conv -> BN -> ReLU -> channel shuffle -> 3x3 depthwise conv -> BN -> grouped 1x1
  conv -> BN, then add/concat and ReLU. The network's first 1x1 conv is not grouped (its input has 24 channels).

Export notes: Keras' ``Conv2D(groups=g)`` runs through an XLA-compiled function on the TensorFlow backend,
which tf2onnx cannot convert, so a grouped 1x1 convolution here is channel split -> one ``Conv2D`` per group ->
concat (the same parameters, as imgclsmob's TF2 port does). Channel shuffle is reshape -> transpose -> reshape
with ``-1`` for the batch size.
Padding is explicit (``ZeroPadding2D``) wherever a stride-2 window would otherwise sit differently from the
PyTorch original, so odd input sizes give the same shapes on both branches of a downsampling unit.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model

_SOURCE = "Zhang et al. 2017 (arXiv:1707.01083); osmr/imgclsmob tf2cv/models/shufflenet.py"
_TAPS = ("stage1", "stage2", "stage3")
# Gluon/PyTorch batch-norm defaults used by imgclsmob.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


@keras.saving.register_keras_serializable(package="kd_keras")
class ChannelShuffle(layers.Layer):
    """Interleaves the channels of ``groups`` groups (ShuffleNet's channel shuffle).

    Channels ``[a0 a1 .. b0 b1 ..]`` of ``groups`` equal groups become ``[a0 b0 .. a1 b1 ..]``: reshape to
    ``(batch, H*W, groups, C/groups)``, swap the last two axes, reshape back. Only 4-D reshape/transpose are
    used and the batch size is ``-1``, so TFLite and ONNX export take any batch size.

    Args:
        groups: number of channel groups; must divide the channel count.

    Example:
        >>> x = keras.ops.reshape(keras.ops.arange(6.0), (1, 1, 1, 6))
        >>> ChannelShuffle(groups=2)(x)[0, 0, 0]  # [0, 3, 1, 4, 2, 5]
    """

    def __init__(self, groups: int, **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)

    def call(self, x):
        _, height, width, channels = x.shape
        if channels % self.groups:
            raise ValueError(f"{self.name}: {channels} channels cannot be shuffled in {self.groups} groups")
        if height is None or width is None:  # only for models built without a fixed input size
            height, width = ops.shape(x)[1], ops.shape(x)[2]
        x = ops.reshape(x, (-1, height * width, self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 1, 3, 2))
        return ops.reshape(x, (-1, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="kd_keras")
class ChannelSplit(layers.Layer):
    """Splits the channel axis into ``num_splits`` equal parts and returns them as a list.

    Args:
        num_splits: number of parts; must divide the channel count.

    Example:
        >>> left, right = ChannelSplit(2)(keras.ops.ones((1, 4, 4, 8)))  # two (1, 4, 4, 4) tensors
    """

    def __init__(self, num_splits: int, **kwargs):
        super().__init__(**kwargs)
        self.num_splits = int(num_splits)

    def call(self, x):
        if x.shape[-1] % self.num_splits:
            raise ValueError(f"{self.name}: {x.shape[-1]} channels cannot be split in {self.num_splits} parts")
        return ops.split(x, self.num_splits, axis=-1)

    def compute_output_shape(self, input_shape):
        part = (*input_shape[:-1], input_shape[-1] // self.num_splits)
        return [part] * self.num_splits

    def get_config(self):
        return {**super().get_config(), "num_splits": self.num_splits}


def grouped_conv1x1(x: keras.KerasTensor, filters: int, groups: int, name: str) -> keras.KerasTensor:
    """1x1 convolution (no bias) in ``groups`` groups, as split -> per-group ``Conv2D`` -> concat.

    Same parameters as ``Conv2D(filters, 1, groups=groups, use_bias=False)`` but converts to TFLite and ONNX
    (see the module docstring). ``groups == 1`` is a plain ``Conv2D`` named ``name``.

    Args:
        x: input feature map ``(batch, H, W, C)``; ``groups`` must divide ``C`` and ``filters``.
        filters: output channels.
        groups: number of groups.
        name: prefix of the layer names.

    Returns:
        The ``(batch, H, W, filters)`` output.

    Example:
        >>> y = grouped_conv1x1(keras.Input((8, 8, 12)), filters=24, groups=3, name="pw")  # (None, 8, 8, 24)
    """
    if groups == 1:
        return layers.Conv2D(filters, 1, use_bias=False, name=name)(x)
    if x.shape[-1] % groups or filters % groups:
        raise ValueError(f"{name}: {x.shape[-1]} -> {filters} channels cannot be split in {groups} groups")
    parts = ChannelSplit(groups, name=f"{name}_split")(x)
    outs = [
        layers.Conv2D(filters // groups, 1, use_bias=False, name=f"{name}_group{i + 1}")(part)
        for i, part in enumerate(parts)
    ]
    return layers.Concatenate(name=f"{name}_concat")(outs)


def batch_norm(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """Batch normalisation with imgclsmob's (Gluon) epsilon and momentum."""
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def depthwise_conv3x3(x: keras.KerasTensor, strides: int, name: str) -> keras.KerasTensor:
    """3x3 depthwise conv (no bias) with PyTorch's symmetric padding of 1 at any stride."""
    if strides == 1:
        return layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=name)(x)
    x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
    return layers.DepthwiseConv2D(3, strides=strides, use_bias=False, name=name)(x)


def shuffle_unit(
    x: keras.KerasTensor,
    out_channels: int,
    groups: int,
    downsample: bool,
    ignore_group: bool,
    name: str,
    output_name: str | None = None,
) -> keras.KerasTensor:
    """One ShuffleNet unit (imgclsmob ``ShuffleUnit``).

    Args:
        x: input feature map.
        out_channels: output channels of the unit (conv branch plus pooled input when downsampling).
        groups: groups of the 1x1 convolutions and of the channel shuffle.
        downsample: halve the resolution and concatenate the average-pooled input instead of adding it.
        ignore_group: make the first 1x1 conv ungrouped (the network's first unit).
        name: prefix of the layer names.
        output_name: name of the unit's final ReLU (``"stageN"`` for a stage's last unit).
    """
    in_channels = x.shape[-1]
    mid_channels = out_channels // 4
    if downsample:
        out_channels -= in_channels  # the pooled input supplies the other channels
    identity = x
    y = grouped_conv1x1(x, mid_channels, 1 if ignore_group else groups, f"{name}_compress_conv1")
    y = batch_norm(y, f"{name}_compress_bn1")
    y = layers.ReLU(name=f"{name}_compress_relu1")(y)
    y = ChannelShuffle(groups, name=f"{name}_shuffle")(y)
    y = depthwise_conv3x3(y, 2 if downsample else 1, f"{name}_dw_conv2")
    y = batch_norm(y, f"{name}_dw_bn2")
    y = grouped_conv1x1(y, out_channels, groups, f"{name}_expand_conv3")
    y = batch_norm(y, f"{name}_expand_bn3")
    if downsample:
        # PyTorch AvgPool2d(3, 2, padding=1) counts the zero padding (count_include_pad=True).
        identity = layers.ZeroPadding2D(1, name=f"{name}_avgpool_pad")(identity)
        identity = layers.AveragePooling2D(3, strides=2, name=f"{name}_avgpool")(identity)
        y = layers.Concatenate(name=f"{name}_concat")([y, identity])
    else:
        y = layers.Add(name=f"{name}_add")([y, identity])
    return layers.ReLU(name=output_name or f"{name}_relu")(y)


def shufflenet(
    groups: int,
    width_scale: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    name: str = "shufflenet",
) -> keras.Model:
    """ShuffleNet with ``groups`` groups and widths scaled by ``width_scale`` (imgclsmob ``get_shufflenet``).

    Args:
        groups: 1, 2, 3, 4 or 8.
        width_scale: width multiplier (1, 0.75, 0.5, 0.25 in the zoo).
        input_shape: ``(H, W, C)``, C 1 or 3, H and W at least 32.
        num_classes: number of logits.
        dropout: dropout rate before the classifier.
        name: model name.

    Returns:
        A functional model from [0, 255] pixels to logits.

    Example:
        >>> model = shufflenet(3, 0.5, input_shape=(64, 64, 1), num_classes=2, name="shufflenet_g3_wd2")
    """
    stage_channels = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
    if groups not in stage_channels:
        raise ValueError(f"shufflenet: groups must be one of {sorted(stage_channels)}, got {groups}")
    init_block_channels = 24
    units_per_stage = (4, 8, 4)
    channels = [[stage_channels[groups] * 2**i] * n for i, n in enumerate(units_per_stage)]
    if width_scale != 1.0:
        channels = [[int(c * width_scale) for c in stage] for stage in channels]
        init_block_channels = int(init_block_channels * width_scale)

    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", name="normalization")(inputs)
    x = layers.ZeroPadding2D(1, name="init_block_conv_pad")(x)
    x = layers.Conv2D(init_block_channels, 3, strides=2, use_bias=False, name="init_block_conv")(x)
    x = batch_norm(x, "init_block_bn")
    x = layers.ReLU(name="init_block_relu")(x)
    # Zero padding equals PyTorch's -inf padding here: the input is non-negative after ReLU.
    x = layers.ZeroPadding2D(1, name="init_block_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="init_block_pool")(x)
    for i, stage in enumerate(channels):
        for j, out_channels in enumerate(stage):
            x = shuffle_unit(
                x,
                out_channels,
                groups,
                downsample=(j == 0),
                ignore_group=(i == 0 and j == 0),
                name=f"stage{i + 1}_unit{j + 1}",
                output_name=f"stage{i + 1}" if j == len(stage) - 1 else None,
            )
    outputs = classifier_head(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)


# reference_params: trainable parameters at 1000 classes and 224x224x3, from the asserts in
# imgclsmob's tensorflow2/tf2cv/models/shufflenet.py ``_test()``.


@register_model("shufflenet_g1_w1", family="shufflenet", reference_params=1_531_936, taps=_TAPS, source=_SOURCE)
def shufflenet_g1_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 1x (g=1)."""
    return shufflenet(1, 1.0, input_shape, num_classes, dropout, name="shufflenet_g1_w1")


@register_model("shufflenet_g2_w1", family="shufflenet", reference_params=1_733_848, taps=_TAPS, source=_SOURCE)
def shufflenet_g2_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 1x (g=2)."""
    return shufflenet(2, 1.0, input_shape, num_classes, dropout, name="shufflenet_g2_w1")


@register_model("shufflenet_g3_w1", family="shufflenet", reference_params=1_865_728, taps=_TAPS, source=_SOURCE)
def shufflenet_g3_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 1x (g=3)."""
    return shufflenet(3, 1.0, input_shape, num_classes, dropout, name="shufflenet_g3_w1")


@register_model("shufflenet_g4_w1", family="shufflenet", reference_params=1_968_344, taps=_TAPS, source=_SOURCE)
def shufflenet_g4_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 1x (g=4)."""
    return shufflenet(4, 1.0, input_shape, num_classes, dropout, name="shufflenet_g4_w1")


@register_model("shufflenet_g8_w1", family="shufflenet", reference_params=2_434_768, taps=_TAPS, source=_SOURCE)
def shufflenet_g8_w1(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 1x (g=8)."""
    return shufflenet(8, 1.0, input_shape, num_classes, dropout, name="shufflenet_g8_w1")


@register_model("shufflenet_g1_w3d4", family="shufflenet", reference_params=975_214, taps=_TAPS, source=_SOURCE)
def shufflenet_g1_w3d4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 0.75x (g=1)."""
    return shufflenet(1, 0.75, input_shape, num_classes, dropout, name="shufflenet_g1_w3d4")


@register_model("shufflenet_g3_w3d4", family="shufflenet", reference_params=1_238_266, taps=_TAPS, source=_SOURCE)
def shufflenet_g3_w3d4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 0.75x (g=3)."""
    return shufflenet(3, 0.75, input_shape, num_classes, dropout, name="shufflenet_g3_w3d4")


@register_model("shufflenet_g1_wd2", family="shufflenet", reference_params=534_484, taps=_TAPS, source=_SOURCE)
def shufflenet_g1_wd2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 0.5x (g=1)."""
    return shufflenet(1, 0.5, input_shape, num_classes, dropout, name="shufflenet_g1_wd2")


@register_model("shufflenet_g3_wd2", family="shufflenet", reference_params=718_324, taps=_TAPS, source=_SOURCE)
def shufflenet_g3_wd2(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 0.5x (g=3)."""
    return shufflenet(3, 0.5, input_shape, num_classes, dropout, name="shufflenet_g3_wd2")


@register_model("shufflenet_g1_wd4", family="shufflenet", reference_params=209_746, taps=_TAPS, source=_SOURCE)
def shufflenet_g1_wd4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 0.25x (g=1)."""
    return shufflenet(1, 0.25, input_shape, num_classes, dropout, name="shufflenet_g1_wd4")


@register_model("shufflenet_g3_wd4", family="shufflenet", reference_params=305_902, taps=_TAPS, source=_SOURCE)
def shufflenet_g3_wd4(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.0) -> keras.Model:
    """ShuffleNet 0.25x (g=3)."""
    return shufflenet(3, 0.25, input_shape, num_classes, dropout, name="shufflenet_g3_wd4")
