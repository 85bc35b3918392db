"""A student exported by kd-keras, run on OCT volumes with the edge runtime alone (no TensorFlow, no Keras).

:class:`Predictor` opens a ``.tflite`` (fp32, fp16, dynamic, int8) or ``.onnx`` file with its JSON sidecar,
checks that the two belong together, and rebuilds the training preprocessing from the sidecar's ``"preprocess"``
record (:class:`kd_keras.data.preprocess.PreprocessConfig`: size, channels, CLAHE, fundus crop; 16-bit pixels
scaled in float). Each B-scan gets class probabilities and a flag at the sidecar's operating point; a volume is
flagged when at least ``min_flagged`` of its B-scans are.

Decision rule, from the sidecar: a binary model flags a B-scan when the positive class's probability (softmax of
two logits, or sigmoid of one) is at least the threshold. A multi-class model flags a B-scan whose most probable
class is not the negative class (a class named ``normal``, else the first); its score is ``1 - p(negative)``, and
an explicit ``threshold`` flags ``score >= threshold`` instead.

Example:

```python
from kd_keras.deploy import Predictor

predictor = Predictor("export/mobilenet_wd4_int8.tflite", num_threads=2)
result = predictor.predict_volume("patient_0042/")
print(result.flagged_indices, result.decision, result.seconds["total"])
```
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.preprocess import PreprocessConfig, preprocess
from kd_keras.deploy.volumes import Volume, VolumeError, read_volume
from kd_keras.export.sidecar import read_sidecar, sha256_file, sidecar_path

__all__ = ["ModelError", "Predictor", "VolumeResult", "preprocess_config_from_sidecar"]


class ModelError(ValueError):
    """An exported model that cannot be used as its sidecar says; one line naming the file."""


@dataclass
class VolumeResult:
    """Predictions on one volume, or the one-line reason it has none (``error``)."""

    name: str
    path: str
    format: str | None = None
    bscan_names: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None  # (B-scans, classes)
    scores: np.ndarray | None = None  # (B-scans,) the number the flag thresholds
    flags: np.ndarray | None = None  # (B-scans,) bool
    decision: bool | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    source_shape: tuple[int, ...] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def flagged_indices(self) -> list[int]:
        return [] if self.flags is None else [int(i) for i in np.flatnonzero(self.flags)]

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        """JSON-ready record: per volume the count, indices and decision; per B-scan probabilities and flag."""
        if not self.ok:
            return {"volume": self.name, "path": self.path, "error": self.error}
        return {
            "volume": self.name, "path": self.path, "format": self.format,
            "num_bscans": len(self.bscan_names), "bscan_shape": list(self.source_shape or ()),
            "flagged_count": len(self.flagged_indices), "flagged_indices": self.flagged_indices,
            "decision": bool(self.decision), "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "bscans": [
                {"index": i, "name": name, "flagged": bool(self.flags[i]), "score": float(self.scores[i]),
                 "probabilities": {c: float(p) for c, p in zip(class_names, self.probabilities[i], strict=True)}}
                for i, name in enumerate(self.bscan_names)
            ],
        }


def preprocess_config_from_sidecar(info: dict, where: str = "sidecar") -> tuple[PreprocessConfig, bool]:
    """The :class:`PreprocessConfig` a sidecar records, and whether it was recorded (``False``: a sidecar written
    before the record existed; the config is then size and channels only, no CLAHE or crop).

    Raises:
        ModelError: unknown settings (a newer kd-keras) or a size/channels that disagree with the model input.

    Example:
        >>> config, recorded = preprocess_config_from_sidecar(read_sidecar("student_fp32.tflite"))
    """
    size = (int(info["input"]["height"]), int(info["input"]["width"]))
    channels = int(info["input"]["channels"])
    record = info.get("preprocess")
    if record is None:
        return PreprocessConfig(size, channels=channels), False
    settings = {k: v for k, v in record.items() if k != "function"}
    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ModelError(f"{where}: preprocessing settings this kd-keras does not know: {', '.join(unknown)} "
                         "(upgrade kd-keras to apply them exactly)")
    settings["image_size"] = tuple(int(v) for v in settings.get("image_size", size))
    try:
        config = PreprocessConfig(**settings)
    except (TypeError, ValueError) as error:
        raise ModelError(f"{where}: bad preprocessing record ({error})") from None
    if (config.image_size, config.channels) != (size, channels):
        raise ModelError(f"{where}: preprocessing gives {config.image_size} x {config.channels} channels but the "
                         f"input is {size} x {channels}")
    return config, True


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    if logits.shape[1] == 1:  # one logit: sigmoid, as [p(negative), p(positive)]
        positive = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - positive, positive], axis=1)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Predictor:
    """An exported student and its sidecar, ready to score volumes.

    Args:
        model_path: a ``.tflite`` or ``.onnx`` file written by :func:`kd_keras.export.export_model`; its sidecar
            ``<file>.json`` sits beside it.
        threshold: operating point on the flag score (default: the sidecar's).
        min_flagged: a volume is flagged when at least this many of its B-scans are.
        batch_size: B-scans per runtime call.
        num_threads: CPU threads for LiteRT / ONNX Runtime (``None``: the runtime's default).

    Raises:
        ModelError: missing or unreadable file or sidecar, a sidecar that does not describe this file (hash,
            format, input size or class count), or a missing runtime; the message is one line naming the file.

    Example:
        >>> predictor = Predictor("student_fp32.tflite", threshold=0.3)
        >>> results = [predictor.predict_volume(p) for p in ["eye1.tiff", "eye2/"]]
    """

    def __init__(self, model_path: str | os.PathLike, *, threshold: float | None = None, min_flagged: int = 1,
                 batch_size: int = 32, num_threads: int | None = None):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        try:
            self.sidecar = read_sidecar(self.path)
        except (FileNotFoundError, ValueError) as error:
            raise ModelError(str(error)) from None
        where = str(sidecar_path(self.path))
        try:
            self._check_sidecar(where)
            self.preprocess_config, self.preprocess_recorded = preprocess_config_from_sidecar(self.sidecar, where)
        except (KeyError, TypeError) as error:
            raise ModelError(f"{where}: not a kd-keras export sidecar (missing {error})") from None
        self.class_names = list(self.sidecar.get("class_names") or [])
        decision = self.sidecar.get("decision") or {}
        self.binary = len(self.class_names) == 2
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ModelError(f"threshold {threshold} is not a probability in [0, 1]")
        self.threshold = float(threshold) if threshold is not None else decision.get("threshold")
        if self.binary and self.threshold is None:
            self.threshold = 0.5
        self.explicit_threshold = threshold is not None
        lowered = [name.lower() for name in self.class_names]
        self.negative_index = 0 if self.binary or "normal" not in lowered else lowered.index("normal")
        if min_flagged < 1:
            raise ModelError(f"min_flagged must be at least 1, got {min_flagged}")
        self.min_flagged = int(min_flagged)
        self.batch_size = int(batch_size)
        self.runner = self._open_runner(num_threads)
        self._check_runner(where)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        info = self.sidecar["input"]
        return int(info["height"]), int(info["width"]), int(info["channels"])

    @property
    def rule(self) -> str:
        """The flag rule in words (for the outputs)."""
        if self.binary:
            return f"p({self.class_names[1]}) >= {self.threshold:g}"
        negative = self.class_names[self.negative_index]
        if self.explicit_threshold:
            return f"1 - p({negative}) >= {self.threshold:g}"
        return f"argmax class is not {negative}"

    def _check_sidecar(self, where: str) -> None:
        fmt = self.sidecar.get("format")
        expected = {".tflite": "tflite", ".onnx": "onnx"}.get(self.path.suffix.lower())
        if expected is None:
            raise ModelError(f"{self.path}: expected a .tflite or .onnx file")
        if fmt != expected:
            raise ModelError(f"{where}: describes a {fmt} file, not {self.path.name} (sidecar does not match)")
        recorded = self.sidecar.get("file_sha256")
        if recorded and recorded != sha256_file(self.path):
            raise ModelError(f"{where}: sidecar does not match {self.path.name} (its SHA-256 differs from the one "
                             "recorded at export); use the sidecar exported with this file")
        if self.sidecar["input"].get("pixel_range", [0.0, 255.0]) != [0.0, 255.0]:
            raise ModelError(f"{where}: input pixel range {self.sidecar['input']['pixel_range']} is not [0, 255]")

    def _open_runner(self, num_threads: int | None):
        try:
            if self.path.suffix.lower() == ".tflite":
                from kd_keras.export.tflite import LiteRTRunner

                return LiteRTRunner(self.path, num_threads=num_threads)
            from kd_keras.export.onnx_format import OnnxRunner

            return OnnxRunner(self.path, num_threads=num_threads)
        except ImportError as error:
            package = "ai-edge-litert" if self.path.suffix.lower() == ".tflite" else "onnxruntime"
            raise ModelError(f"{self.path}: needs {package}, which is not installed ({error}); "
                             'pip install "kd-keras[runtime]"') from None
        except (ValueError, RuntimeError, FileNotFoundError) as error:
            raise ModelError(str(error).splitlines()[0]) from None

    def _check_runner(self, where: str) -> None:
        if tuple(self.runner.input_shape) != self.input_shape:
            raise ModelError(f"{where}: sidecar input {self.input_shape} but {self.path.name} takes "
                             f"{tuple(self.runner.input_shape)} (sidecar does not match)")
        try:  # one blank image: the class count, and the runtime's first-call set-up kept out of the timings
            logits = self.runner.predict(np.zeros((1, *self.input_shape), np.float32), batch_size=1)
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"{self.path}: does not run ({str(error).splitlines()[0]})") from None
        num_classes = int(self.sidecar["output"]["num_classes"])
        if logits.shape[1] != num_classes or len(self.class_names) != max(num_classes, 2):
            raise ModelError(f"{where}: sidecar gives {num_classes} logits and {len(self.class_names)} class names "
                             f"but {self.path.name} outputs {logits.shape[1]} (sidecar does not match)")

    def preprocess(self, frames: list[np.ndarray]) -> np.ndarray:
        """``(N, H, W, C)`` float32 [0, 255]: every B-scan through the training preprocessing."""
        return np.stack([preprocess(frame, self.preprocess_config) for frame in frames])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, classes)`` of preprocessed images (a one-logit model gives two columns)."""
        return _softmax(self.runner.predict(images, batch_size=self.batch_size)).astype(np.float32)

    def flag(self, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, flags)`` of per-B-scan probabilities under :attr:`rule`."""
        if self.binary:
            scores = probabilities[:, 1]
            return scores, scores >= self.threshold
        scores = 1.0 - probabilities[:, self.negative_index]
        if self.explicit_threshold:
            return scores, scores >= self.threshold
        return scores, probabilities.argmax(axis=1) != self.negative_index

    def predict_volume(self, volume: Volume | str | os.PathLike, name: str | None = None) -> VolumeResult:
        """Score one volume (a :class:`Volume` or any path :func:`read_volume` takes).

        Never raises for a bad volume: the result's ``error`` holds the one-line reason naming the file.
        """
        start = time.perf_counter()
        if not isinstance(volume, Volume):
            try:
                volume = read_volume(volume, name=name)
            except VolumeError as error:
                return VolumeResult(name or Path(volume).stem or str(volume), str(volume), error=str(error))
        read_done = time.perf_counter()
        try:
            images = self.preprocess(volume.frames)
        except ValueError as error:
            return VolumeResult(volume.name, str(volume.path), volume.format,
                                error=f"{volume.path}: cannot preprocess ({str(error).splitlines()[0]})")
        preprocess_done = time.perf_counter()
        probabilities = self.probabilities(images)
        done = time.perf_counter()
        scores, flags = self.flag(probabilities)
        return VolumeResult(
            volume.name, str(volume.path), volume.format, list(volume.names), probabilities, scores,
            flags, bool(flags.sum() >= self.min_flagged),
            {"read": read_done - start, "preprocess": preprocess_done - read_done, "inference": done - preprocess_done,
             "total": done - start},
            volume.shape,
        )

    def describe(self) -> dict[str, Any]:
        """The model side of the outputs: file, variant, preprocessing and decision rule."""
        return {
            "path": str(self.path), "format": self.sidecar.get("format"), "variant": self.sidecar.get("variant"),
            "model_name": self.sidecar.get("model_name"), "input": list(self.input_shape),
            "class_names": self.class_names, "rule": self.rule, "threshold": self.threshold,
            "sidecar_threshold": (self.sidecar.get("decision") or {}).get("threshold"),
            "min_flagged": self.min_flagged, "volume_rule": f"flagged when >= {self.min_flagged} B-scans are flagged",
            "preprocess": dataclasses.asdict(self.preprocess_config),
            "preprocess_from_sidecar": self.preprocess_recorded,
        }
