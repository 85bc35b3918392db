"""Input-pipeline benchmark: can kd-keras' tf.data stream feed a MobileNet training step, and does its memory stay
flat as the unlabeled pool grows?

Three measurements, each printed and written to ``--json``:

1. **Pipeline images/s** at ``--size`` (224) from a JPEG folder, batch ``--batch-size``, for three stages:
   decode + resize; + per-channel CLAHE; + CLAHE + Keras augmentation (flips, +-15 degree rotation, vertical shift,
   brightness/contrast). The folder is ``--source`` or, by default, generated in a temporary directory: synthetic
   OCT-like grey B-scans of 496x512 pixels (the OCT2017 size), JPEG quality 90.
2. **MobileNet training step images/s** on the same machine: ``mobilenet_w1`` from the kd-keras zoo (falling back to
   ``keras.applications.MobileNet(weights=None)``) at the same size and batch, on in-memory batches, so the
   two figures say whether the input pipeline or the model is the bottleneck.
3. **Peak memory (RSS)** while streaming a fixed number of batches from pools of ``--pools`` files (10k and 100k),
   each in a fresh process. Pool files are hard links to a few hundred distinct JPEGs, so the disk cost is small;
   the pipeline still resolves, checks and indexes every path, which is what grows with the pool.

Usage (repository root)::

    python benchmarks/input_pipeline.py --json runs/bench_input.json
    python benchmarks/input_pipeline.py --source ../shared/data/kermany-cxr/train --skip-memory

Note the machine's load: other processes sharing the CPU slow every figure; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def make_bscan(rng: np.random.Generator, height: int = 496, width: int = 512) -> np.ndarray:
    """A grey OCT-like B-scan: bright layered band on a dark background, with speckle (content for JPEG sizes
    and CLAHE work similar to real scans; not a realistic retina)."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    centre = height * (0.45 + 0.1 * rng.random()) + 20 * np.sin(cols / width * np.pi * rng.uniform(0.5, 2))
    band = np.exp(-((rows - centre) / (height * 0.08)) ** 2)
    layers = 0.5 + 0.5 * np.sin((rows - centre) / rng.uniform(3, 6))
    image = 180 * band * layers + 15
    speckle = rng.gamma(4.0, 0.25, (height, width)).astype(np.float32)
    return np.clip(image * speckle, 0, 255).astype(np.uint8)


