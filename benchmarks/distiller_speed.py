"""Training cost of the Distiller against plain ``model.fit`` on the same student (issue 20, item 5).

Four ways to train the same student (``mobilenet_wd2`` at 64x64x3, batch 32, Adam) on the same in-memory
stream of random [0, 255] images and labels (no decoding or augmentation, so the step itself is timed):

- ``plain_fit``: ``student.compile(Adam, SparseCategoricalCrossentropy(from_logits=True)); student.fit``;
- ``distiller_hard_label``: :class:`kd_keras.engine.Distiller` with the ``hard_label`` objective (the same loss
  as plain fit): the Distiller's own overhead;
- ``distiller_cached_teacher``: the ``hinton`` objective with the teacher's logits in every batch
  (``teacher_logits``, as :func:`kd_keras.engine.teacher_cache.with_cached_teacher` delivers them);
- ``distiller_live_teacher``: the ``hinton`` objective with the teacher run inside every step.

Each mode is one model trained for ``--rounds`` rounds of ``--steps`` steps; the rounds alternate between the
modes (a change in the machine's load hits all alike), round 0 (tracing) is reported apart, and the median of the
others is the steady state. The teacher's own forward pass (``teacher_forward``: ``predict_on_batch`` at the same
batch) is timed in the same rounds, so the live-teacher cost can be read as student step + teacher forward.

Usage (repository root)::

    python benchmarks/distiller_speed.py --json docs/latency/distiller_speed.json

The figures depend on the machine's load: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _stream(images, labels, batch_size, teacher_logits=None, dict_batches=True):
    import tensorflow as tf

    if not dict_batches:
        data = tf.data.Dataset.from_tensor_slices((images, labels))
    else:
        items = {"image": images, "label": labels}
        if teacher_logits is not None:
            items["teacher_logits"] = teacher_logits
        data = tf.data.Dataset.from_tensor_slices(items)
    return data.batch(batch_size, drop_remainder=True).cache().repeat().prefetch(2)


def run(args) -> dict:
    import keras

    from kd_keras.engine import Distiller, get_objective
    from kd_keras.models import build_model

    shape = (args.size, args.size, 3)
    rng = np.random.default_rng(0)
    count = args.steps * args.batch_size
    images = rng.uniform(0, 255, (count, *shape)).astype(np.float32)
    labels = rng.integers(0, 2, count).astype(np.int32)
    keras.utils.set_random_seed(0)
    teacher = build_model(args.teacher, shape, num_classes=2)
    teacher_logits = teacher.predict(images, batch_size=args.batch_size, verbose=0).astype(np.float32)

    modes = {}
    for mode in ("plain_fit", "distiller_hard_label", "distiller_cached_teacher", "distiller_live_teacher"):
        keras.utils.set_random_seed(0)
        student = build_model(args.student, shape, num_classes=2)
        if mode == "plain_fit":
            student.compile(keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
            modes[mode] = (student, _stream(images, labels, args.batch_size, dict_batches=False))
            continue
        objective = (get_objective("hard_label") if mode == "distiller_hard_label"
                     else get_objective("hinton", alpha=0.1, temperature=4.0))
        distiller = Distiller(student, teacher if mode == "distiller_live_teacher" else None)
        distiller.compile(keras.optimizers.Adam(1e-3), objective=objective)
        cached = teacher_logits if mode == "distiller_cached_teacher" else None
        modes[mode] = (distiller, _stream(images, labels, args.batch_size, cached))

    seconds = {mode: [] for mode in [*modes, "teacher_forward"]}
    batch = images[: args.batch_size]
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for mode, (model, stream) in modes.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model.fit(stream, epochs=1, steps_per_epoch=args.steps, verbose=0)
            seconds[mode].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(args.steps):
            teacher.predict_on_batch(batch)
        seconds["teacher_forward"].append(time.perf_counter() - start)
    load_after = os.getloadavg()
    rows = {}
    for mode, values in seconds.items():
        steady = float(np.median(values[1:])) if len(values) > 1 else values[0]
        rows[mode] = {"round_seconds": [round(v, 3) for v in values], "steady_steps_per_s": args.steps / steady,
                      "first_round_steps_per_s": args.steps / values[0]}
    plain = rows["plain_fit"]["steady_steps_per_s"]
    for row in rows.values():
        row["relative_to_plain_fit"] = row["steady_steps_per_s"] / plain
    import tensorflow as tf

    return {"command": "python benchmarks/distiller_speed.py " + " ".join(sys.argv[1:]),
            "settings": vars(args), "load_average_before": load_before, "load_average_after": load_after,
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "tensorflow": tf.__version__, "keras": keras.__version__},
            "modes": rows}


def markdown(record: dict) -> str:
    lines = ["| mode | steady steps/s | vs plain fit | first round steps/s |", "|---|---:|---:|---:|"]
    for mode, row in record["modes"].items():
        lines.append(f"| {mode} | {row['steady_steps_per_s']:.1f} | {row['relative_to_plain_fit']:.2f} | "
                     f"{row['first_round_steps_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="mobilenet_wd2")
    parser.add_argument("--teacher", default="resnet50", help="zoo teacher (untrained: the cost is the same)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (the first is tracing)")
    parser.add_argument("--json", default=None, help="write the record here (and a .md table beside it)")
    args = parser.parse_args(argv)
    record = run(args)
    table = markdown(record)
    print(table)
    print(f"load average before {record['load_average_before']}, after {record['load_average_after']}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        path.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
