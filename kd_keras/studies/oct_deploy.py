"""The edge stages of study 002: each student's deployed model exported with parity, and everything timed per
volume (128 B-scans by default) against the teacher in LiteRT and ONNX Runtime."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.records import Records
from kd_keras.runner import RunContext
from kd_keras.studies.oct_stages import student_preprocess

__all__ = ["export_stage", "latency_stage"]


def _images(records: Records, count: int, pre, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from kd_keras.data import pipeline

    rows = np.random.default_rng(seed).permutation(len(records))[:count]
    images, labels = [], []
    for batch in pipeline.make_dataset(records, pre, 64, indices=np.sort(rows), shuffle=False):
        images.append(batch["image"].numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(images), np.concatenate(labels)

def _deployed(info: dict) -> dict:
    key = info.get("deployed_key") or info["student_teacher_key"] or info["baseline_key"]
    return next(r for r in info["runs"] if r["key"] == key)

def _parity_and_calibration(ctx: RunContext, pre) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parity images, their labels, int8 calibration images) of the export and latency stages."""
    config, data = ctx.config, ctx.data
    # Parity on the validation images, topped up with training images that int8 calibration does not see:
    # a 99% agreement gate on ~100 images would fail on one or two borderline flips.
    train_rows = np.random.default_rng(config.seed).permutation(len(data.train))
    calibrate = min(100, math.ceil(len(train_rows) / 2))
    calibration, spare = np.sort(train_rows[:calibrate]), train_rows[calibrate:]
    parity_records = data.validation
    missing = config.parity_images - len(data.validation)
    if missing > 0 and len(spare):
        parity_records = Records.concat(data.validation, data.train.subset(np.sort(spare[:missing])))
    parity_images, parity_labels = _images(parity_records, config.parity_images, pre, config.seed)
    representative, _ = _images(data.train.subset(calibration), calibrate, pre, config.seed)
    return parity_images, parity_labels, representative


def export_stage(ctx: RunContext) -> dict[str, Any]:
    """Each student's deployed model to every export variant, with parity on validation (+ training) images."""
    from kd_keras.export import export_model
    from kd_keras.export.exporter import variant_file
    from kd_keras.export.parity import ExportParityError

    config, data = ctx.config, ctx.data
    students = {name: ctx.outputs[f"student-{name}"] for name in config.students}
    pre = student_preprocess(config)
    export_dir = ctx.out / "export"
    parity_images, parity_labels, representative = _parity_and_calibration(ctx, pre)
    result = {}
    names = list(students)
    iterator = names
    if ctx.progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="export", unit="model", leave=False, file=sys.stderr)
    for name in iterator:
        deployed = _deployed(students[name])
        # The deployed student under its zoo name: models/<student>.keras is what the export and timing use.
        keras_path = ctx.path("models", f"{name}.keras")
        shutil.copyfile(deployed["path"], keras_path)
        entry = {"keras": str(keras_path), "from_run": deployed["key"], "files": []}
        try:
            files = export_model(keras_path, export_dir, variants=config.export_variants,
                                 parity_images=parity_images, parity_labels=parity_labels,
                                 representative_images=representative, class_names=list(data.class_names),
                                 threshold=config.threshold, stem=name, preprocess=pre)
            reports = [(f.path, f.variant, f.format, f.parity) for f in files]
        except ExportParityError as error:  # some variant missed its gate: recorded, the others kept
            entry["error"] = str(error)
            reports = []
            # Every variant was tried, in order; a file that missed its gate was renamed <file>.failed.
            for variant, parity in zip(config.export_variants, error.reports, strict=True):
                path, fmt, precision = variant_file(export_dir, name, variant)
                if not path.exists():
                    path = path.with_name(path.name + ".failed")
                reports.append((path, precision, fmt, parity))
        for path, variant, fmt, parity in reports:
            item = {"path": str(path), "variant": variant, "format": fmt}
            if parity is not None:
                item["parity"] = parity.to_dict()
            entry["files"].append(item)
        result[name] = entry
        ctx.say(f"export {name}: " + ", ".join(Path(f["path"]).name for f in entry["files"])
                 + (f" (FAILED: {entry['error']})" if "error" in entry else ""))
    return result

def latency_stage(ctx: RunContext) -> dict[str, Any]:
    """The teacher and each deployed student timed per volume in every runtime."""
    from kd_keras.export.latency import benchmark, best_files, conditions

    config = ctx.config
    teacher_path = ctx.outputs["teacher"]["path"]
    targets = [str(ctx.out / "models" / f"{name}.keras") for name in config.students]
    # Every precision the study exports, in every runtime (ONNX int8: ONNX Runtime's static QDQ quantiser), each
    # file checked against Keras on the export stage's parity images and calibrated on its training images.
    precisions = tuple(dict.fromkeys(["fp32", *(v.removeprefix("tflite_") for v in config.export_variants
                                                if v.startswith("tflite_"))]))
    parity_images = parity_labels = calibration = None
    if precisions != ("fp32",):
        parity_images, parity_labels, calibration = _parity_and_calibration(ctx, student_preprocess(config))
    # The export stage's files of each deployed student (``.failed`` ones too) are timed as they are, their parity
    # measured again here; only what it did not write (the teacher's files, ONNX int8) is converted.
    exported = {}
    for name, target in zip(config.students, targets, strict=True):
        files = ctx.outputs.get("export", {}).get(name, {}).get("files", [])
        exported[target] = {("." + f["format"], f["variant"]): f["path"] for f in files
                            if f["format"] in ("tflite", "onnx")}
    ctx.say(f"latency: {config.images_per_volume} images per volume, runtimes {list(config.latency_runtimes)}, "
             f"precisions {list(precisions)}, {config.latency_threads} threads, median of {config.latency_repeats}")
    measured = benchmark(targets, teacher=str(teacher_path), runtimes=config.latency_runtimes, precisions=precisions,
                         num_images=config.images_per_volume, batch_size=config.latency_batch_size,
                         threads=config.latency_threads, warmup=1, repeats=config.latency_repeats,
                         calibration_images=calibration, parity_images=parity_images, parity_labels=parity_labels,
                         threshold=config.threshold, work_dir=ctx.out / "latency", converted=exported,
                         progress=(lambda line: ctx.say("  " + line)))
    models: dict[str, dict] = {}
    for r in measured:
        entry = models.setdefault(r.model, {"params": r.params, "macs": r.macs, "seconds_per_volume": {},
                                            "speedup": {}, "spread": {}, "errors": {}, "parity_passed": {}})
        key = r.runtime if r.precision == "fp32" else f"{r.runtime} {r.precision}"  # fp32 keeps the old keys
        if r.error:
            entry["errors"][key] = r.error
            continue
        entry["seconds_per_volume"][key] = r.median_s
        entry["spread"][key] = {"min": r.min_s, "max": r.max_s, "iqr": r.iqr_s, "times": r.times_s}
        entry["parity_passed"][key] = r.parity_passed
        if r.speedup:
            entry["speedup"][key] = r.speedup
    for row in best_files(measured, str(teacher_path)):
        models[row["model"]]["fastest"] = row
    primary = next((rt for rt in config.latency_runtimes
                    if all(rt in m["seconds_per_volume"] for m in models.values())), None)
    return {
        "images_per_volume": config.images_per_volume, "batch_size": config.latency_batch_size,
        "threads": config.latency_threads, "repeats": config.latency_repeats, "primary_runtime": primary,
        "teacher": Path(teacher_path).stem, "models": models, "conditions": conditions(),
    }
