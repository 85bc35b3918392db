"""A pool of realistic size: pseudo-label N image files with a teacher and stream them for training, in bounded
memory; and what the whole study 002 protocol would cost.

What is measured (each pool size in a fresh process, so its peak RSS is its own):

1. **Teacher** (pseudo-labelling): :func:`kd_keras.engine.teacher_cache.build_teacher_cache` over the first N
   files (decode + resize + teacher inference + shard writes), images/s.
2. **Training stream**: one shuffled pass of :func:`kd_keras.data.pipeline.make_dataset` (decode, augmentation
   flip) with the cached teacher logits joined by :func:`~kd_keras.engine.teacher_cache.with_cached_teacher`:
   the batches a student's ``fit`` reads, images/s (no student step: ``--protocol`` times those).
3. **Peak RSS** of the process after both (``ru_maxrss``).
4. ``--protocol``: ResNet50 inference and training, and a student's training, at 224 px on this machine
   (images/s over a few batches after a warm-up), turned into the time of study 002's protocol.

The pool is generated once under ``--pool-dir`` (N grey PNGs of ``--file-size`` px with seeded texture, 1,000
per folder; reused by later runs) or read from ``--list FILE`` (one image path per line, e.g. real B-scans).

Usage (repository root)::

    python benchmarks/pool_scale.py --sizes 10000 100000 500000 --protocol --json docs/scale/pool_scale.json

The machine is shared: the JSON records the load average before and after each size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PER_FOLDER = 1000
# Study 002: 478,588 unlabeled B-scans pseudo-labelled, ~61,000 labeled ones, 224 px.
POOL_002, LABELED_002, SIZE_002 = 478_588, 61_000, 224


def pool_paths(pool_dir: Path, count: int, side: int, seed: int = 0) -> list[str]:
    """The first ``count`` files of the generated pool (generated now when missing): grey PNGs with texture."""
    import cv2

    paths = []
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 120, (side, side)).astype(np.float32)
    for i in range(count):
        path = pool_dir / f"{i // PER_FOLDER:04d}" / f"{i:07d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            noise = np.random.default_rng(i).normal(0, 25, (side, side))
            cv2.imwrite(str(path), np.clip(base + noise, 0, 255).astype(np.uint8))
        paths.append(str(path))
    return paths


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def measure_pool(paths: list[str], image_size: int, teacher_name: str, batch_size: int, cache_dir: Path) -> dict:
    """Teacher cache build and one training-stream pass over ``paths``; images/s and peak RSS."""
    import keras
    import tensorflow as tf

    from kd_keras.data.pipeline import make_dataset
    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.engine.teacher_cache import build_teacher_cache, with_cached_teacher
    from kd_keras.engine.teacher_cache.build import as_records
    from kd_keras.models import build_model

    config = PreprocessConfig((image_size, image_size), channels=1)
    records = as_records(paths)
    rss_records = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    teacher = build_model(teacher_name, (image_size, image_size, 1), num_classes=2)
    start = time.perf_counter()
    cache = build_teacher_cache(teacher, records, config, cache_dir, batch_size=batch_size, shard_size=16384,
                                teacher_fingerprint=f"{teacher_name}-random", data_fingerprint=f"pool-{len(paths)}")
    teacher_seconds = time.perf_counter() - start
    rss_teacher = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flip = keras.layers.RandomFlip("horizontal", seed=0)
    stream = with_cached_teacher(make_dataset(records, config, batch_size, shuffle=True, seed=0, augmenter=flip),
                                 cache)
    start, seen = time.perf_counter(), 0
    for batch in stream:
        seen += int(batch["teacher_logits"].shape[0])
    stream_seconds = time.perf_counter() - start
    del tf
    return {
        "images": len(paths), "image_size": image_size, "teacher": teacher_name, "batch_size": batch_size,
        "teacher_seconds": round(teacher_seconds, 1), "teacher_images_per_s": round(len(paths) / teacher_seconds, 1),
        "stream_images": seen, "stream_seconds": round(stream_seconds, 1),
        "stream_images_per_s": round(seen / stream_seconds, 1),
        "rss_mb_after_listing": round(rss_records), "rss_mb_after_teacher": round(rss_teacher),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def measure_protocol(batch_size: int, steps: int, student: str) -> dict:
    """Images/s at 224 px RGB on this machine: ResNet50 inference and training, ``student`` training."""
    import keras
    import tensorflow as tf

    from kd_keras.models import build_model

    images = np.random.default_rng(0).uniform(0, 255, (batch_size, SIZE_002, SIZE_002, 3)).astype("float32")
    labels = np.zeros(batch_size, "int32")
    out = {"batch_size": batch_size, "steps": steps, "student": student}
    teacher = build_model("resnet50", (SIZE_002, SIZE_002, 3), num_classes=2)
    infer = tf.function(lambda x: teacher(x, training=False))
    infer(images)
    start = time.perf_counter()
    for _ in range(steps):
        infer(images).numpy()
    out["resnet50_inference_images_per_s"] = round(steps * batch_size / (time.perf_counter() - start), 2)
    for name, model in (("resnet50", teacher), (student, build_model(student, (SIZE_002, SIZE_002, 3), 2))):
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=False)
        model.train_on_batch(images, labels)
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images, labels)
        out[f"{name}_training_images_per_s"] = round(steps * batch_size / (time.perf_counter() - start), 2)
    return out


def protocol_hours(rates: dict, student: str, teacher_epochs: int = 31, student_epochs: int = 20,
                   student_runs: int = 1) -> dict:
    """Hours of the 002 protocol at ``rates`` (images/s): the teacher's training on the labeled B-scans, the
    pseudo-labels of the pool, and ``student_runs`` student trainings over labeled + pool."""
    teacher = teacher_epochs * LABELED_002 / rates["resnet50_training_images_per_s"]
    labels = (POOL_002 + LABELED_002) / rates["resnet50_inference_images_per_s"]
    students = student_runs * student_epochs * (POOL_002 + LABELED_002) / rates[f"{student}_training_images_per_s"]
    return {"teacher_training_h": round(teacher / 3600, 2), "pseudo_labels_h": round(labels / 3600, 2),
            "student_training_h": round(students / 3600, 2),
            "total_h": round((teacher + labels + students) / 3600, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 500_000])
    parser.add_argument("--pool-dir", type=Path, default=Path(tempfile.gettempdir()) / "kd_keras_pool")
    parser.add_argument("--list", type=Path, help="a file of image paths (one per line) instead of generated files")
    parser.add_argument("--file-size", type=int, default=64, help="side of the generated PNGs (px)")
    parser.add_argument("--image-size", type=int, default=32, help="the teacher's input size (px)")
    parser.add_argument("--teacher", default="mobilenet_wd4", help="a small teacher (random weights)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--protocol", action="store_true", help="also time 224 px models for the 002 estimate")
    parser.add_argument("--protocol-student", default="mobilenet_w1")
    parser.add_argument("--protocol-steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--child", choices=("pool", "protocol"), help=argparse.SUPPRESS)
    parser.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "pool":
        paths = (args.list.read_text().split() if args.list else
                 pool_paths(args.pool_dir, args.child_size, args.file_size))[: args.child_size]
        with tempfile.TemporaryDirectory(prefix="pool_cache_") as cache_dir:
            print(json.dumps(measure_pool(paths, args.image_size, args.teacher, args.batch_size, Path(cache_dir))))
        return 0
    if args.child == "protocol":
        print(json.dumps(measure_protocol(16, args.protocol_steps, args.protocol_student)))
        return 0

    results: dict = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "cpus": os.cpu_count(),
                     "pools": []}
    if not args.list and args.sizes:
        start = time.perf_counter()
        pool_paths(args.pool_dir, max(args.sizes), args.file_size)
        results["generation_seconds"] = round(time.perf_counter() - start, 1)
    base = [sys.executable, __file__, "--pool-dir", str(args.pool_dir), "--file-size", str(args.file_size),
            "--image-size", str(args.image_size), "--teacher", args.teacher, "--batch-size", str(args.batch_size)]
    if args.list:
        base += ["--list", str(args.list)]
    for size in args.sizes:
        before = _load()
        done = subprocess.run([*base, "--child", "pool", "--child-size", str(size)], capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        row = {**json.loads(done.stdout.strip().splitlines()[-1]), "load_before": before, "load_after": _load()}
        results["pools"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.protocol:
        before = _load()
        done = subprocess.run([*base, "--child", "protocol", "--protocol-student", args.protocol_student,
                               "--protocol-steps", str(args.protocol_steps)], capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        rates = json.loads(done.stdout.strip().splitlines()[-1])
        results["protocol"] = {"measured_images_per_s": rates, "load_before": before, "load_after": _load(),
                               "this_machine": protocol_hours(rates, args.protocol_student)}
        print(json.dumps(results["protocol"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
