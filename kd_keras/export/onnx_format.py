"""ONNX conversion (tf2onnx, opset 17) and an ONNX Runtime runner.

The ONNX file takes the same input as the Keras model: ``image``, float32 ``(batch, H, W, C)`` pixels in
[0, 255] (NHWC, normalisation inside), and returns the logits.

Example:

```python
from kd_keras.export.onnx_format import OnnxRunner, convert_onnx

convert_onnx(student, "student.onnx")
logits = OnnxRunner("student.onnx", num_threads=2).predict(images)
```
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ONNX_OPSET = 17


def convert_onnx(model, path: str | os.PathLike, opset: int = ONNX_OPSET, optimize: bool = True) -> Path:
    """Convert a Keras model to ONNX with tf2onnx.

    Args:
        model: a Keras model with one ``(H, W, C)`` image input and logits out.
        path: output ``.onnx`` path.
        opset: ONNX opset (17 by default, the project's target).
        optimize: apply the exact rewrites of :mod:`kd_keras.export.onnx_optimize` (channel shuffle as one
            ``Gather``, input normalisation in NCHW): the same arithmetic, faster in ONNX Runtime.

    Returns:
        ``path``.

    Raises:
        RuntimeError: tf2onnx failed; the message names the file.

    Example:
        >>> convert_onnx(student, "student.onnx")
    """
    import tensorflow as tf
    import tf2onnx

    from kd_keras.export.tflite import model_input_shape

    path = Path(path)
    height, width, channels = model_input_shape(model)
    signature = (tf.TensorSpec((None, height, width, channels), tf.float32, name="image"),)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(path))
    except Exception as error:  # tf2onnx raises many types; name the file and the reason in one line
        reason = str(error).strip().splitlines()
        raise RuntimeError(f"{path}: ONNX conversion of {model.name} failed: "
                           f"{reason[0] if reason else type(error).__name__}") from error
    if optimize:
        from kd_keras.export.onnx_optimize import optimize_onnx

        optimize_onnx(path)
    return path


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OnnxRunner:
    """Runs an ``.onnx`` file with ONNX Runtime on float [0, 255] images.

    Args:
        path: the ``.onnx`` file.
        num_threads: intra-op threads (``None``: ONNX Runtime's default, all cores).
        providers: execution providers, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``
            (default: CPU only, so timings are comparable across machines).
        graph_optimization_level: ``"all"`` (ONNX Runtime's default: layout transforms such as NCHWc included),
            ``"extended"``, ``"basic"`` or ``"disable"``.
        session_config: extra ``SessionOptions.add_session_config_entry`` keys, e.g.
            ``{"session.intra_op.allow_spinning": "0"}``.

    Example:
        >>> logits = OnnxRunner("student.onnx", num_threads=2).predict(images, batch_size=16)
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None, providers: list[str] | None = None,
                 graph_optimization_level: str = "all", session_config: dict[str, str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such .onnx file")
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        level = ort.GraphOptimizationLevel
        levels = {"all": level.ORT_ENABLE_ALL, "basic": level.ORT_ENABLE_BASIC,
                  "extended": level.ORT_ENABLE_EXTENDED, "disable": level.ORT_DISABLE_ALL}
        if graph_optimization_level not in levels:
            raise ValueError(f"graph_optimization_level {graph_optimization_level!r}: expected one of {list(levels)}")
        options.graph_optimization_level = levels[graph_optimization_level]
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, str(value))
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one input, got {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(int(d) for d in inputs[0].shape[1:])
        self.providers = self.session.get_providers()

    def run_batch(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Float logits for ``(N, H, W, C)`` float [0, 255] images, run ``batch_size`` at a time."""
        images = np.asarray(images, dtype=np.float32)
        return np.concatenate(
            [self.run_batch(images[start : start + batch_size]) for start in range(0, len(images), batch_size)],
            axis=0,
        )
