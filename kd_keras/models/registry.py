"""Build any teacher or student by name.

Every family file in ``kd_keras/models/`` registers its variants with :func:`register_model`; the registry
discovers family files on first use, so adding a family needs no edit here.

Conventions every registered builder follows (tests check them for every name):

- Input: one image tensor named ``"image"`` of float pixel values in **[0, 255]**, shape ``(H, W, C)`` with
  ``C`` 1 or 3 and ``H, W >= 32``. The normalisation the network expects happens inside the model
  (:class:`kd_keras.models.layers.PixelNormalization`), so an exported ``.tflite``/``.onnx`` file takes raw pixels.
- Output: **logits** (no softmax) from a layer named ``"logits"``, shape ``(batch, num_classes)``. A binary task
  uses ``num_classes=2`` (softmax over two logits; temperature distillation works unchanged) or ``num_classes=1``
  (one sigmoid logit; the objectives treat it as the two logits ``[0, z]``).
- Stage outputs are layers named ``"stage1"``, ``"stage2"``, ... (teachers from ``keras.applications`` keep
  their own layer names, listed in their spec's ``taps``); the pooled feature vector is ``"features"``.
  :func:`with_taps` turns any model into one that also returns chosen stage outputs (attention transfer, hints).
- ``dropout`` > 0 inserts a ``Dropout`` named ``"dropout"`` before the classifier.

Example:
    >>> from kd_keras.models import build_model, list_models
    >>> student = build_model("squeezenet_v1_1", input_shape=(128, 128, 1), num_classes=2)
    >>> "resnet50" in list_models(role="teacher")
    True
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras

# Modules of this package that are not model families.
_NOT_FAMILIES = {"registry", "layers", "profile", "weights", "__main__"}


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one named model.

    Args:
        name: registry name, as in the literature (imgclsmob names for the OCT study's students).
        family: family name, e.g. ``"squeezenet"``; one file per family.
        builder: ``builder(input_shape, num_classes, dropout, **kwargs) -> keras.Model``.
        role: ``"student"`` or ``"teacher"``.
        reference_params: trainable parameters of the original implementation at 1000 classes and
            224x224x3, or ``None`` when there is no external reference.
        taps: the stage layer names this model offers to :func:`with_taps`.
        source: where the architecture comes from (paper, implementation).
    """

    name: str
    family: str
    builder: Callable[..., keras.Model]
    role: str = "student"
    reference_params: int | None = None
    taps: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_DISCOVERED = False


def register_model(
    name: str,
    *,
    family: str,
    role: str = "student",
    reference_params: int | None = None,
    taps: tuple[str, ...] = (),
    source: str = "",
) -> Callable[[Callable[..., keras.Model]], Callable[..., keras.Model]]:
    """Decorator that registers ``builder`` under ``name``."""
    if role not in ("student", "teacher"):
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")

    def decorate(builder: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model name {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, family, builder, role, reference_params, tuple(taps), source)
        return builder

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    package_dir = Path(__file__).parent
    for module in pkgutil.iter_modules([str(package_dir)]):
        if module.name not in _NOT_FAMILIES and not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")
    _DISCOVERED = True


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; a clear error lists the known names."""
    _discover()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; known models: {known}")
    return _REGISTRY[name]


def list_models(role: str | None = None, family: str | None = None) -> list[str]:
    """Registered names, optionally only one role (``"student"``/``"teacher"``) or one family, sorted."""
    _discover()
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (role is None or s.role == role) and (family is None or s.family == family)
    )


def _check_input_shape(name: str, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape must be (height, width, channels), got {input_shape}")
    h, w, c = (int(v) for v in input_shape)
    if h < 32 or w < 32:
        raise ValueError(f"{name}: input must be at least 32x32 pixels, got {h}x{w}")
    if c not in (1, 3):
        raise ValueError(f"{name}: input must have 1 or 3 channels, got {c}")
    return h, w, c


def build_model(
    name: str,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 1000,
    weights: str | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> keras.Model:
    """Build the model registered as ``name``.

    Args:
        name: a name from :func:`list_models`.
        input_shape: ``(height, width, channels)``; at least 32x32, 1 or 3 channels.
        num_classes: number of logits; 1 for a single sigmoid logit.
        weights: ``None`` (random initialisation), ``"imagenet"`` (teachers only; needs the Keras weights
            cache or internet), or a path to a weights file (``.weights.h5`` of this model, or for a teacher
            a Keras-applications "notop" ``.h5`` file).
        dropout: dropout rate before the classifier (0 disables).
        **kwargs: family-specific options, passed to the builder.

    Returns:
        A ``keras.Model`` named ``name`` that maps [0, 255] pixels to logits.
    """
    spec = get_spec(name)
    input_shape = _check_input_shape(name, input_shape)
    if num_classes < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout}")
    if spec.role == "teacher":
        # Teachers load their backbone weights themselves (keras.applications).
        return spec.builder(input_shape, num_classes, dropout, weights=weights, **kwargs)
    if weights == "imagenet":
        raise ValueError(
            f"{name}: no ImageNet weights are offered for students; pass weights=None or a weights file path"
        )
    model = spec.builder(input_shape, num_classes, dropout, **kwargs)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} does not exist")
        model.load_weights(str(path))
    return model


def with_taps(model: keras.Model, taps: list[str] | tuple[str, ...]) -> keras.Model:
    """A model sharing ``model``'s weights that returns ``[logits, tap_1, ..., tap_k]``.

    Args:
        model: a model built by :func:`build_model` (or any functional model with layers of those names).
        taps: layer names, e.g. ``["stage3", "stage4"]``.

    Example:
        >>> m = build_model("mobilenet_wd4", input_shape=(64, 64, 3), num_classes=2)
        >>> logits, s3 = with_taps(m, ["stage3"])(np.zeros((1, 64, 64, 3)))
    """
    names = {layer.name for layer in model.layers}
    missing = [t for t in taps if t not in names]
    if missing:
        _discover()
        if model.name in _REGISTRY:
            offered = list(_REGISTRY[model.name].taps)
        else:
            offered = sorted(n for n in names if n.startswith("stage") or n == "features")
        raise ValueError(f"{model.name}: no layer named {missing}; taps offered: {offered}")
    outputs = [model.output] + [model.get_layer(t).output for t in taps]
    # A single input stays a tensor (not a one-element list) so callers can pass a plain array.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_taps")
