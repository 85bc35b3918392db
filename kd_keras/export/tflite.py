"""TFLite (LiteRT) conversion in four variants, and a LiteRT runner.

Conversion goes Keras model -> SavedModel (one :class:`keras.export.ExportArchive` endpoint ``serve`` with a
``(None, H, W, C)`` float input named ``"image"``) -> ``tf.lite.TFLiteConverter.from_saved_model``, the path
TensorFlow documents for Keras 3 (``from_concrete_functions`` gave NaN outputs in this project's tests). Only
TFLite builtin ops are allowed, so a file that would need the Flex (TensorFlow ops) delegate fails at conversion
instead of at deployment.

Variants:

- ``"fp32"``: float32 weights and activations.
- ``"fp16"``: float16 weights (half the size), float32 compute on CPUs.
- ``"dynamic"``: int8 weights, activations quantised on the fly; float input and output.
- ``"int8"``: full integer: int8 weights, activations, **input and output**, calibrated on representative real
  images from the training data. The input is ``round(pixel / scale) + zero_point``; read both from the file
  (:attr:`LiteRTRunner.input_quantization`) or its sidecar.

Files run with ``ai_edge_litert.interpreter.Interpreter`` (XNNPACK on CPU); ``tf.lite.Interpreter`` is deprecated.

Example:

```python
from kd_keras.export.tflite import LiteRTRunner, convert_tflite

convert_tflite(student, "student_int8.tflite", "int8", representative_images=train_images[:200])
logits = LiteRTRunner("student_int8.tflite", num_threads=2).predict(val_images)  # dequantised float logits
```
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

TFLITE_VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def model_input_shape(model) -> tuple[int, int, int]:
    """``(H, W, C)`` of a zoo model's single image input; a clear error for anything else."""
    if len(model.inputs) != 1:
        raise ValueError(f"{model.name}: export needs a model with one image input, got {len(model.inputs)} inputs")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise ValueError(f"{model.name}: export needs a fixed (H, W, C) input, got {shape}")
    return tuple(int(d) for d in shape)


def write_saved_model(model, directory: str | os.PathLike) -> Path:
    """Write ``model`` as a SavedModel with one ``serve`` endpoint taking ``image`` ``(None, H, W, C)`` float32.

    Converting every TFLite variant from the same SavedModel traces the Keras model once.
    """
    import functools

    import keras
    import tensorflow as tf

    height, width, channels = model_input_shape(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        functools.partial(model.__call__, training=False),
        input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32, name="image")],
    )
    archive.write_out(str(directory), verbose=False)
    return Path(directory)


def saved_model_converter(saved_model_dir: str | os.PathLike):
    """``tf.lite.TFLiteConverter.from_saved_model`` for a SavedModel from :func:`write_saved_model`."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))


def as_image_batch(images, input_shape: tuple[int, int, int], what: str = "images") -> np.ndarray:
    """Stack ``images`` (an ``(N, H, W, C)`` array or an iterable of ``(H, W, C)`` arrays) into float32 [0, 255].

    Raises:
        ValueError: wrong shape, no images, non-finite values, or pixels that look scaled to [0, 1] or
            normalised (the models take raw [0, 255] pixels and normalise inside).
    """
    if isinstance(images, np.ndarray):
        batch = images
    else:
        batch = np.stack([np.asarray(image) for image in images]) if images is not None else np.zeros((0,))
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim == 3 and input_shape[-1] == 1 and batch.shape[1:] == input_shape[:2]:
        batch = batch[..., None]
    if batch.ndim != 4 or len(batch) == 0:
        raise ValueError(f"{what}: expected a non-empty (N, H, W, C) batch, got shape {batch.shape}")
    if tuple(batch.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{what}: image shape {tuple(batch.shape[1:])} does not match the model input {input_shape}")
    if not np.all(np.isfinite(batch)):
        raise ValueError(f"{what}: images contain NaN or infinite values")
    low, high = float(batch.min()), float(batch.max())
    if low < 0.0 or high > 255.0:
        raise ValueError(f"{what}: pixels span [{low:.3g}, {high:.3g}]; models take raw pixels in [0, 255]")
    if high <= 1.0:
        raise ValueError(
            f"{what}: pixels span [{low:.3g}, {high:.3g}], which looks scaled to [0, 1]; models take raw pixels in "
            "[0, 255] and normalise inside"
        )
    return batch


def convert_tflite(
    model,
    path: str | os.PathLike,
    variant: str = "fp32",
    representative_images: np.ndarray | Iterable[np.ndarray] | None = None,
    *,
    saved_model_dir: str | os.PathLike | None = None,
    converter=None,
    max_calibration_images: int = 200,
) -> Path:
    """Convert a Keras model to a ``.tflite`` file.

    Args:
        model: a Keras model with one ``(H, W, C)`` image input in [0, 255] and logits out.
        path: output ``.tflite`` path.
        variant: ``"fp32"``, ``"fp16"``, ``"dynamic"`` or ``"int8"``.
        representative_images: real training images for the int8 calibration (``(N, H, W, C)`` array or an
            iterable of ``(H, W, C)`` arrays, float pixels in [0, 255]); required for ``"int8"``, unused else.
        saved_model_dir: a SavedModel of ``model`` already written by :func:`write_saved_model` (saves tracing
            the model again when converting several variants).
        converter: a ``tf.lite.TFLiteConverter`` from :func:`saved_model_converter`, reused across variants
            (loading the SavedModel is a good part of each conversion); every setting is reset here.
        max_calibration_images: use at most this many representative images (calibration cost grows with it).

    Returns:
        ``path``.

    Raises:
        ValueError: unknown variant, or int8 without (valid) representative images.
        RuntimeError: the converter failed (e.g. an op outside the TFLite builtins); the message names the file.

    Example:
        >>> convert_tflite(student, "student_fp16.tflite", "fp16")
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; expected one of {TFLITE_VARIANTS}")
    path = Path(path)
    input_shape = model_input_shape(model)
    calibration = None
    if variant == "int8":
        if representative_images is None:
            raise ValueError(f"{path}: int8 export needs representative_images (real images from the training data)")
        calibration = as_image_batch(representative_images, input_shape, "representative_images")
        calibration = calibration[:max_calibration_images]

    with tempfile.TemporaryDirectory() as scratch:
        if converter is None:
            if saved_model_dir is None:
                saved_model_dir = write_saved_model(model, Path(scratch) / "saved_model")
            converter = saved_model_converter(saved_model_dir)
        # Every setting, every time: a reused converter must not carry the last variant's settings.
        converter.optimizations = [] if variant == "fp32" else [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16] if variant == "fp16" else []
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if variant == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS
        ]
        converter.representative_dataset = None
        converter.inference_input_type = converter.inference_output_type = tf.float32
        if variant == "int8":
            converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
            converter.inference_input_type = converter.inference_output_type = tf.int8
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises many types; say which file and why, in one line
            reason = str(error).strip().splitlines()
            raise RuntimeError(f"{path}: TFLite {variant} conversion of {model.name} failed: "
                               f"{reason[0] if reason else type(error).__name__}") from error
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(flatbuffer)
    return path


