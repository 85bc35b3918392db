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

Pixels are uniform random [0, 255] values: the float runtimes do the same arithmetic whatever the pixels are.

Example:

```python
from kd_keras.export.latency import benchmark, write_outputs

results = benchmark(["resnet50", "squeezenet_v1_1"], teacher="resnet50", runtimes=("litert", "onnxruntime"),
                    num_images=128, threads=2, repeats=5)
write_outputs(results, "docs/latency/cpu_224")   # .json, .md and .png
```
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CPU_RUNTIMES = ("keras", "litert", "onnxruntime")
RUNTIME_SUFFIX = {"keras": ".keras", "keras-gpu": ".keras", "litert": ".tflite", "onnxruntime": ".onnx",
                  "onnxruntime-cuda": ".onnx"}


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
        runner = LiteRTRunner(path, num_threads=threads)
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
        runner = OnnxRunner(path, num_threads=threads, providers=providers)
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
    files: dict[str, Path]  # suffix -> file
    params: int | None = None
    macs: int | None = None


def _onnx_params(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(int(np.prod(init.dims)) for init in graph.initializer))


def _prepare(target: str, runtimes: Sequence[str], input_shape, num_classes: int, work_dir: Path) -> _Target:
    """A zoo name or a file path -> the files each runtime needs (converted once, fp32), params and MACs."""
    suffixes = {RUNTIME_SUFFIX[r] for r in runtimes}
    path = Path(target)
    if path.suffix in (".tflite", ".onnx"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        params = _onnx_params(path) if path.suffix == ".onnx" else None
        return _Target(path.stem, {path.suffix: path}, params=params)
    from kd_keras.export.onnx_format import convert_onnx
    from kd_keras.export.tflite import convert_tflite

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

    files = {".keras": keras_file}
    if ".tflite" in suffixes:
        files[".tflite"] = convert_tflite(model, work_dir / f"{name}_fp32.tflite", "fp32")
    if ".onnx" in suffixes:
        files[".onnx"] = convert_onnx(model, work_dir / f"{name}.onnx")
    return _Target(name, files, params=count_params(model), macs=count_macs(model))


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
    num_images: int = 128,
    batch_size: int = 16,
    threads: int | None = 2,
    warmup: int = 1,
    repeats: int = 5,
    input_shape: tuple[int, int, int] = (224, 224, 3),
    num_classes: int = 2,
    work_dir: str | os.PathLike | None = None,
    timeout_s: float = 1800,
    progress=print,
) -> list[LatencyResult]:
    """Time a volume of ``num_images`` images through each target in each runtime.

    Args:
        targets: zoo names (built untrained at ``input_shape``) or paths to ``.keras``, ``.tflite`` or ``.onnx``
            files (a file runs in the runtimes that read it; a ``.keras`` file is converted to fp32 for the others).
        teacher: the target speed-ups are measured against (added to ``targets`` if missing); ``None`` for none.
        runtimes: any of ``keras``, ``litert``, ``onnxruntime``, ``keras-gpu``, ``onnxruntime-cuda``
            (default: :func:`default_runtimes`).
        num_images: images per volume.
        batch_size: images per call (Keras ``predict`` batch, LiteRT/ONNX Runtime batch) in every runtime.
        threads: CPU threads per runtime (``None``: each runtime's default).
        warmup: untimed volumes first.
        repeats: timed volumes.
        input_shape: ``(H, W, C)`` for zoo names.
        num_classes: logits of zoo models built here.
        work_dir: where converted files go (default: a temporary folder, removed afterwards).
        timeout_s: limit per worker.
        progress: called with one line per measurement (``None`` for silence).

    Returns:
        One :class:`LatencyResult` per (target, runtime); a failed measurement has ``error`` set.
    """
    runtimes = tuple(runtimes or default_runtimes())
    unknown = [r for r in runtimes if r not in RUNTIME_SUFFIX]
    if unknown:
        raise ValueError(f"unknown runtimes {unknown}; expected any of {tuple(RUNTIME_SUFFIX)}")
    if num_images < 1 or batch_size < 1 or repeats < 1 or warmup < 0:
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
                prepared = _prepare(target, runtimes, input_shape, num_classes, work)
            except Exception as error:  # report and go on with the other targets
                say(f"{target}: cannot prepare ({error})")
                for runtime in runtimes:
                    results.append(LatencyResult(target, runtime, None, tuple(input_shape), num_images, batch_size,
                                                 threads, warmup, repeats, error=str(error).splitlines()[0]))
                continue
            for runtime in runtimes:
                file = prepared.files.get(RUNTIME_SUFFIX[runtime])
                if file is None:
                    continue  # e.g. a .onnx path in LiteRT
                result = LatencyResult(prepared.name, runtime, str(file), tuple(input_shape), num_images,
                                       batch_size, threads, warmup, repeats, params=prepared.params,
                                       macs=prepared.macs, file_bytes=Path(file).stat().st_size)
                spec = {"runtime": runtime, "file": str(file), "threads": threads, "batch_size": batch_size,
                        "num_images": num_images, "warmup": warmup, "repeats": repeats}
                result.load_1min_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                try:
                    measured = _spawn_worker(spec, timeout_s)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    result.error = str(error).splitlines()[0]
                    say(f"{prepared.name} [{runtime}]: FAILED {result.error}")
                    results.append(result)
                    continue
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
                results.append(result)
                say(f"{prepared.name} [{runtime}]: median {result.median_s:.3f} s/volume "
                    f"(min {result.min_s:.3f}, max {result.max_s:.3f}), peak RSS {result.peak_rss_mb:.0f} MB")
    _add_ratios(results, teacher)
    return results


