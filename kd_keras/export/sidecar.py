"""The JSON sidecar written beside every exported file.

A ``.tflite`` or ``.onnx`` file alone does not say how to feed it or read its output. The sidecar
``<file>.json`` does: input size and channels, the pixel scale (float [0, 255], or the int8 quantisation of the
input), where normalisation happens (inside the model), class names and the decision rule, a hash of the source
model, the package versions that made the file, the export variant and the parity report.

Example:

```python
from kd_keras.export import read_sidecar

info = read_sidecar("student_int8.tflite")  # reads student_int8.tflite.json
scale, zero_point = info["input"]["quantization"]["scale"], info["input"]["quantization"]["zero_point"]
```
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

import numpy as np

# Packages whose versions decide what an exported file computes.
EXPORT_PACKAGES = (
    "kd-keras", "tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy",
)


def sidecar_path(exported_file: str | os.PathLike) -> Path:
    """``model.tflite`` -> ``model.tflite.json`` (the sidecar sits beside the file it describes)."""
    path = Path(exported_file)
    return path.with_name(path.name + ".json")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_weights(weights: list[np.ndarray]) -> str:
    """Hex SHA-256 over a model's weight arrays (shape, dtype and bytes, in order).

    Used when the source model was built in memory and has no file: the same weights always give the same hash,
    unlike a freshly saved ``.keras`` archive whose zip entries carry timestamps.
    """
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`EXPORT_PACKAGES` (absent packages left out)."""
    versions = {}
    for name in EXPORT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None  # strict JSON has no NaN
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_sidecar(exported_file: str | os.PathLike, info: dict) -> Path:
    """Write ``info`` (plus a UTC creation time) as indented strict JSON beside ``exported_file``.

    Returns:
        The sidecar path, ``<exported_file>.json``.
    """
    path = sidecar_path(exported_file)
    record = {"created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **info}
    path.write_text(json.dumps(_jsonable(record), indent=2, allow_nan=False) + "\n")
    return path


def read_sidecar(exported_file: str | os.PathLike) -> dict:
    """Read the sidecar of ``exported_file``; a clear error when it is missing or not JSON."""
    path = sidecar_path(exported_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sidecar beside {Path(exported_file).name} (was it exported by kd_keras?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
