"""Export a student to TFLite / ONNX files with parity proven on real images, and a sidecar beside each.

:func:`export_model` is what both the main experiment and ``export/export_student.py`` call:

```python
from kd_keras.export import export_model

files = export_model(
    "runs/oct/student.keras", "runs/oct/export",
    variants=("tflite_fp32", "tflite_int8", "onnx"),
    parity_images=val_images, parity_labels=val_labels,   # real, labelled validation images
    representative_images=train_images[:200],             # int8 calibration: real training images
    class_names=["NORMAL", "DISEASE"], threshold=0.5,
)
for exported in files:
    print(exported.path, exported.parity.max_relative_diff, exported.parity.decision_agreement)
```

Every file is converted, run in its own runtime on ``parity_images`` and compared with Keras' logits
(:mod:`kd_keras.export.parity`). A file that misses a gate is renamed ``<file>.failed`` (its sidecar records
why) and, once every requested variant has been tried, :class:`ExportParityError` is raised naming each failure.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kd_keras.export.onnx_format import ONNX_OPSET, OnnxRunner, convert_onnx
from kd_keras.export.parity import (
    ExportParityError,
    ParityReport,
    ParityThresholds,
    measure_parity,
)
from kd_keras.export.sidecar import package_versions, sha256_file, sha256_weights, write_sidecar
from kd_keras.export.tflite import (
    LiteRTRunner,
    as_image_batch,
    convert_tflite,
    model_input_shape,
    saved_model_converter,
    write_saved_model,
)

if TYPE_CHECKING:
    from kd_keras.data.preprocess import PreprocessConfig

EXPORT_VARIANTS = ("tflite_fp32", "tflite_fp16", "tflite_dynamic", "tflite_int8", "onnx")


@dataclass
class ExportedFile:
    """One exported file and its proof of parity."""

    path: Path
    format: str
    variant: str
    sidecar: Path
    parity: ParityReport


def load_keras_model(path: str | os.PathLike):
    """Load a ``.keras`` file with every kd_keras layer registered, as a float32 model (a mixed-precision student is
    rebuilt in float32 with its float32 weights: what TFLite and ONNX convert); one-line errors for a bad path."""
    from kd_keras.engine.distribute import float32_model
    from kd_keras.models import load_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix != ".keras":
        raise ValueError(f"{path}: expected a .keras model file (save the student with model.save('x.keras'))")
    try:
        model = load_model(path)  # the one loader: registers every family's custom layers
    except Exception as error:  # Keras raises many types for a bad archive
        raise ValueError(f"{path}: cannot load the Keras model ({str(error).strip().splitlines()[0]})") from None
    return float32_model(model)


def _normalisation(model) -> dict:
    found = [layer for layer in model.layers if type(layer).__name__ == "PixelNormalization"]
    if found:
        layer = found[0]
        return {"inside_model": True, "layer": layer.name, "mode": layer.mode, "to_rgb": layer.to_rgb}
    return {"inside_model": None, "note": "no PixelNormalization layer found; by the zoo contract the model "
            "takes [0, 255] pixels and normalises inside"}


def _decision(num_classes: int, class_names: Sequence[str], threshold: float | None) -> dict:
    if num_classes <= 2:
        rule = "sigmoid(logit) >= threshold" if num_classes == 1 else "softmax(logits)[1] >= threshold"
        return {"rule": rule, "threshold": 0.5 if threshold is None else float(threshold),
                "positive_class": class_names[-1]}
    return {"rule": "argmax(logits)", "threshold": None, "positive_class": None}


def variant_file(output_dir: Path, stem: str, variant: str) -> tuple[Path, str, str]:
    """``(path, format, precision)`` of the file :func:`export_model` writes for ``variant``."""
    if variant == "onnx":
        return output_dir / f"{stem}.onnx", "onnx", "fp32"
    precision = variant.removeprefix("tflite_")
    return output_dir / f"{stem}_{precision}.tflite", "tflite", precision


def export_model(
    model,
    output_dir: str | os.PathLike,
    *,
    parity_images: np.ndarray | Iterable[np.ndarray],
    parity_labels: np.ndarray | None = None,
    variants: Sequence[str] = ("tflite_fp32", "onnx"),
    representative_images: np.ndarray | Iterable[np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float | None = 0.5,
    stem: str | None = None,
    thresholds: ParityThresholds | None = None,
    min_agreement: float | None = None,
    opset: int = ONNX_OPSET,
    batch_size: int = 32,
    num_threads: int | None = None,
    source_path: str | os.PathLike | None = None,
    preprocess: PreprocessConfig | None = None,
) -> list[ExportedFile]:
    """Export ``model`` to the requested files, prove parity with Keras on real images, write sidecars.

    Args:
        model: a ``keras.Model`` (zoo contract: ``image`` in [0, 255], logits out) or a path to a ``.keras`` file.
        output_dir: folder for the files (created).
        parity_images: real images (e.g. the validation set), ``(N, H, W, C)`` float pixels in [0, 255].
        parity_labels: their integer labels; adds the change in accuracy and AUC to each report.
        variants: any of :data:`EXPORT_VARIANTS`.
        representative_images: real training images for int8 calibration (required for ``"tflite_int8"``).
        class_names: names of the classes in logit order (default ``class_0``...; a one-logit model has two).
        threshold: decision threshold on the positive probability of a binary model (recorded in the sidecar).
        stem: file name stem (default: the ``.keras`` file's stem, or the model's name for a model object).
        thresholds: parity gates (:class:`ParityThresholds`; default: fp32 1e-4 relative, 99% agreement).
        min_agreement: explicit acceptance of a lower decision agreement for fp16/dynamic/int8 files.
        opset: ONNX opset.
        batch_size: batch size for Keras ``predict`` and the exported runtimes.
        num_threads: threads for LiteRT and ONNX Runtime during the parity run.
        source_path: the file ``model`` came from, hashed into the sidecar (set automatically for a path).
        preprocess: the :class:`kd_keras.data.preprocess.PreprocessConfig` the model was trained with, recorded in
            the sidecar under ``"preprocess"`` so ``kd-keras predict`` (and a mobile app) applies exactly it; its
            size and channels must match the model's input.

    Returns:
        One :class:`ExportedFile` per variant, in the order requested.

    Raises:
        ExportParityError: at least one file missed a gate (after all variants were tried); the failing files
            are renamed ``<file>.failed``.
        RuntimeError: a conversion failed, or an exported file does not run in its runtime (renamed
            ``<file>.failed``); the message names the file.
        ValueError: unknown variant, bad images, or int8 without representative images.
    """
    thresholds = thresholds or ParityThresholds()
    unknown = [v for v in variants if v not in EXPORT_VARIANTS]
    if unknown:
        raise ValueError(f"unknown export variants {unknown}; expected any of {EXPORT_VARIANTS}")
    if isinstance(model, str | os.PathLike):
        source_path = Path(model)
        model = load_keras_model(source_path)
        stem = stem or source_path.stem
    from kd_keras.engine.distribute import float32_model

    model = float32_model(model)  # a mixed-precision student exports as float32 (its weights are float32)
    input_shape = model_input_shape(model)
    images = as_image_batch(parity_images, input_shape, "parity_images")
    if "tflite_int8" in variants and representative_images is None:
        raise ValueError("tflite_int8 needs representative_images: real images drawn from the training data")
    if representative_images is not None and not isinstance(representative_images, np.ndarray):
        representative_images = as_image_batch(representative_images, input_shape, "representative_images")
    num_classes = int(model.outputs[0].shape[-1])
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(max(num_classes, 2))]
    if len(names) != max(num_classes, 2):
        raise ValueError(f"{len(names)} class names for a model with {num_classes} logits")
    if num_classes > 2 and threshold not in (None, 0.5):
        raise ValueError(f"a decision threshold applies to binary models; {model.name} has {num_classes} classes")
    if source_path is not None:
        source = {"path": str(source_path), "sha256": sha256_file(source_path), "hashed": "file bytes"}
    else:
        source = {"path": None, "sha256": sha256_weights([np.asarray(w) for w in model.weights]),
                  "hashed": "weight arrays (model built in memory)"}

    if preprocess is not None and (*preprocess.image_size, preprocess.channels) != tuple(input_shape):
        raise ValueError(f"preprocess gives {tuple(preprocess.image_size)} x {preprocess.channels} channels; "
                         f"{model.name} takes {input_shape[:2]} x {input_shape[2]}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or model.name
    keras_logits = keras_logits_in_batches(model, images, batch_size)
    common = {
        "model_name": model.name,
        "source": source,
        "input": {"name": "image", "layout": "NHWC", "height": input_shape[0], "width": input_shape[1],
                  "channels": input_shape[2], "pixel_range": [0.0, 255.0]},
        "normalisation": _normalisation(model),
        "output": {"kind": "logits", "num_classes": num_classes},
        "class_names": names,
        "decision": _decision(num_classes, names, threshold),
        "versions": package_versions(),
    }
    if preprocess is not None:  # what was done to a decoded image before the model: kd_keras.data.preprocess
        common["preprocess"] = {"function": "kd_keras.data.preprocess.preprocess", **dataclasses.asdict(preprocess)}

    results, failures = [], []
    with tempfile.TemporaryDirectory() as scratch:
        converter = None
        for variant in variants:
            path, fmt, precision = variant_file(output_dir, stem, variant)
            if fmt == "tflite":
                if converter is None:  # trace and load the Keras model once for every TFLite variant
                    converter = saved_model_converter(write_saved_model(model, Path(scratch) / "saved_model"))
                convert_tflite(model, path, precision, representative_images, converter=converter)
            else:
                convert_onnx(model, path, opset=opset)
            try:
                exported_logits, runtime, input_info, output_info = _run_exported(path, fmt, images, batch_size,
                                                                                  num_threads)
            except (RuntimeError, ValueError) as error:  # a file its runtime cannot run is a failed export
                failed = path.with_name(path.name + ".failed")
                path.replace(failed)
                raise RuntimeError(f"{failed}: the exported {precision} file does not run: {error}") from None
            report = measure_parity(keras_logits, exported_logits, variant=precision, runtime=runtime,
                                    labels=parity_labels, threshold=threshold, thresholds=thresholds,
                                    min_agreement=min_agreement)
            if not report.passed:
                failed = path.with_name(path.name + ".failed")
                path.replace(failed)
                path = failed
                failures.append(f"{path}: {precision} ({runtime}): " + "; ".join(report.failures))
            info = {
                **common,
                "format": fmt,
                "variant": precision,
                "file": path.name,
                "file_sha256": sha256_file(path),
                "file_bytes": path.stat().st_size,
                "input": {**common["input"], **input_info},
                "output": {**common["output"], **output_info},
                "parity": report.to_dict(),
            }
            if fmt == "onnx":
                info["opset"] = opset
            sidecar = write_sidecar(path, info)
            results.append(ExportedFile(path, fmt, precision, sidecar, report))
    if failures:
        first = next(r.parity for r in results if not r.parity.passed)
        error = ExportParityError("export fails parity with Keras: " + " | ".join(failures), first)
        error.reports = [r.parity for r in results]
        raise error
    return results


def keras_logits_in_batches(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Keras logits, ``batch_size`` images per eager call.

    Eager calls on bounded batches skip the graph tracing of ``predict`` (seconds per model, more than the
    arithmetic for a parity set) and never hold more than one batch of activations (a call on a whole volume
    would hold all of them).
    """
    return np.concatenate(
        [np.asarray(model(images[start : start + batch_size], training=False))
         for start in range(0, len(images), batch_size)],
        axis=0,
    ).astype(np.float32)