def _add_ratios(results: list[LatencyResult], teacher: str | None) -> None:
    if teacher is None:
        return
    teacher_name = Path(teacher).stem if Path(teacher).suffix else teacher
    reference = {r.runtime: r for r in results if r.model == teacher_name and r.median_s}
    for result in results:
        base = reference.get(result.runtime)
        if base is None:
            continue
        if result.median_s:
            result.speedup = base.median_s / result.median_s
        if result.macs and base.macs:
            result.macs_ratio = base.macs / result.macs
        if result.params and base.params:
            result.params_ratio = base.params / result.params


# --------------------------------------------------------------------------------------------------------------
# Outputs: JSON, markdown table, plot.


def conditions() -> dict:
    """The machine and load a benchmark ran under (load average before and after is what says 'quiet')."""
    from kd_keras.export.sidecar import package_versions

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_1_5_15": load, "python": sys.version.split()[0],
            "versions": package_versions()}


def markdown_table(results: Sequence[LatencyResult]) -> str:
    """One row per (model, runtime): median s/volume [min-max], ms/image, speed-up, MAC ratio, sizes, memory."""
    header = ("| model | runtime | median s / volume [min, max] | ms / image | speed-up vs teacher | "
              "MACs ratio | params | MMACs | file MB | peak RSS MB |")
    lines = [header, "|" + "---|" * 10]

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in sorted(results, key=lambda r: (r.runtime, -(r.median_s or 0))):
        timing = (f"{r.median_s:.3f} [{r.min_s:.3f}, {r.max_s:.3f}]" if r.median_s is not None
                  else f"failed: {r.error}")
        lines.append(
            f"| {r.model} | {r.runtime} | {timing} | {fmt(r.ms_per_image, '.2f')} | {fmt(r.speedup, '.2f')} | "
            f"{fmt(r.macs_ratio, '.2f')} | {fmt(r.params, ',')} | "
            f"{fmt(None if r.macs is None else r.macs / 1e6, '.0f')} | "
            f"{fmt(None if r.file_bytes is None else r.file_bytes / 2**20, '.1f')} | {fmt(r.peak_rss_mb, '.0f')} |"
        )
    return "\n".join(lines)


def plot(results: Sequence[LatencyResult], path: str | os.PathLike, title: str = "") -> Path:
    """Left: median seconds per volume (bars, min-max whiskers) per runtime; right: speed-up vs MAC ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if r.median_s is not None]
    runtimes = sorted({r.runtime for r in timed})
    models = list(dict.fromkeys(r.model for r in timed))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(runtimes), 1)
    for k, runtime in enumerate(runtimes):
        by_model = {r.model: r for r in timed if r.runtime == runtime}
        xs = [i + k * width for i, m in enumerate(models) if m in by_model]
        rows = [by_model[m] for m in models if m in by_model]
        medians = np.array([r.median_s for r in rows])
        errors = np.array([[r.median_s - r.min_s for r in rows], [r.max_s - r.median_s for r in rows]])
        left.bar(xs, medians, width, yerr=errors, capsize=2, label=runtime)
        ratios = [(r.macs_ratio, r.speedup) for r in rows if r.macs_ratio and r.speedup]
        if ratios:
            right.scatter(*zip(*ratios, strict=True), label=runtime)
    left.set_xticks([i + width * (len(runtimes) - 1) / 2 for i in range(len(models))])
    left.set_xticklabels(models, rotation=60, ha="right", fontsize=8)
    left.set_ylabel(f"seconds per volume of {timed[0].num_images if timed else '?'} images")
    left.set_yscale("log")
    left.legend()
    limit = max([r.macs_ratio or 1 for r in timed] + [2])
    right.plot([1, limit], [1, limit], "k--", linewidth=1, label="speed-up = MAC ratio")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("teacher MACs / student MACs")
    right.set_ylabel("speed-up over the teacher (same runtime)")
    right.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results: Sequence[LatencyResult], stem: str | os.PathLike, command: str | None = None,
                  extra: dict | None = None) -> dict[str, Path]:
    """Write ``<stem>.json`` (results, conditions, command), ``<stem>.md`` (table) and ``<stem>.png`` (plot)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "conditions": conditions(), **(extra or {}),
              "results": [asdict(r) for r in results]}
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["md"].write_text(markdown_table(results) + "\n")
    plot(results, paths["png"])
    return paths


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--worker":
        print(json.dumps(run_worker(json.loads(argv[1]))), flush=True)
        return 0
    print("internal entry point: use export/benchmark_latency.py", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
