"""Report helpers: markdown tables, CI formatting, JSON with NumPy values, and the run's environment."""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

# Packages whose versions every results.json records.
RECORDED_PACKAGES = (
    "kd-keras", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn", "opencv-python-headless",
    "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert",
)


def environment() -> dict:
    """Python, platform and the versions of the packages a result depends on (absent ones left out)."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def intervals_apart(a: object, b: object) -> bool | None:
    """Whether two ``{"estimate", "low", "high"}`` intervals do not overlap (``None``: either has no finite CI).

    Example:
        >>> intervals_apart({"low": 0.9, "high": 0.95}, {"low": 0.7, "high": 0.8})
        True
    """
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        return None
    bounds = [a.get("low"), a.get("high"), b.get("low"), b.get("high")]
    if any(v is None or not np.isfinite(v) for v in bounds):
        return None
    return bool(a["low"] > b["high"] or a["high"] < b["low"])


def format_ci(value: Mapping | float | None, percent: bool = True) -> str:
    """``{"estimate", "low", "high"}`` -> ``"94.00 [91.44, 96.73]"``; a bare number -> ``"94.00"``."""
    scale = 100.0 if percent else 1.0
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        est = value.get("estimate")
        if est is None or np.isnan(est):
            return "n/a"
        if value.get("low") is None or np.isnan(value.get("low", np.nan)):
            return f"{scale * est:.2f}"
        return f"{scale * est:.2f} [{scale * value['low']:.2f}, {scale * value['high']:.2f}]"
    return "n/a" if np.isnan(value) else f"{scale * value:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _to_json(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj):
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _nan_to_none(obj.tolist())
    return obj


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON (strict: NaN and infinities become null), converting NumPy values and
    paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(obj), indent=2, default=_to_json, allow_nan=False))
    return path


def batch_norm_sentence(batches: int) -> str:
    """The report's line on BatchNorm statistics (every study says which it used)."""
    if batches:
        return (f"BatchNorm statistics: recomputed from {batches} training batches before each validation and at "
                "the end of each training (precise BN; short CPU runs need it; no paper does it).")
    return "BatchNorm statistics: Keras' moving averages, as in the papers (no recalibration)."