def _run_exported(path: Path, fmt: str, images: np.ndarray, batch_size: int, num_threads: int | None):
    """Logits of an exported file on ``images`` in its runtime, and what its input/output are."""
    if fmt == "tflite":
        runner = LiteRTRunner(path, num_threads=num_threads)
        input_info = {"dtype": np.dtype(runner.input_dtype).name,
                      "quantization": _quant_dict(runner.input_quantization)}
        output_info = {"dtype": np.dtype(runner.output_dtype).name,
                       "quantization": _quant_dict(runner.output_quantization)}
        return runner.predict(images, batch_size=batch_size), "litert", input_info, output_info
    runner = OnnxRunner(path, num_threads=num_threads)
    float_info = {"dtype": "float32", "quantization": None}
    return runner.predict(images, batch_size=batch_size), "onnxruntime", float_info, dict(float_info)


def _quant_dict(quant: tuple[float, int] | None) -> dict | None:
    if quant is None:
        return None
    scale, zero_point = quant
    return {"scale": scale, "zero_point": zero_point, "real_value": "(q - zero_point) * scale"}


def images_from_folders(
    root: str | os.PathLike,
    image_size: tuple[int, int],
    channels: int,
    per_class: int,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Real images from a ``root/<class>/<image>`` folder tree: a seeded sample of ``per_class`` per class.

    Useful for parity and calibration sets from a dataset on disk (images go through
    :func:`kd_keras.data.preprocess.load_image`: float [0, 255], resized, channels set).

    Returns:
        ``(images (N, H, W, C) float32, labels (N,) int64, class_names)``; classes sorted by folder name unless
        ``class_names`` gives the order.

    Example:
        >>> images, labels, names = images_from_folders("chest_xray/train", (64, 64), 1, per_class=50)
    """
    from kd_keras.data.preprocess import PreprocessConfig, load_image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    names = list(class_names) if class_names else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise ValueError(f"{root}: no class folders inside")
    config = PreprocessConfig(image_size=tuple(image_size), channels=channels)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).iterdir() if p.is_file())
        if not files:
            raise ValueError(f"{root / name}: no image files")
        chosen = rng.choice(len(files), size=min(per_class, len(files)), replace=False)
        for index in sorted(chosen):
            images.append(load_image(files[index], config))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), names
