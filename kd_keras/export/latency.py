"""Per-volume latency of teachers and students in Keras, LiteRT and ONNX Runtime.

A "volume" is ``num_images`` images (128 by default, about one OCT volume) at a model's input size. For each model
and runtime, a fresh worker process loads the model, runs ``warmup`` untimed volumes, then times ``repeats``
volumes; the table reports the median and the spread (min, max, interquartile range), the speed-up over the
teacher **in the same runtime**, trainable parameters, multiply-adds (:func:`kd_keras.models.profile.count_macs`)
and the teacher/student ratio of both, file size and the worker's peak resident memory. One process per
measurement keeps memory figures separate and stops one runtime's thread pools from slowing the next.

Runtimes:

- ``"keras"``: ``model.predict(volume, batch_size=...)`` (never a call on the whole volume: that materialises
  every activation of all images at once; 24 GB for ResNet50 at 128 images);
- ``"litert"``: ``ai_edge_litert`` interpreter, XNNPACK delegate (LiteRT's CPU default), ``num_threads`` threads;
- ``"onnxruntime"``: ONNX Runtime CPU provider, ``intra_op_num_threads`` threads;
- ``"keras-gpu"`` and ``"onnxruntime-cuda"``: the same on a GPU, added by :func:`default_runtimes` when one is
  present.

Precisions (``precisions=``): ``fp32``, ``fp16``, ``dynamic`` and ``int8`` in LiteRT (:mod:`kd_keras.export.tflite`)
and ONNX Runtime (:mod:`kd_keras.export.onnx_quantize`: dynamic range, static int8 QDQ calibrated on
``calibration_images``; fp16 only with ``onnxconverter-common`` installed), Keras in fp32 only. With
``parity_images`` every file is compared with Keras' logits first (:func:`kd_keras.export.parity.measure_parity`,
the export gates) and the report's headline (:func:`best_files`) is each model in its fastest file that passed,
against the teacher in its own.

Pixels are uniform random [0, 255] values: the float runtimes do the same arithmetic whatever the pixels are.

Example:

```python
from kd_keras.export.latency import benchmark, write_outputs

results = benchmark(["resnet50", "squeezenet_v1_1"], teacher="resnet50", runtimes=("litert", "onnxruntime"),
                    precisions=("fp32", "int8"), calibration_images=train[:100], parity_images=val,
                    num_images=128, threads=2, repeats=5)
write_outputs(results, "docs/latency/cpu_224")   # .json, .md and .png
```
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kd_keras.export.latency_report import best_files, best_table, conditions, markdown_table, plot, write_outputs

__all__ = ["CPU_RUNTIMES", "PRECISIONS", "RUNTIME_SUFFIX", "LatencyResult", "benchmark", "best_files", "best_table",
           "conditions", "default_runtimes", "file_precision", "fit_images", "markdown_table", "plot", "run_worker",
           "smooth_images", "write_outputs"]

CPU_RUNTIMES = ("keras", "litert", "onnxruntime")
RUNTIME_SUFFIX = {"keras": ".keras", "keras-gpu": ".keras", "litert": ".tflite", "onnxruntime": ".onnx",
                  "onnxruntime-cuda": ".onnx"}
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


@dataclass
class LatencyResult:
    """One model in one runtime."""

    model: str
    runtime: str
    file: str | None
    input_shape: tuple[int, int, int]
    num_images: int
    batch_size: int
    threads: int | None
    warmup: int
    repeats: int
    times_s: list[float] = field(default_factory=list)
    median_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    iqr_s: float | None = None
    ms_per_image: float | None = None
    params: int | None = None
    macs: int | None = None
    file_bytes: int | None = None
    peak_rss_mb: float | None = None
    rss_before_model_mb: float | None = None
    device: str | None = None
    load_1min_before: float | None = None
    speedup: float | None = None
    macs_ratio: float | None = None
    params_ratio: float | None = None
    error: str | None = None
    precision: str = "fp32"
    parity_passed: bool | None = None
    parity: dict | None = None
    options: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Worker: runs in its own process, times one file in one runtime, prints one JSON line.


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: fall back to the peak so far
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    # VmHWM is this process image's own peak. ru_maxrss is not: Linux carries the parent's peak across fork and
    # exec, so every worker would report the orchestrator's memory.
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _time_volumes(run_volume, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        run_volume()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_volume()
        times.append(time.perf_counter() - start)
    return times


def run_worker(spec: dict) -> dict:
    """Time one file in one runtime (called in a fresh process by :func:`benchmark`)."""
    runtime, path = spec["runtime"], spec["file"]
    threads, batch_size = spec.get("threads"), int(spec["batch_size"])
    out = {"device": "cpu"}
    rss_before = None
    if runtime in ("keras", "keras-gpu"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if runtime == "keras":
            os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        from kd_keras.models import load_model

        rss_before = _rss_mb()
        model = load_model(path)  # the one loader: registers the zoo's custom layers
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        volume = np.random.default_rng(0).uniform(0, 255, (spec["num_images"], *shape)).astype(np.float32)
        if runtime == "keras-gpu":
            out["device"] = tf.config.list_physical_devices("GPU")[0].name

        def run_volume():
            model.predict(volume, batch_size=batch_size, verbose=0)

    elif runtime == "litert":
        from kd_keras.export.tflite import LiteRTRunner

        rss_before = _rss_mb()
        runner = LiteRTRunner(path, num_threads=threads, **spec.get("options", {}))
        shape = runner.input_shape
        volume = np.random.default_rng(0).uniform(0, 255, (spec["num_images"], *shape)).astype(np.float32)
        batches = [runner.quantize_input(volume[i : i + batch_size]) for i in range(0, len(volume), batch_size)]

        def run_volume():
            for batch in batches:
                runner.run_batch(batch)

    elif runtime in ("onnxruntime", "onnxruntime-cuda"):
        from kd_keras.export.onnx_format import OnnxRunner

        providers = ["CPUExecutionProvider"]
        if runtime == "onnxruntime-cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        rss_before = _rss_mb()
        runner = OnnxRunner(path, num_threads=threads, providers=providers, **spec.get("options", {}))
        if runtime == "onnxruntime-cuda":
            if runner.providers[0] != "CUDAExecutionProvider":
                raise RuntimeError(f"{path}: CUDAExecutionProvider did not load (got {runner.providers})")
            out["device"] = "cuda"
        shape = runner.input_shape
        volume = np.random.default_rng(0).uniform(0, 255, (spec["num_images"], *shape)).astype(np.float32)
        batches = [volume[i : i + batch_size] for i in range(0, len(volume), batch_size)]

        def run_volume():
            for batch in batches:
                runner.run_batch(batch)

    else:
        raise ValueError(f"unknown runtime {runtime!r}")
    times = _time_volumes(run_volume, int(spec["warmup"]), int(spec["repeats"]))
    return {**out, "times_s": times, "input_shape": list(shape), "peak_rss_mb": _peak_rss_mb(),
            "rss_before_model_mb": rss_before}


# --------------------------------------------------------------------------------------------------------------
# Orchestration: build/convert files, run one worker per (model, runtime), compute ratios.


def smooth_images(count: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``count`` smooth random images in [0, 255] (low-frequency noise, upsampled): int8 calibration for untrained
    zoo networks when no real images are given (uniform noise would calibrate ranges no image reaches)."""
    import cv2

    rng = np.random.default_rng(seed)
    height, width, channels = shape
    coarse = rng.uniform(0, 255, (count, max(height // 16, 2), max(width // 16, 2), channels)).astype(np.float32)
    images = [cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)
              for image in coarse]
    return np.clip(np.stack(images), 0, 255).astype(np.float32)


def default_runtimes() -> tuple[str, ...]:
    """The CPU runtimes, plus ``keras-gpu`` / ``onnxruntime-cuda`` where a GPU and CUDA provider are present."""
    runtimes = list(CPU_RUNTIMES)
    try:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            runtimes.append("keras-gpu")
    except ImportError:
        pass
    from kd_keras.export.onnx_format import available_providers

    if "CUDAExecutionProvider" in available_providers():
        runtimes.append("onnxruntime-cuda")
    return tuple(runtimes)


@dataclass
class _Target:
    name: str
    files: dict[tuple[str, str], Path]  # (suffix, precision) -> file
    params: int | None = None
    macs: int | None = None
    model: object = None  # the Keras model, for parity


def _onnx_params(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


def file_precision(path: Path) -> str:
    """A file's precision: its sidecar's ``variant``, else a ``_fp16``/``_dynamic``/``_int8`` name suffix, else fp32."""
    from kd_keras.export.sidecar import read_sidecar, sidecar_path

    if sidecar_path(path).is_file():
        variant = read_sidecar(path).get("variant")
        if variant in PRECISIONS:
            return variant
    return next((p for p in PRECISIONS if path.stem.endswith(f"_{p}")), "fp32")


def _file_target(path: Path) -> _Target:
    from kd_keras.export.graph_macs import graph_macs

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    params = _onnx_params(path) if path.suffix == ".onnx" else None
    try:
        macs = graph_macs(path)
    except Exception:  # an unusual graph: no MACs ratio rather than no timing
        macs = None
    return _Target(path.stem, {(path.suffix, file_precision(path)): path}, params=params, macs=macs or None)


def _prepare(target: str, runtimes: Sequence[str], precisions: Sequence[str], input_shape, num_classes: int,
             work_dir: Path, calibration_images, onnx_optimize: bool, say,
             converted: dict[tuple[str, str], Path] | None = None) -> _Target:
    """A zoo name or a file path -> the files each runtime needs in each precision, params and MACs.

    ``converted``: ``(suffix, precision) -> file`` already converted from this target, used as they are."""
    path = Path(target)
    if path.suffix in (".tflite", ".onnx"):
        return _file_target(path)
    from kd_keras.export.onnx_format import convert_onnx
    from kd_keras.export.onnx_quantize import onnx_fp16_available, quantize_onnx
    from kd_keras.export.tflite import convert_tflite, model_input_shape, saved_model_converter, write_saved_model

    if path.suffix == ".keras":
        from kd_keras.export.exporter import load_keras_model

        model = load_keras_model(path)
        name, keras_file = path.stem, path
    else:
        from kd_keras.models import build_model

        model = build_model(target, input_shape=tuple(input_shape), num_classes=num_classes)
        name = target
        keras_file = work_dir / f"{name}.keras"
        model.save(keras_file)
    from kd_keras.models.profile import count_macs, count_params

    calibration_images = fit_images(calibration_images, model_input_shape(model))

    suffixes = {RUNTIME_SUFFIX[r] for r in runtimes}
    converted = {key: Path(file) for key, file in (converted or {}).items() if Path(file).is_file()}
    files: dict[tuple[str, str], Path] = {(".keras", "fp32"): keras_file}
    if ".tflite" in suffixes:
        converter = None
        for precision in precisions:
            if (".tflite", precision) in converted:
                files[(".tflite", precision)] = converted[(".tflite", precision)]
                continue
            if precision == "int8" and calibration_images is None:
                say(f"{name}: no calibration images, int8 TFLite skipped")
                continue
            converter = converter or saved_model_converter(write_saved_model(model, work_dir / f"{name}_saved_model"))
            files[(".tflite", precision)] = convert_tflite(model, work_dir / f"{name}_{precision}.tflite", precision,
                                                           calibration_images, converter=converter)
    if ".onnx" in suffixes:
        fp32 = converted.get((".onnx", "fp32")) or convert_onnx(model, work_dir / f"{name}.onnx",
                                                                optimize=onnx_optimize)
        for precision in precisions:
            if precision == "fp32":
                files[(".onnx", "fp32")] = fp32
            elif (".onnx", precision) in converted:
                files[(".onnx", precision)] = converted[(".onnx", precision)]
            elif precision == "fp16" and not onnx_fp16_available():
                say(f"{name}: ONNX fp16 skipped (onnxconverter-common is not installed)")
            elif precision == "int8" and calibration_images is None:
                say(f"{name}: no calibration images, int8 ONNX skipped")
            else:
                files[(".onnx", precision)] = quantize_onnx(fp32, work_dir / f"{name}_{precision}.onnx", precision,
                                                            calibration_images)
    return _Target(name, files, params=count_params(model), macs=count_macs(model), model=model)


def fit_images(images: np.ndarray | None, shape: tuple[int, int, int]) -> np.ndarray | None:
    """``images`` at a model's ``(H, W, C)``: resized (OpenCV area/bilinear), grey repeated to 3 channels or RGB
    to BT.601 luma, so one image set calibrates and checks a teacher and students of other input shapes."""
    if images is None or tuple(images.shape[1:]) == tuple(shape):
        return images
    import cv2

    height, width, channels = shape
    out = []
    for image in np.asarray(images, dtype=np.float32):
        if image.shape[:2] != (height, width):
            shrink = image.shape[0] > height
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            image = image.reshape(height, width, -1)
        if image.shape[-1] == 1 and channels == 3:
            image = np.repeat(image, 3, axis=-1)
        elif image.shape[-1] == 3 and channels == 1:
            image = image @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
        out.append(image)
    return np.clip(np.stack(out), 0, 255).astype(np.float32)


def _parity(prepared: _Target, parity_images, parity_labels, threshold, batch_size: int, threads) -> dict:
    """``(suffix, precision) -> ParityReport`` of every converted file against Keras on ``parity_images``."""
    from kd_keras.export.exporter import keras_logits_in_batches
    from kd_keras.export.onnx_format import OnnxRunner
    from kd_keras.export.parity import measure_parity
    from kd_keras.export.tflite import LiteRTRunner, model_input_shape

    parity_images = fit_images(parity_images, model_input_shape(prepared.model))
    keras_logits = keras_logits_in_batches(prepared.model, parity_images, batch_size)
    reports = {}
    for (suffix, precision), file in prepared.files.items():
        if suffix == ".keras":
            continue
        runner = LiteRTRunner(file, num_threads=threads) if suffix == ".tflite" else OnnxRunner(file, threads)
        logits = runner.predict(parity_images, batch_size=batch_size)
        reports[(suffix, precision)] = measure_parity(
            keras_logits, logits, variant=precision, runtime="litert" if suffix == ".tflite" else "onnxruntime",
            labels=parity_labels, threshold=threshold)
    return reports


def _spawn_worker(spec: dict, timeout_s: float) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    repo_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    completed = subprocess.run(
        [sys.executable, "-m", "kd_keras.export.latency", "--worker", json.dumps(spec)],
        capture_output=True, text=True, timeout=timeout_s, env=env,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{spec['file']} in {spec['runtime']}: worker failed ({tail})")
    return json.loads(lines[-1])


def benchmark(
    targets: Sequence[str],
    *,
    teacher: str | None = "resnet50",
    runtimes: Sequence[str] | None = None,
    precisions: Sequence[str] = ("fp32",),
    num_images: int = 128,
    batch_size: int | dict[str, int] = 16,
    threads: int | None = 2,
    warmup: int = 1,
    repeats: int = 5,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 2,
    calibration_images: np.ndarray | None = None,
    parity_images: np.ndarray | None = None,
    parity_labels: np.ndarray | None = None,
    threshold: float | None = 0.5,
    runtime_options: dict[str, dict] | None = None,
    onnx_optimize: bool = True,
    work_dir: str | os.PathLike | None = None,
    converted: dict[str, dict[tuple[str, str], str | os.PathLike]] | None = None,
    timeout_s: float = 1800,
    progress=print,
) -> list[LatencyResult]:
    """Time a volume of ``num_images`` images through each target in each runtime and precision.

    Args:
        targets: zoo names (built untrained at ``input_shape``) or paths to ``.keras``, ``.tflite`` or ``.onnx``
            files (a file runs in the runtimes that read it, in its own precision; a ``.keras`` file is converted
            to every precision for the others).
        teacher: the target speed-ups are measured against (added to ``targets`` if missing); ``None`` for none.
        runtimes: any of ``keras``, ``litert``, ``onnxruntime``, ``keras-gpu``, ``onnxruntime-cuda``
            (default: :func:`default_runtimes`).
        precisions: any of :data:`PRECISIONS` (Keras runs fp32 only; int8 needs ``calibration_images``).
        num_images: images per volume.
        batch_size: images per call, one number for every runtime or ``{runtime: batch}`` (16 for the others).
        threads: CPU threads per runtime (``None``: each runtime's default).
        warmup: untimed volumes first.
        repeats: timed volumes.
        input_shape: ``(H, W, C)`` for zoo names.
        num_classes: logits of zoo models built here.
        calibration_images: real training images ``(N, H, W, C)`` in [0, 255] for int8 calibration.
        parity_images: real images for the parity gate of every converted file (none: parity not checked);
            ``parity_labels`` and ``threshold`` as in :func:`kd_keras.export.parity.measure_parity`.
        parity_labels: labels of ``parity_images`` (optional).
        threshold: decision threshold of a binary model.
        runtime_options: ``{runtime: keyword arguments of its runner}``, e.g.
            ``{"onnxruntime": {"graph_optimization_level": "extended"}}``.
        onnx_optimize: apply :mod:`kd_keras.export.onnx_optimize` to the ONNX files converted here.
        work_dir: where converted files go (default: a temporary folder, removed afterwards).
        converted: files already converted from a ``.keras`` target, ``{target: {(suffix, precision): file}}``
            (e.g. ``{(".tflite", "int8"): "export/m_int8.tflite"}``), timed instead of converting again (they
            are checked for parity like the others); a missing file is converted as usual.
        timeout_s: limit per worker.
        progress: called with one line per measurement (``None`` for silence).

    Returns:
        One :class:`LatencyResult` per (target, runtime, precision); a failed measurement has ``error`` set.
    """
    runtimes = tuple(runtimes or default_runtimes())
    unknown = [r for r in runtimes if r not in RUNTIME_SUFFIX]
    if unknown:
        raise ValueError(f"unknown runtimes {unknown}; expected any of {tuple(RUNTIME_SUFFIX)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"unknown precisions {bad}; expected any of {PRECISIONS}")
    batches = batch_size if isinstance(batch_size, dict) else dict.fromkeys(runtimes, batch_size)
    if num_images < 1 or repeats < 1 or warmup < 0 or any(int(b) < 1 for b in batches.values()):
        raise ValueError("num_images, batch_size and repeats must be >= 1 and warmup >= 0")
    targets = list(targets)
    if teacher is not None and teacher not in targets:
        targets.insert(0, teacher)
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(work_dir) if work_dir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        results: list[LatencyResult] = []
        for target in targets:
            try:
                prepared = _prepare(target, runtimes, precisions, input_shape, num_classes, work,
                                    calibration_images, onnx_optimize, say, (converted or {}).get(target))
                reports = {}
                if parity_images is not None and prepared.model is not None:
                    reports = _parity(prepared, parity_images, parity_labels, threshold, 32, threads)
            except Exception as error:  # report and go on with the other targets
                say(f"{target}: cannot prepare ({error})")
                for runtime in runtimes:
                    results.append(LatencyResult(target, runtime, None, tuple(input_shape), num_images,
                                                 batches.get(runtime, 16), threads, warmup, repeats,
                                                 error=str(error).splitlines()[0]))
                continue
            for runtime in runtimes:
                for (suffix, precision), file in prepared.files.items():
                    if suffix != RUNTIME_SUFFIX[runtime] or (suffix == ".keras" and runtime not in ("keras",
                                                                                                     "keras-gpu")):
                        continue
                    results.append(_measure(prepared, runtime, precision, file, reports.get((suffix, precision)),
                                            batches.get(runtime, 16), threads, warmup, repeats, num_images,
                                            input_shape, (runtime_options or {}).get(runtime, {}), timeout_s, say))
    _add_ratios(results, teacher)
    return results


def _measure(prepared: _Target, runtime: str, precision: str, file: Path, report, batch: int, threads, warmup: int,
             repeats: int, num_images: int, input_shape, options: dict, timeout_s: float, say) -> LatencyResult:
    result = LatencyResult(prepared.name, runtime, str(file), tuple(input_shape), num_images, batch, threads, warmup,
                           repeats, params=prepared.params, macs=prepared.macs, file_bytes=Path(file).stat().st_size,
                           precision=precision, options=dict(options))
    if report is not None:
        result.parity_passed = report.passed
        result.parity = {"max_relative_diff": report.max_relative_diff,
                         "decision_agreement": report.decision_agreement, "failures": report.failures}
    elif Path(file).suffix in (".tflite", ".onnx"):
        result.parity_passed = _sidecar_parity(Path(file))
    spec = {"runtime": runtime, "file": str(file), "threads": threads, "batch_size": batch,
            "num_images": num_images, "warmup": warmup, "repeats": repeats, "options": options}
    result.load_1min_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    label = f"{prepared.name} [{runtime} {precision}]"
    try:
        measured = _spawn_worker(spec, timeout_s)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        result.error = str(error).splitlines()[0]
        say(f"{label}: FAILED {result.error}")
        return result
    times = np.asarray(measured["times_s"])
    result.times_s = [float(t) for t in times]
    result.median_s = float(np.median(times))
    result.min_s, result.max_s = float(times.min()), float(times.max())
    result.iqr_s = float(np.subtract(*np.percentile(times, [75, 25])))
    result.ms_per_image = 1000 * result.median_s / num_images
    result.input_shape = tuple(measured["input_shape"])
    result.peak_rss_mb = measured["peak_rss_mb"]
    result.rss_before_model_mb = measured["rss_before_model_mb"]
    result.device = measured["device"]
    parity = {True: ", parity passed", False: ", PARITY FAILED", None: ""}[result.parity_passed]
    say(f"{label}: median {result.median_s:.3f} s/volume (min {result.min_s:.3f}, max {result.max_s:.3f}), "
        f"peak RSS {result.peak_rss_mb:.0f} MB{parity}")
    return result


def _sidecar_parity(path: Path) -> bool | None:
    from kd_keras.export.sidecar import read_sidecar, sidecar_path

    if not sidecar_path(path).is_file():
        return None
    return (read_sidecar(path).get("parity") or {}).get("passed")


def _add_ratios(results: list[LatencyResult], teacher: str | None) -> None:
    """Speed-up and MACs ratio of each result over the teacher in the same runtime and precision."""
    if teacher is None:
        return
    teacher_name = Path(teacher).stem if Path(teacher).suffix else teacher
    reference = {(r.runtime, r.precision): r for r in results if r.model == teacher_name and r.median_s}
    teacher_macs = next((r.macs for r in results if r.model == teacher_name and r.macs), None)
    teacher_params = next((r.params for r in results if r.model == teacher_name and r.params), None)
    for result in results:
        if result.macs and teacher_macs:
            result.macs_ratio = teacher_macs / result.macs
        if result.params and teacher_params:
            result.params_ratio = teacher_params / result.params
        base = reference.get((result.runtime, result.precision))
        if base is not None and result.median_s:
            result.speedup = base.median_s / result.median_s


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--worker":
        print(json.dumps(run_worker(json.loads(argv[1]))), flush=True)
        return 0
    print("internal entry point: use export/benchmark_latency.py", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
