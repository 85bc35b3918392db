"""Cached vs online teacher: one epoch of student training with the teacher's logits read from the
teacher-output cache, against the teacher run inside every training step.

What is measured (printed and written to ``--json``):

1. **Cache build**: the one-off cost of :func:`kd_keras.engine.teacher_cache.build_teacher_cache` over the
   unaugmented pool (decode + resize + teacher inference + shard writes), wall time and images/s; and the cost
   of calling it again (the same key: no teacher call).
2. **Training epochs** of the student with :class:`kd_keras.engine.Distiller` and the ``hinton`` objective,
   same input stream (decode, resize, flip + rotation augmentation) in both modes:

   - ``cached``: the stream carries ``teacher_logits``
     (:func:`~kd_keras.engine.teacher_cache.with_cached_teacher`), the Distiller has no teacher;
   - ``online``: the Distiller runs the teacher on the augmented batch in every step ("consistent teaching").

   One student per mode; single epochs alternate between the modes (so a change in the machine's load hits
   both alike); the first epoch (tracing) is reported apart and the median of the others is the steady state.
3. **Lookup memory**: resident memory of a fresh process streaming ``--lookup-batches`` random batches of
   indices through :func:`~kd_keras.engine.teacher_cache.with_cached_teacher`, for caches of
   ``--memory-rows`` rows of 1,000 logits (80 MB and 800 MB on disk by default; built with a trivial Dense
   "teacher" over 4x4 arrays). Anonymous memory (what the process allocates) and file-backed memory (the
   mapped shard pages, page cache the kernel can reclaim) are reported apart.

Defaults: ResNet50 teacher (``build_model("resnet50", weights=None)``: random weights, the cost is the same),
MobileNet student (``mobilenet_w1``), 112 px RGB, 320 synthetic two-class JPEGs of 256x256 generated in a
temporary folder (or ``--source``, a class-folder dataset, first ``--images`` files), batch 32.

Usage (repository root)::

    python benchmarks/teacher_cache.py --json runs/bench_teacher_cache.json
    python benchmarks/teacher_cache.py --source ../shared/data/kermany-cxr/train --images 320 --size 128

The figures depend on the machine's load: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def make_two_class_folder(folder: Path, count: int, side: int = 256, seed: int = 0) -> Path:
    """``count`` JPEGs in ``NORMAL/`` and ``LESION/``: textured grey backgrounds, the lesion class with a
    bright blob (content so JPEG decoding costs what a real image does; not a realistic scan)."""
    rng = np.random.default_rng(seed)
    for name in ("NORMAL", "LESION"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for i in range(count):
        lesion = i % 2 == 1
        base = cv2.GaussianBlur(rng.normal(110, 40, (side, side)).astype(np.float32), (0, 0), 3)
        if lesion:
            cy, cx = rng.uniform(0.25, 0.75, 2) * side
            base += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (side * 0.08) ** 2))
        image = np.clip(base, 0, 255).astype(np.uint8)
        path = folder / ("LESION" if lesion else "NORMAL") / f"img{i:05d}.jpeg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def compare_epochs(records, config, cache, teacher, args) -> list[dict]:
    """Trains one student per mode, alternating single epochs (cached, online, cached, ...) so that a change
    in the machine's load hits both modes alike; round 0 (tracing) is reported apart, the rest by median."""
    import keras

    from kd_keras.data import pipeline
    from kd_keras.data.augment import build_augmenter
    from kd_keras.engine import Distiller, get_objective
    from kd_keras.engine.teacher_cache import with_cached_teacher
    from kd_keras.models import build_model

    runs = {}
    for mode in ("cached", "online"):
        keras.utils.set_random_seed(0)
        augmenter = build_augmenter(
            flip="horizontal", rotation_degrees=15.0, vertical_shift=0.0, brightness=0.0, contrast=0.0, seed=0
        )
        stream = pipeline.make_dataset(records, config, args.batch_size, seed=0, augmenter=augmenter)
        if mode == "cached":
            stream = with_cached_teacher(stream, cache)
        student = build_model(args.student, (*config.image_size, config.channels), num_classes=2)
        distiller = Distiller(student, teacher if mode == "online" else None)
        objective = get_objective("hinton", alpha=0.1, temperature=4.0)
        distiller.compile(keras.optimizers.Adam(1e-3), objective=objective)
        runs[mode] = {"distiller": distiller, "stream": stream, "seconds": [], "loss": None}
    for _ in range(args.epochs):
        for run in runs.values():
            start = time.perf_counter()
            with warnings.catch_warnings():  # Keras' notes on a finite, already shuffled tf.data stream
                warnings.simplefilter("ignore", UserWarning)
                history = run["distiller"].fit(run["stream"], epochs=1, verbose=0)
            run["seconds"].append(time.perf_counter() - start)
            run["loss"] = float(history.history["loss"][-1])
    images = len(records)
    results = []
    for mode, run in runs.items():
        steady = float(np.median(run["seconds"][1:])) if len(run["seconds"]) > 1 else run["seconds"][0]
        results.append(
            {
                "mode": mode,
                "epoch_seconds": [round(s, 2) for s in run["seconds"]],
                "steady_epoch_seconds": round(steady, 2),
                "steady_images_per_s": round(images / steady, 1),
                "first_epoch_images_per_s": round(images / run["seconds"][0], 1),
                "final_loss": round(run["loss"], 4),
            }
        )
    return results