def _quantization(detail: dict) -> tuple[float, int] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return float(scale), int(zero_point)
    return None


class LiteRTRunner:
    """Runs a ``.tflite`` file with ``ai_edge_litert`` (XNNPACK on CPU) on float [0, 255] images.

    int8 inputs are quantised and int8 outputs dequantised here, so every variant takes and returns floats.

    Args:
        path: the ``.tflite`` file.
        num_threads: CPU threads for the interpreter (``None``: LiteRT's default).
        **interpreter_options: further ``ai_edge_litert.interpreter.Interpreter`` keywords, e.g.
            ``experimental_default_delegate_latest_features=True`` (XNNPACK's newest features) or
            ``experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (no XNNPACK).

    Example:
        >>> logits = LiteRTRunner("student_fp32.tflite", num_threads=2).predict(images, batch_size=16)
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, **interpreter_options):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such .tflite file")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads, **interpreter_options)
        except ValueError as error:
            raise ValueError(f"{self.path}: LiteRT cannot load it ({str(error).splitlines()[0]})") from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{self.path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        self._batch = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self._input["shape"][1:])

    @property
    def input_dtype(self):
        return self._input["dtype"]

    @property
    def output_dtype(self):
        return self._output["dtype"]

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` of an int8 input, ``None`` for a float input."""
        return _quantization(self._input)

    @property
    def output_quantization(self) -> tuple[float, int] | None:
        return _quantization(self._output)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], [batch, *self.input_shape])
            try:
                self.interpreter.allocate_tensors()
            except RuntimeError as error:
                reason = str(error).strip().splitlines()
                raise RuntimeError(f"{self.path}: LiteRT cannot prepare it for a batch of {batch} "
                                   f"({reason[0] if reason else 'no reason given'})") from None
            self._batch = batch

    def quantize_input(self, images: np.ndarray) -> np.ndarray:
        quant = self.input_quantization
        if quant is None:
            return images.astype(self.input_dtype, copy=False)
        scale, zero_point = quant
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(images / scale) + zero_point, info.min, info.max).astype(self.input_dtype)

    def run_batch(self, images: np.ndarray) -> np.ndarray:
        """One ``invoke`` on a batch already quantised by :meth:`quantize_input`; raw output."""
        self._resize(len(images))
        self.interpreter.set_tensor(self._input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"])

    def dequantize_output(self, output: np.ndarray) -> np.ndarray:
        quant = self.output_quantization
        if quant is None:
            return output.astype(np.float32, copy=False)
        scale, zero_point = quant
        return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Float logits for ``(N, H, W, C)`` float [0, 255] images, run ``batch_size`` at a time."""
        images = np.asarray(images, dtype=np.float32)
        outputs = [
            self.dequantize_output(self.run_batch(self.quantize_input(images[start : start + batch_size])))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(outputs, axis=0)
