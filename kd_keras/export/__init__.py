"""Edge export: TFLite (fp32, fp16, dynamic range, int8) and ONNX files with parity proven on real images.

- :func:`export_model`: convert a student, run each file in its runtime, compare with Keras, write a sidecar.
- :func:`convert_tflite` / :class:`LiteRTRunner`, :func:`convert_onnx` / :class:`OnnxRunner`: the pieces.
- :func:`measure_parity` / :class:`ParityReport` / :class:`ExportParityError`: the parity gates.
- :func:`optimize_onnx` (exact graph rewrites ONNX Runtime runs faster), :func:`quantize_onnx` (ONNX dynamic / int8
  QDQ), :func:`graph_macs` (multiply-adds of an exported file).
- :mod:`kd_keras.export.latency`: per-volume latency in Keras, LiteRT and ONNX Runtime, every precision;
  :mod:`kd_keras.export.profile`: per-operator time; :mod:`kd_keras.export.latency_compare`: interleaved A/B.

Example:

```python
from kd_keras.export import export_model

export_model(student, "export/", parity_images=val_images, parity_labels=val_labels,
             variants=("tflite_fp32", "tflite_int8", "onnx"), representative_images=train_images[:200])
```
"""

from kd_keras.export.exporter import EXPORT_VARIANTS, ExportedFile, export_model, images_from_folders, load_keras_model
from kd_keras.export.graph_macs import graph_macs
from kd_keras.export.onnx_format import ONNX_OPSET, OnnxRunner, convert_onnx
from kd_keras.export.onnx_optimize import optimize_onnx
from kd_keras.export.onnx_quantize import ONNX_PRECISIONS, quantize_onnx
from kd_keras.export.parity import (
    ExportParityError,
    ParityReport,
    ParityThresholds,
    check_parity,
    decisions,
    measure_parity,
)
from kd_keras.export.sidecar import read_sidecar, sha256_file, sidecar_path, write_sidecar
from kd_keras.export.tflite import (
    TFLITE_VARIANTS,
    LiteRTRunner,
    convert_tflite,
    saved_model_converter,
    write_saved_model,
)

__all__ = [
    "EXPORT_VARIANTS", "ONNX_OPSET", "ONNX_PRECISIONS", "TFLITE_VARIANTS", "ExportParityError", "ExportedFile",
    "LiteRTRunner", "OnnxRunner", "ParityReport", "ParityThresholds", "check_parity", "convert_onnx", "convert_tflite",
    "decisions", "export_model", "graph_macs", "images_from_folders", "load_keras_model", "measure_parity",
    "optimize_onnx", "quantize_onnx", "read_sidecar", "sha256_file", "saved_model_converter", "sidecar_path",
    "write_saved_model", "write_sidecar",
]
