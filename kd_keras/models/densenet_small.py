"""Study 004's light student ``densenet40``: DenseNet-121 without its last two dense blocks.

Table VI of study 004 (attention transfer for chest X-rays and DR), for a 256x256 input:

=====================  ===========  ==============================================
layers                 output size  filters
=====================  ===========  ==============================================
convolution            128x128      7x7 conv, stride 2
pooling                64x64        3x3 max pool, stride 2
dense block (1)        64x64        [1x1 conv, 3x3 conv] x 6
transition layer (1)   32x32        1x1 conv, 2x2 average pool, stride 2
dense block (2)        32x32        [1x1 conv, 3x3 conv] x 12
pooling                8x8          8x8 adaptive average pool
convolution            8x8          1x1 conv
convolution            8x8          1x1 conv
pooling                1x1          1x1 adaptive average pool
classification layer                fully-connected
=====================  ===========  ==============================================

That is 1 + 12 + 1 + 24 + 2 = 40 convolutions. The table gives no widths for the two 1x1 convolutions; the paper's
parameter count does: "DenseNet-40 with 1,364,142 trainable parameters" for its 14-label CheXpert head (the same
paper's DenseNet-121 count, 6,968,206, is torchvision's 6,953,856 plus a 1024x14 Dense layer). Up to dense block
2 the network is DenseNet-121's (1,297,536 parameters); the remaining 66,606 are exactly a 512->32 and a 32->1024
1x1 convolution with biases, a batch normalisation of 1024 channels (DenseNet's final ``norm5``) and a 1024->14
Dense layer, and no other small combination of torchvision layers fits. That also matches the paper's Fig. 2, where
attention is transferred through an 8x8 map of 32 planes. So ``densenet40`` is::

    DenseNet-121 stem, dense block 1, transition 1, dense block 2       (Keras-applications layer names)
    -> adaptive average pool to 8x8 -> 1x1 conv 32 ("stage3", the attention map) -> 1x1 conv 1024
    -> BatchNorm -> ReLU ("stage4") -> global average pool ("features") -> [dropout] -> Dense ("logits")

The table shows no activation between the two 1x1 convolutions and we add none. Stage outputs: ``"stage1"``
(dense block 1 after BN+ReLU, 1/4 of the input), ``"stage2"`` (dense block 2, 1/8), ``"stage3"`` (the 32-plane
8x8 map study 004 matched to DenseNet-121's ``"conv5_block16_2_conv"``) and ``"stage4"``.

Study 004 initialised every DenseNet from ImageNet. The layers ``densenet40`` shares with DenseNet-121 keep Keras'
names, so ``backbone_weights="imagenet"`` (or the path of Keras' ``densenet121_..._notop.h5``) copies them from
DenseNet-121; the 1x1 convolutions, the final BN and the head start fresh. The input is normalised with ImageNet's
mean/std and a grey image is repeated to RGB (as for the DenseNet teachers), so ImageNet weights apply as they are.

Example:
    >>> from kd_keras.models import build_model
    >>> student = build_model("densenet40", input_shape=(256, 256, 1), num_classes=14)
    >>> student.get_layer("stage3").output.shape
    (None, 8, 8, 32)
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model
from kd_keras.models.weights import read_legacy_h5_weights, resolve_backbone_weights

# Keras-applications DenseNet settings (keras/src/applications/densenet.py).
_BN_EPSILON = 1.001e-5
_GROWTH_RATE = 32
_SOURCE_004 = "study 004 (attention transfer, CheXpert/ChestX-ray8/DR), table VI; DenseNet-121 of Huang et al. 2017"


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The ``(out_size, in_size)`` averaging matrix of PyTorch's adaptive average pooling along one axis.

    Output cell ``i`` averages input cells ``floor(i * in / out)`` .. ``ceil((i + 1) * in / out) - 1``; this works
    for ``out_size > in_size`` too (cells are repeated).

    Example:
        >>> adaptive_pool_matrix(4, 2)
        array([[0.5, 0.5, 0. , 0. ],
               [0. , 0. , 0.5, 0.5]], dtype=float32)
    """
    matrix = np.zeros((out_size, in_size), dtype="float32")
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