def make_jpeg_folder(folder: Path, distinct: int, total: int, seed: int = 0) -> Path:
    """``distinct`` generated JPEGs, then hard links (copies where links fail) up to ``total`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = []
    for k in range(min(distinct, total)):
        path = folder / f"OCT-{1000000 + k}-1.jpeg"
        ok, data = cv2.imencode(".jpg", make_bscan(rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        path.write_bytes(data.tobytes())
        base.append(path)
    for k in range(len(base), total):
        link = folder / f"OCT-{1000000 + k}-1.jpeg"
        try:
            os.link(base[k % len(base)], link)
        except OSError:
            shutil.copyfile(base[k % len(base)], link)
    return folder


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux: ``VmHWM`` from /proc, which starts afresh at ``exec`` (``ru_maxrss`` would carry the parent's peak
    into a child started with subprocess, hiding the child's own figure)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _time_stream(dataset, batches: int, warmup: int = 3) -> dict:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        images += int(batch["image"].shape[0])
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1)}


def pipeline_throughput(folder: Path, size: int, batch_size: int, batches: int) -> dict:
    from kd_keras.data import pipeline, sources
    from kd_keras.data.augment import build_augmenter
    from kd_keras.data.preprocess import PreprocessConfig

    records = sources.from_folder(folder)
    stages = {
        "decode_resize": (PreprocessConfig((size, size), channels=3), None),
        "decode_clahe_resize": (PreprocessConfig((size, size), channels=3, clahe=True), None),
        "decode_clahe_resize_augment": (PreprocessConfig((size, size), channels=3, clahe=True),
                                        build_augmenter(flip="horizontal_and_vertical", rotation_degrees=15,
                                                        vertical_shift=0.1, seed=0)),
    }
    results = {"files": len(records)}
    for name, (config, augmenter) in stages.items():
        stream = pipeline.make_dataset(records, config, batch_size, seed=0, augmenter=augmenter, repeat=True)
        results[name] = _time_stream(stream, batches)
        print(f"  pipeline {name:30s} {results[name]['images_per_s']:8.1f} images/s", flush=True)
    return results


def training_step_throughput(size: int, batch_size: int, steps: int) -> dict:
    import keras

    try:
        from kd_keras.models.registry import build_model

        model = build_model("mobilenet_w1", (size, size, 3), num_classes=2)
        name = "kd_keras mobilenet_w1"
    except Exception as error:  # noqa: BLE001 - the zoo may be absent; the Keras model is equivalent here
        print(f"  zoo MobileNet unavailable ({error}); using keras.applications.MobileNet")
        model = keras.applications.MobileNet(weights=None, input_shape=(size, size, 3), classes=2)
        name = "keras.applications.MobileNet"
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, batch_size).astype(np.int32)
    for _ in range(2):  # trace and warm up
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    seconds = time.perf_counter() - start
    result = {"model": name, "params": int(model.count_params()), "steps": steps,
              "seconds": round(seconds, 3), "images_per_s": round(steps * batch_size / seconds, 1)}
    print(f"  MobileNet training step {result['images_per_s']:8.1f} images/s ({name})", flush=True)
    return result


def memory_child(folder: Path, size: int, batch_size: int, batches: int) -> dict:
    """Run in a fresh process: resolve the pool, stream ``batches`` batches, report RSS."""
    import tensorflow as tf  # noqa: F401 - count the runtime in the baseline

    from kd_keras.data import pipeline, sources
    from kd_keras.data.augment import build_augmenter
    from kd_keras.data.preprocess import PreprocessConfig

    baseline = rss_mb()
    start = time.perf_counter()
    records = sources.from_folder(folder)
    index_seconds = time.perf_counter() - start
    after_index = rss_mb()
    config = PreprocessConfig((size, size), channels=3, clahe=True)
    stream = pipeline.make_dataset(records, config, batch_size, seed=0,
                                   augmenter=build_augmenter(seed=0), repeat=True)
    timing = _time_stream(stream, batches, warmup=2)
    return {
        "pool_files": len(records),
        "index_seconds": round(index_seconds, 2),
        "rss_mb_after_imports": round(baseline, 1),
        "rss_mb_after_index": round(after_index, 1),
        "rss_mb_after_stream": round(rss_mb(), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "batches_streamed": batches + 2,
        "stream_images_per_s": timing["images_per_s"],
    }


def memory_by_pool_size(work: Path, pools: list[int], distinct: int, size: int, batch_size: int,
                        batches: int) -> list[dict]:
    results = []
    for count in pools:
        folder = make_jpeg_folder(work / f"pool_{count}", distinct, count, seed=1)
        command = [sys.executable, __file__, "--memory-child", str(folder), "--size", str(size),
                   "--batch-size", str(batch_size), "--memory-batches", str(batches)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(f"  pool {count:>7,d} files: peak RSS {result['peak_rss_mb']:7.1f} MiB "
              f"(index {result['rss_mb_after_index'] - result['rss_mb_after_imports']:+.1f} MiB, "
              f"{result['index_seconds']:.1f} s)", flush=True)
        shutil.rmtree(folder)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="JPEG folder to read (default: generate one)")
    parser.add_argument("--images", type=int, default=256, help="distinct generated images (default 256)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline stage")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--pools", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--memory-batches", type=int, default=40)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.size, args.batch_size, args.memory_batches)))
        return {}

    import tensorflow as tf

    results: dict = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()],
                    "tensorflow": tf.__version__, "opencv": cv2.__version__, "python": platform.python_version()},
        "settings": {"size": args.size, "batch_size": args.batch_size, "batches": args.batches,
                     "train_steps": args.train_steps},
    }
    work = Path(tempfile.mkdtemp(prefix="kd_keras_bench_"))
    try:
        folder = args.source or make_jpeg_folder(work / "jpegs", args.images, args.images)
        results["source"] = str(args.source) if args.source else f"generated: {args.images} OCT-like 496x512 JPEGs"
        print(f"input pipeline from {results['source']}", flush=True)
        results["pipeline"] = pipeline_throughput(folder, args.size, args.batch_size, args.batches)
        if not args.skip_train:
            results["training_step"] = training_step_throughput(args.size, args.batch_size, args.train_steps)
        if not args.skip_memory:
            results["memory"] = memory_by_pool_size(work, args.pools, args.images, args.size, args.batch_size,
                                                    args.memory_batches)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