def lookup_memory(rows: int, batches: int, batch_size: int, work: Path) -> dict:
    """Builds a ``rows`` x 1000 cache, then measures lookups in a fresh process (peak RSS)."""
    import keras

    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.engine.teacher_cache import build_teacher_cache

    images = np.random.default_rng(0).integers(0, 256, (rows, 4, 4, 1), dtype=np.uint8)
    dense = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(1000)])
    start = time.perf_counter()
    cache = build_teacher_cache(
        dense,
        images,
        PreprocessConfig((4, 4), channels=1),
        work / f"memory{rows}",
        batch_size=8192,
        shard_size=16384,
        workers=1,
    )
    build_seconds = time.perf_counter() - start
    del images
    child = subprocess.run(
        [sys.executable, __file__, "--lookup-child", str(cache.path), str(batches), str(batch_size)],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    disk = sum(f.stat().st_size for f in cache.path.glob("*.npy"))
    shutil.rmtree(cache.path, ignore_errors=True)
    return {
        "rows": rows,
        "cache_megabytes": round(disk / 1e6, 1),
        "build_seconds": round(build_seconds, 1),
        **measured,
    }


def _memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MB, from /proc (``ru_maxrss`` would include the
    parent's peak: Linux keeps it across exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _lookup_child(path: str, batches: int, batch_size: int) -> None:
    import tensorflow as tf

    from kd_keras.data import schema
    from kd_keras.engine.teacher_cache import TeacherCache, with_cached_teacher

    cache = TeacherCache.open(path)
    indices = tf.data.Dataset.random(seed=0).map(lambda x: x % cache.num_examples).batch(batch_size)
    stream = with_cached_teacher(indices.map(lambda i: {schema.INDEX: i}).take(batches), cache).prefetch(2)
    next(iter(stream))  # warm-up: TF's own allocations before the baseline
    anon, mapped = _memory_mb("RssAnon"), _memory_mb("RssFile")
    start = time.perf_counter()
    total = 0.0
    for batch in stream:
        total += float(tf.reduce_sum(batch[schema.TEACHER_LOGITS][:, 0]))
    seconds = time.perf_counter() - start
    # Anonymous memory is what the process allocates; file-backed pages are the memory-mapped shards (page
    # cache the kernel reclaims under pressure), which grow with the pages read, at most the cache's size.
    print(
        json.dumps(
            {
                "anon_rss_after_warmup_mb": round(anon, 1),
                "anon_rss_end_mb": round(_memory_mb("RssAnon"), 1),
                "file_rss_after_warmup_mb": round(mapped, 1),
                "file_rss_end_mb": round(_memory_mb("RssFile"), 1),
                "lookup_batches_per_s": round(batches / seconds, 1),
                "checksum": round(total, 3),
            }
        )
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--images", type=int, default=320, help="pool size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--epochs",
        type=int,
        default=4,
        help="epochs per mode, alternated; the first (tracing) apart, the median of the rest",
    )
    parser.add_argument(
        "--inter-op-threads", type=int, default=0, help="tf.config inter-op threads (0: TensorFlow's default)"
    )
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="mobilenet_w1")
    parser.add_argument("--source", help="a class-folder dataset instead of generated images")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--memory-rows",
        type=int,
        nargs="*",
        default=[20_000, 200_000],
        help="cache sizes (rows of 1,000 logits) for the lookup-memory check; none to skip",
    )
    parser.add_argument("--lookup-batches", type=int, default=300)
    parser.add_argument("--lookup-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--skip-training", action="store_true", help="only the lookup-memory check")
    args = parser.parse_args(argv)
    if args.lookup_child:
        _lookup_child(args.lookup_child[0], int(args.lookup_child[1]), int(args.lookup_child[2]))
        return {}

    import keras
    import tensorflow as tf

    if args.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, TF {tf.__version__}, "
        f"Keras {keras.__version__}",
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "inter_op_threads": args.inter_op_threads or "default",
    }
    work = Path(tempfile.mkdtemp(prefix="kd_bench_cache_"))
    try:
        if not args.skip_training:
            result.update(training_comparison(args, work))
        result["lookup_memory"] = [
            lookup_memory(rows, args.lookup_batches, 64, work) for rows in args.memory_rows
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]

    print(
        f"{result['machine']}, inter-op threads {result['inter_op_threads']}; load average before "
        f"{result['load_average_before']}, after {result['load_average_after']}"
    )
    if not args.skip_training:
        print(
            f"{args.teacher} teacher -> {args.student} student, {result['images']} images at "
            f"{args.size} px, batch {args.batch_size}"
        )
        print(
            f"cache build (one-off): {result['cache_build_seconds']} s, "
            f"{result['cache_build_images_per_s']} img/s, {result['cache_megabytes']} MB; "
            f"reuse: {result['cache_reuse_seconds']} s"
        )
        for run in result["runs"]:
            print(
                f"{run['mode']:>7}: epochs {run['epoch_seconds']} s; "
                f"steady {run['steady_images_per_s']} img/s "
                f"(first epoch {run['first_epoch_images_per_s']} img/s)"
            )
        print(
            f"steady-epoch speed-up of cached over online: {result['speedup_steady']}x; "
            f"the build pays for itself after {result['epochs_to_amortise_build']} epochs"
        )
    for memory in result["lookup_memory"]:
        print(
            f"lookup, {memory['rows']} rows x 1000 logits ({memory['cache_megabytes']} MB), "
            f"{args.lookup_batches} random batches of 64: anonymous RSS {memory['anon_rss_after_warmup_mb']} "
            f"-> {memory['anon_rss_end_mb']} MB, file-backed (mapped shards) "
            f"{memory['file_rss_after_warmup_mb']} -> {memory['file_rss_end_mb']} MB, "
            f"{memory['lookup_batches_per_s']} batches/s"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def training_comparison(args, work: Path) -> dict:
    """Cache build and reuse, then the cached and online epochs."""
    import keras

    from kd_keras.data import sources
    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.engine.teacher_cache import build_teacher_cache
    from kd_keras.models import build_model

    if args.source:
        records = sources.from_class_folders(args.source)
        rng = np.random.default_rng(0)
        records = records.subset(np.sort(rng.permutation(len(records))[: args.images]))
    else:
        records = sources.from_class_folders(make_two_class_folder(work / "data", args.images))
    config = PreprocessConfig(image_size=(args.size, args.size), channels=3)
    keras.utils.set_random_seed(0)
    teacher = build_model(args.teacher, (args.size, args.size, 3), num_classes=2, weights=None)
    teacher_path = work / "teacher.keras"
    teacher.save(teacher_path)

    start = time.perf_counter()
    options = {"batch_size": args.batch_size, "shard_size": 256}
    cache = build_teacher_cache(str(teacher_path), records, config, work / "cache", **options)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reused = build_teacher_cache(str(teacher_path), records, config, work / "cache", **options)
    reuse_seconds = time.perf_counter() - start
    assert reused.build_stats["shards_computed"] == 0
    cache_bytes = sum(f.stat().st_size for f in cache.path.glob("*.npy"))

    runs = compare_epochs(records, config, cache, teacher, args)
    cached, online = runs
    return {
        "teacher": args.teacher,
        "student": args.student,
        "size": args.size,
        "images": len(records),
        "batch_size": args.batch_size,
        "source": args.source or "synthetic 256x256 JPEG",
        "cache_build_seconds": round(build_seconds, 2),
        "cache_build_images_per_s": round(len(records) / build_seconds, 1),
        "cache_reuse_seconds": round(reuse_seconds, 3),
        "cache_megabytes": round(cache_bytes / 1e6, 3),
        "runs": runs,
        "speedup_steady": round(online["steady_epoch_seconds"] / cached["steady_epoch_seconds"], 2),
        "epochs_to_amortise_build": round(
            build_seconds / max(online["steady_epoch_seconds"] - cached["steady_epoch_seconds"], 1e-9), 2
        ),
    }


if __name__ == "__main__":
    main()