@keras.saving.register_keras_serializable(package="kd_keras")
class AdaptiveAveragePooling2D(layers.Layer):
    """PyTorch's ``AdaptiveAvgPool2d`` for a static input size, as two constant matrix products.

    Matrix products (``MatMul`` in ONNX, ``BatchMatMul``/``FullyConnected`` in TFLite) export everywhere, for any
    input size, including inputs smaller than the output.

    Args:
        output_size: ``(height, width)`` of the output.
    """

    def __init__(self, output_size: tuple[int, int], **kwargs):
        super().__init__(**kwargs)
        self.output_size = (int(output_size[0]), int(output_size[1]))

    def call(self, x):
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError(f"{self.name}: adaptive pooling needs a static input size, got {x.shape}")
        out_h, out_w = self.output_size
        rows = ops.convert_to_tensor(adaptive_pool_matrix(height, out_h).T, dtype=x.dtype)  # (H, out_h)
        cols = ops.convert_to_tensor(adaptive_pool_matrix(width, out_w).T, dtype=x.dtype)  # (W, out_w)
        x = ops.transpose(x, (0, 3, 2, 1))  # (B, C, W, H)
        x = ops.matmul(x, rows)  # (B, C, W, out_h)
        x = ops.transpose(x, (0, 1, 3, 2))  # (B, C, out_h, W)
        x = ops.matmul(x, cols)  # (B, C, out_h, out_w)
        return ops.transpose(x, (0, 2, 3, 1))  # (B, out_h, out_w, C)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}


def _dense_layer(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """DenseNet's BN-ReLU-1x1(128)-BN-ReLU-3x3(32) layer, concatenated to its input (Keras' names)."""
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_0_bn")(x)
    y = layers.Activation("relu", name=f"{name}_0_relu")(y)
    y = layers.Conv2D(4 * _GROWTH_RATE, 1, use_bias=False, name=f"{name}_1_conv")(y)
    y = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.Conv2D(_GROWTH_RATE, 3, padding="same", use_bias=False, name=f"{name}_2_conv")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def _copy_densenet121_weights(model: keras.Model, path: Path) -> int:
    """Copy the layers ``model`` shares (by name) with Keras' DenseNet-121 from its notop file; returns how many."""
    reference = read_legacy_h5_weights(path)
    copied = 0
    for layer in model.layers:
        if layer.name in reference and layer.weights:
            try:
                layer.set_weights(reference[layer.name])
            except ValueError as error:
                raise ValueError(f"densenet40: {path} layer {layer.name!r} does not fit: {error}") from None
            copied += 1
    if copied == 0:
        raise ValueError(f"densenet40: {path} has no DenseNet-121 layers (is it a DenseNet-121 weights file?)")
    return copied


@register_model(
    "densenet40",
    family="densenet",
    # 1,364,142 at 14 classes (study 004) - 14,350 (1024x14 head) + 1,025,000 (1024x1000 head).
    reference_params=2_374_792,
    taps=("stage1", "stage2", "stage3", "stage4"),
    source=_SOURCE_004,
)
def densenet40(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    backbone_weights: str | os.PathLike | None = None,
    attention_size: int = 8,
) -> keras.Model:
    """Study 004's DenseNet-40.

    Args:
        input_shape, num_classes, dropout: as :func:`kd_keras.models.build_model`.
        backbone_weights: ``None``, ``"imagenet"`` or the path of Keras' DenseNet-121 notop ``.h5`` file: the
            layers shared with DenseNet-121 start from it (study 004 initialised from ImageNet).
        attention_size: side of the adaptive pooling before the 1x1 convolutions (8 in study 004, where it
            matches DenseNet-121's last block at 256x256 input).

    Returns:
        The ``keras.Model`` ``"densenet40"``.
    """
    # Resolved first, so a missing file or an offline machine fails before anything is built.
    weights_file = resolve_backbone_weights("densenet121", backbone_weights)
    inputs = image_input(input_shape)
    x = PixelNormalization("imagenet", to_rgb=True, name="normalization")(inputs)
    x = layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for i in range(1, 7):
        x = _dense_layer(x, f"conv2_block{i}")
    # Transition 1 (Keras' "pool2_*" layers); its BN-ReLU output is dense block 1's normalised features.
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="pool2_bn")(x)
    x = layers.Activation("relu", name="stage1")(x)
    x = layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name="pool2_conv")(x)
    x = layers.AveragePooling2D(2, strides=2, name="pool2_pool")(x)
    for i in range(1, 13):
        x = _dense_layer(x, f"conv3_block{i}")
    x = layers.Identity(name="stage2")(x)
    x = AdaptiveAveragePooling2D((attention_size, attention_size), name="attention_pool")(x)
    x = layers.Conv2D(_GROWTH_RATE, 1, name="stage3")(x)
    x = layers.Conv2D(1024, 1, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=_BN_EPSILON, name="head_bn")(x)
    x = layers.Activation("relu", name="stage4")(x)
    logits = classifier_head(x, num_classes, dropout)
    model = keras.Model(inputs, logits, name="densenet40")
    if weights_file is not None:
        _copy_densenet121_weights(model, weights_file)
    return model
