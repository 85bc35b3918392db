"""Teachers from ``keras.applications``: VGG16, ResNet50, DenseNet-121/169/201, with a fresh head.

Each teacher is ``image`` ([0, 255] pixels) -> :class:`~kd_keras.models.layers.PixelNormalization` with the
preprocessing its ImageNet weights expect (``"caffe"``: RGB->BGR and mean subtraction for VGG16 and ResNet50;
``"imagenet"``: torchvision mean/std for DenseNet) and ``to_rgb=True``, so grey 1-channel images work with
ImageNet weights -> the Keras backbone (``include_top=False``) -> global average pooling ``"features"`` ->
optional ``"dropout"`` -> Dense ``"logits"``.

The backbone is built on the normalised tensor (``input_tensor=``), so its layers are layers of the returned
model and keep their Keras names: :func:`~kd_keras.models.with_taps` reaches any of them, e.g. ResNet50's
``"conv4_block6_out"`` or DenseNet-121's ``"conv5_block16_2_conv"`` (the 32-plane map of the last dense layer,
study 004's attention-transfer layer). Each spec's ``taps`` lists the stage outputs.

Which studies use them: VGG16 is study 000's teacher, ResNet50 study 002's (and study 003's SimCLR backbone),
DenseNet-121 study 004's teacher and large student. Study 003 used a **DenseNet-161**, which Keras does not offer
(no ``keras.applications.DenseNet161``); ``densenet201`` is the closest DenseNet Keras offers with ImageNet weights
(DenseNet-161: growth rate 48, ~28.7M parameters; DenseNet-201: growth rate 32, ~20.0M).
:mod:`kd_keras.models.densenet161` builds DenseNet-161 itself (no ImageNet weights), :mod:`kd_keras.models.inception`
Inception-V3.

Weights: ``None`` (random), ``"imagenet"`` (Keras' cached notop file, downloaded if missing; offline this is one
:class:`~kd_keras.models.weights.WeightsUnavailableError` that names the file to provide), the path of a Keras
notop ``.h5`` file (backbone only, fresh head), or the path of a ``.weights.h5`` file saved from the same teacher
(``model.save_weights``; whole model, head included).

Example:
    >>> from kd_keras.models import build_model, with_taps
    >>> teacher = build_model("resnet50", input_shape=(224, 224, 1), num_classes=4, weights=None)
    >>> tapped = with_taps(teacher, ["conv4_block6_out", "conv5_block3_out"])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from kd_keras.models.layers import PixelNormalization, classifier_head, image_input
from kd_keras.models.registry import register_model
from kd_keras.models.weights import load_backbone_weights, resolve_backbone_weights


@dataclass(frozen=True)
class _Teacher:
    application: Callable[..., keras.Model]
    normalization: str
    taps: tuple[str, ...]


_DENSENET_TAPS = ("pool2_relu", "pool3_relu", "pool4_relu", "relu")

TEACHERS: dict[str, _Teacher] = {
    "vgg16": _Teacher(
        keras.applications.VGG16,
        "caffe",
        ("block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"),
    ),
    "resnet50": _Teacher(
        keras.applications.ResNet50,
        "caffe",
        ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    ),
    "densenet121": _Teacher(keras.applications.DenseNet121, "imagenet", _DENSENET_TAPS),
    "densenet169": _Teacher(keras.applications.DenseNet169, "imagenet", _DENSENET_TAPS),
    "densenet201": _Teacher(keras.applications.DenseNet201, "imagenet", _DENSENET_TAPS),
}


def build_teacher(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float = 0.0,
    weights: str | os.PathLike | None = None,
) -> keras.Model:
    """Build the ``keras.applications`` teacher ``name`` with a fresh ``num_classes`` head.

    Args:
        name: a key of :data:`TEACHERS` (``"vgg16"``, ``"resnet50"``, ``"densenet121"``, ``"densenet169"``,
            ``"densenet201"``).
        input_shape: ``(height, width, channels)``, channels 1 or 3 (1 is repeated to RGB inside the model).
        num_classes: number of logits.
        dropout: dropout rate before the classifier (0 disables).
        weights: ``None``, ``"imagenet"``, a Keras notop ``.h5`` file, or a ``.weights.h5`` file of this teacher.

    Returns:
        A ``keras.Model`` named ``name`` mapping [0, 255] pixels to logits.

    Example:
        >>> model = build_teacher("vgg16", (64, 64, 1), num_classes=2)
        >>> model.get_layer("block5_pool").output.shape
        (None, 2, 2, 512)
    """
    teacher = TEACHERS[name]
    whole_model_file = None
    backbone_file = None
    if weights is not None and str(weights).endswith(".weights.h5"):
        whole_model_file = Path(weights).expanduser()
        if not whole_model_file.is_file():
            raise FileNotFoundError(f"{name}: weights file {whole_model_file} does not exist")
    else:
        # Resolved before building, so a missing file or an offline machine fails fast with one message.
        backbone_file = resolve_backbone_weights(name, weights)

    inputs = image_input(input_shape)
    x = PixelNormalization(teacher.normalization, to_rgb=True, name="normalization")(inputs)
    backbone = teacher.application(include_top=False, weights=None, input_tensor=x)
    if backbone_file is not None:
        load_backbone_weights(backbone, backbone_file, name)
    logits = classifier_head(backbone.output, num_classes, dropout)
    model = keras.Model(inputs, logits, name=name)
    if whole_model_file is not None:
        try:
            model.load_weights(str(whole_model_file))
        except Exception as error:  # Keras raises several types for a wrong file
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise ValueError(f"{name}: weights file {whole_model_file} does not fit this model: {reason}") from None
    return model


def _register(name: str, family: str, reference_params: int | None, source: str) -> None:
    def builder(
        input_shape: tuple[int, int, int],
        num_classes: int,
        dropout: float = 0.0,
        weights: str | os.PathLike | None = None,
    ) -> keras.Model:
        return build_teacher(name, input_shape, num_classes, dropout, weights=weights)

    builder.__name__ = name
    builder.__doc__ = f"{name} teacher (keras.applications). Args as :func:`build_teacher`."
    register_model(
        name,
        family=family,
        role="teacher",
        reference_params=reference_params,
        taps=TEACHERS[name].taps,
        source=source,
    )(builder)


# Reference counts: trainable parameters of the Keras include_top models at 1000 classes, whose top is the same
# GAP + Dense head as ours (Keras model.summary(); equal to torchvision's counts for DenseNet). VGG16's Keras top
# has two 4096-wide FC layers and ours does not, so it has no reference for the whole model (its conv part is
# checked against Keras' 14,714,688 in the tests).
_register("vgg16", "vgg", None, "Simonyan & Zisserman 2015 (arXiv:1409.1556); keras.applications.VGG16")
_register("resnet50", "resnet", 25_583_592, "He et al. 2016 (arXiv:1512.03385); keras.applications.ResNet50")
_register("densenet121", "densenet", 7_978_856, "Huang et al. 2017 (arXiv:1608.06993); keras.applications.DenseNet121")
_register("densenet169", "densenet", 14_149_480, "Huang et al. 2017 (arXiv:1608.06993); keras.applications.DenseNet169")
_register("densenet201", "densenet", 20_013_928, "Huang et al. 2017 (arXiv:1608.06993); keras.applications.DenseNet201")
