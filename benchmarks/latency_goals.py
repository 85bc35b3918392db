"""The latency goals of issue 20, measured with the teacher and the students interleaved in one run.

On a loaded machine a teacher timed at one minute and a student at the next differ by the load as much as by the
network; here every file (teacher and students, fp32 and int8, LiteRT and ONNX Runtime) is loaded in one process
and timed in interleaved rounds (:func:`kd_keras.export.latency_compare.interleaved_latency`), so each speed-up is
a ratio of medians from the same rounds. Every file is first checked against Keras on real images (the export
gates of :mod:`kd_keras.export.parity`); int8 files are calibrated on other images of the same set.

Goals checked: every student reaches >= 0.8 of its multiply-add ratio (speed-up over the teacher in the same
runtime and precision) in its best runtime and precision; the best student is >= 25x faster than the teacher in
the same precision and >= 50x faster than the fp32 teacher (its fastest runtime).

Usage (repository root)::

    python benchmarks/latency_goals.py --images-dir ~/.cache/kd_keras/synthetic_oct/<key>/labeled \
        --work /tmp/goals --out docs/latency/goals

Files already in ``--work`` (``<model>.keras`` with ``<model>_fp32.tflite`` etc., as ``kd-keras latency
--work-dir`` writes them) are reused; ``--prepare-only`` converts and checks them without timing (the conversions
need no quiet machine, the timing does).

``--batch-sizes 1 4 16``: every file is timed at each batch size in the same rounds, and each model's cell is
its fastest batch (shown): how a deployment would run it. The default (16) is the earlier runs' setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PRECISIONS = ("fp32", "int8")


def _files(name: str, work: Path, calibration: np.ndarray, size: int) -> tuple[object, dict]:
    import keras

    from kd_keras.export.latency import fit_images
    from kd_keras.export.onnx_format import convert_onnx
    from kd_keras.export.onnx_quantize import quantize_onnx
    from kd_keras.export.tflite import convert_tflite, model_input_shape
    from kd_keras.models import build_model, load_model

    keras_file = work / f"{name}.keras"
    if keras_file.is_file():
        model = load_model(keras_file)
    else:
        keras.utils.set_random_seed(0)
        model = build_model(name, input_shape=(size, size, 3), num_classes=2)
        model.save(keras_file)
    calibration = fit_images(calibration, model_input_shape(model))
    files = {("litert", "fp32"): work / f"{name}_fp32.tflite", ("litert", "int8"): work / f"{name}_int8.tflite",
             ("onnxruntime", "fp32"): work / f"{name}.onnx", ("onnxruntime", "int8"): work / f"{name}_int8.onnx"}
    for (runtime, precision), path in files.items():
        if path.is_file():
            continue
        if runtime == "litert":
            convert_tflite(model, path, precision, calibration)
        elif precision == "fp32":
            convert_onnx(model, path)
        else:
            quantize_onnx(files[("onnxruntime", "fp32")], path, "int8", calibration)
    return model, files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--students", nargs="+", default=["fdmobilenet_w1", "squeezenet_v1_1", "mobilenetv2_w1",
                                                           "shufflenetv2_w1"])
    parser.add_argument("--images-dir", required=True, help="class folders: calibration (half) and parity (half)")
    parser.add_argument("--images-per-class", type=int, default=24)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16],
                        help="time every file at each; a cell is the model's fastest batch")
    parser.add_argument("--prepare-only", action="store_true", help="convert and check the files, no timing")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", default="docs/latency/goals")
    args = parser.parse_args(argv)

    from kd_keras.export.exporter import images_from_folders, keras_logits_in_batches
    from kd_keras.export.latency import fit_images
    from kd_keras.export.latency_compare import Setting, interleaved_latency, settings_table
    from kd_keras.export.latency_report import conditions
    from kd_keras.export.onnx_format import OnnxRunner
    from kd_keras.export.parity import measure_parity
    from kd_keras.export.tflite import LiteRTRunner, model_input_shape
    from kd_keras.models.profile import count_macs

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images, _, _ = images_from_folders(args.images_dir, (args.size, args.size), 3, args.images_per_class)
    order = np.random.default_rng(0).permutation(len(images))
    calibration, parity_images = images[np.sort(order[: len(order) // 2])], images[np.sort(order[len(order) // 2:])]

    models = [args.teacher, *args.students]
    settings, info = [], {}
    for name in models:
        model, files = _files(name, work, calibration, args.size)
        shaped = fit_images(parity_images, model_input_shape(model))
        keras_logits = keras_logits_in_batches(model, shaped, 16)
        info[name] = {"macs": count_macs(model), "parity": {}}
        for (runtime, precision), path in files.items():
            runner = LiteRTRunner(path, num_threads=args.threads) if runtime == "litert" else OnnxRunner(
                path, args.threads)
            report = measure_parity(keras_logits, runner.predict(shaped, 16), variant=precision, runtime=runtime)
            info[name]["parity"][f"{runtime} {precision}"] = {"passed": report.passed,
                                                              "max_relative_diff": report.max_relative_diff,
                                                              "decision_agreement": report.decision_agreement}
            settings += [Setting(f"{name} {runtime} {precision} b{batch}", path, runtime, batch_size=batch,
                                 threads=args.threads) for batch in args.batch_sizes]
        print(f"{name}: files ready, parity " + ", ".join(f"{k} {'passed' if v['passed'] else 'FAILED'}"
                                                          for k, v in info[name]["parity"].items()), flush=True)
    if args.prepare_only:
        return 0

    rows = interleaved_latency(settings, num_images=args.num_images, repeats=args.repeats)
    # Each (model, runtime, precision) at its fastest batch size.
    median, batch_of = {}, {}
    for row in rows:
        key = row["label"].rsplit(" b", 1)[0]
        if key not in median or row["median_s"] < median[key]:
            median[key], batch_of[key] = row["median_s"], row["batch_size"]
    teacher_macs = info[args.teacher]["macs"]
    summary = []
    teacher_fp32 = min(median[f"{args.teacher} {rt} fp32"] for rt in ("litert", "onnxruntime"))
    for name in models:
        entry = {"model": name, "macs": info[name]["macs"], "macs_ratio": teacher_macs / info[name]["macs"],
                 "cells": {}}
        for runtime in ("litert", "onnxruntime"):
            for precision in PRECISIONS:
                key = f"{runtime} {precision}"
                speedup = median[f"{args.teacher} {key}"] / median[f"{name} {key}"]
                entry["cells"][key] = {"median_s": median[f"{name} {key}"], "batch_size": batch_of[f"{name} {key}"],
                                       "speedup_same_precision": speedup,
                                       "macs_fraction": speedup / entry["macs_ratio"],
                                       "parity_passed": info[name]["parity"][key]["passed"]}
        passing = {k: c for k, c in entry["cells"].items() if c["parity_passed"]}
        best_key = min(passing, key=lambda k: passing[k]["median_s"])
        entry["fastest"] = best_key
        entry["best_macs_fraction"] = max(c["macs_fraction"] for c in passing.values())
        entry["best_speedup_same_precision"] = max(c["speedup_same_precision"] for c in passing.values())
        entry["speedup_vs_fp32_teacher"] = teacher_fp32 / passing[best_key]["median_s"]
        summary.append(entry)
    students = [e for e in summary if e["model"] != args.teacher]
    goals = {"every_student_0.8_of_macs_ratio": all(e["best_macs_fraction"] >= 0.8 for e in students),
             "best_student_25x_same_precision": max(e["best_speedup_same_precision"] for e in students) >= 25,
             "best_student_50x_fp32_teacher": max(e["speedup_vs_fp32_teacher"] for e in students) >= 50}
    record = {"command": "python benchmarks/latency_goals.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "conditions": conditions(), "num_images": args.num_images, "repeats": args.repeats,
              "batch_sizes": args.batch_sizes,
              "summary": summary, "goals": goals, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    keys = [f"{rt} {p}" for rt in ("litert", "onnxruntime") for p in PRECISIONS]
    lines = ["| model | MACs ratio | " + " | ".join(f"{k} s/volume (speed-up)" for k in keys)
             + " | fastest passing | best speed-up / MACs ratio | vs fp32 teacher |", "|---|---:|" + "---:|" * 7]
    for e in summary:
        batch = len(args.batch_sizes) > 1
        cells = [f"{e['cells'][k]['median_s']:.3f} ({e['cells'][k]['speedup_same_precision']:.1f}x"
                 + (f", b{e['cells'][k]['batch_size']})" if batch else ")")
                 + ("" if e["cells"][k]["parity_passed"] else " parity failed") for k in keys]
        lines.append(f"| {e['model']} | {e['macs_ratio']:.1f} | " + " | ".join(cells)
                     + f" | {e['fastest']} | {e['best_macs_fraction']:.2f} | {e['speedup_vs_fp32_teacher']:.1f}x |")
    load = f"load average {rows[0]['load_before'][0]:.1f} -> {rows[0]['load_after'][0]:.1f}"
    batches = f", each file at batch {'/'.join(map(str, args.batch_sizes))} (a cell: its fastest)" if len(
        args.batch_sizes) > 1 else f", batch {args.batch_sizes[0]}"
    text = "\n".join(lines) + f"\n\n{args.num_images} images per volume{batches}, median of {args.repeats} " \
        f"interleaved rounds, {load}. Goals: {goals}\n\n" + settings_table(rows) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
