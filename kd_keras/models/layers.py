"""Building blocks shared by the model families.

Only export-friendly ops live here (plain arithmetic, reshape/transpose, standard conv layers), so every model
converts to TFLite and ONNX without custom ops.
"""

from __future__ import annotations

import keras
from keras import layers, ops

# Per-channel statistics of ImageNet, in RGB order, on the [0, 255] scale (torchvision / imgclsmob, Keras "torch").
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# The BGR mean Keras' "caffe" preprocessing subtracts (VGG16 / ResNet50 ImageNet weights were trained with it).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="kd_keras")
class PixelNormalization(layers.Layer):
    """Maps [0, 255] pixels to what a network expects, inside the model.

    Keeping normalisation in the graph means an exported file takes raw pixels and the data pipeline is the same
    for every model.

    Args:
        mode: ``"imagenet"`` (subtract ImageNet mean, divide by std, as torchvision / imgclsmob and Keras'
            DenseNet), ``"caffe"`` (RGB to BGR and subtract the mean, as Keras' VGG16 / ResNet50), ``"tf"``
            (scale to [-1, 1]) or ``"unit"`` (scale to [0, 1]).
        to_rgb: repeat a 1-channel input to 3 channels first (for networks whose first layer needs 3, such as
            ImageNet-initialised teachers).
    """

    MODES = ("imagenet", "caffe", "tf", "unit")

    def __init__(self, mode: str = "imagenet", to_rgb: bool = False, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.to_rgb = to_rgb

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        channels = x.shape[-1]
        if self.to_rgb and channels == 1:
            x = ops.concatenate([x, x, x], axis=-1)
            channels = 3
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            if channels == 3:
                x = x[..., ::-1]  # RGB -> BGR
                mean = CAFFE_MEAN_BGR
            else:
                mean = (sum(CAFFE_MEAN_BGR) / 3,)
            return x - ops.convert_to_tensor(mean, dtype=x.dtype)
        # imagenet
        if channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
        return (x - ops.convert_to_tensor(mean, dtype=x.dtype)) / ops.convert_to_tensor(std, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        if self.to_rgb and input_shape[-1] == 1:
            return (*input_shape[:-1], 3)
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "to_rgb": self.to_rgb}


def image_input(input_shape: tuple[int, int, int]) -> keras.KerasTensor:
    """The model input, named ``"image"`` (float pixels in [0, 255])."""
    return keras.Input(shape=input_shape, name="image")


def classifier_head(
    features: keras.KerasTensor, num_classes: int, dropout: float = 0.0
) -> keras.KerasTensor:
    """Global average pool -> optional dropout -> Dense logits.

    The pooled vector is the layer ``"features"``, the output is the layer ``"logits"``.
    """
    x = layers.GlobalAveragePooling2D(name="features")(features)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, name="logits")(x)
