"""Reduced-precision ONNX files through ONNX Runtime's own quantisation tools.

- ``"dynamic"``: :func:`onnxruntime.quantization.quantize_dynamic`, int8 weights, activations quantised at run time
  (ONNX Runtime turns convolutions into ``ConvInteger``); float input and output.
- ``"int8"``: :func:`onnxruntime.quantization.quantize_static` in QDQ format, per-channel int8 weights and uint8
  activations (the pairing ONNX Runtime's x86 kernels are built for), calibrated (min-max) on real images;
  ``QuantizeLinear``/``DequantizeLinear`` at the ends, so the file still takes float [0, 255] pixels and returns
  float logits like every other file here.
- ``"fp16"``: needs ``onnxconverter-common`` (not a dependency); :func:`onnx_fp16_available` says whether it is
  installed. ONNX Runtime's CPU provider has few float16 kernels, so on a CPU such a file mostly adds casts.

Example:

```python
from kd_keras.export.onnx_quantize import quantize_onnx

quantize_onnx("student.onnx", "student_int8.onnx", "int8", calibration_images=train_images[:100])
```
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["ONNX_PRECISIONS", "onnx_fp16_available", "quantize_onnx"]

ONNX_PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def onnx_fp16_available() -> bool:
    """Whether ``onnxconverter-common`` (ONNX float16 conversion) is installed."""
    return importlib.util.find_spec("onnxconverter_common") is not None


class _ImageReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``(N, H, W, C)`` images, a few at a time."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 8):
        self._batches = iter([{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)


def quantize_onnx(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    precision: str,
    calibration_images: np.ndarray | None = None,
    *,
    max_calibration_images: int = 100,
) -> Path:
    """Write a ``precision`` copy of a float32 ``.onnx`` file.

    Args:
        path: the float32 ``.onnx`` file (from :func:`kd_keras.export.onnx_format.convert_onnx`).
        out_path: where the new file goes.
        precision: ``"dynamic"``, ``"int8"`` or ``"fp16"`` (``"fp32"`` copies the file).
        calibration_images: real training images, ``(N, H, W, C)`` float [0, 255]; required for ``"int8"``.
        max_calibration_images: use at most this many.

    Returns:
        ``out_path``.

    Raises:
        ValueError: unknown precision, or int8 without calibration images.
        RuntimeError: the quantiser failed, or fp16 without ``onnxconverter-common``; the message names the file.
    """
    import onnx

    path, out_path = Path(path), Path(out_path)
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"unknown ONNX precision {precision!r}; expected one of {ONNX_PRECISIONS}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if precision == "fp32":
        out_path.write_bytes(path.read_bytes())
        return out_path
    if precision == "fp16":
        if not onnx_fp16_available():
            raise RuntimeError(f"{out_path}: ONNX fp16 needs onnxconverter-common, which is not installed")
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        onnx.save(model, str(out_path))
        return out_path
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    try:
        if precision == "dynamic":
            quantize_dynamic(str(path), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
            return out_path
        if calibration_images is None or len(calibration_images) == 0:
            raise ValueError(f"{out_path}: int8 ONNX export needs calibration_images (real training images)")
        images = np.asarray(calibration_images, dtype=np.float32)[:max_calibration_images]
        input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name
        with tempfile.TemporaryDirectory() as scratch:
            prepared = Path(scratch) / "prepared.onnx"
            try:  # shape inference (+ ORT's graph optimisation) first, as the quantiser's documentation advises
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            except Exception:  # pre-processing is an optimisation: quantise the file as it is
                prepared = path
            quantize_static(str(prepared), str(out_path), _ImageReader(input_name, images),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)
    except ValueError:
        raise
    except Exception as error:  # the quantiser raises many types: name the file and the reason in one line
        reason = str(error).strip().splitlines()
        raise RuntimeError(f"{out_path}: ONNX {precision} quantisation failed: "
                           f"{reason[0] if reason else type(error).__name__}") from error
    return out_path
