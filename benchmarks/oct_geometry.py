"""Which B-scan geometry validates best on real OCT: resize (stretch), centre crop or pad to square.

Real Kermany B-scans are 496-512 px high and 384-1,536 px wide; the model takes a square. This benchmark trains
the same student on the labeled images alone with each ``geometry`` of :class:`kd_keras.data.preprocess.
PreprocessConfig`, on the same patient-level split per seed (the main job's own split,
:func:`kd_keras.studies.oct_data.prepare_data`), and reports the best validation AUC over epochs (the value that
decides) and, for information only, the test AUC of the chosen weights. ``docs/oct_real.md`` shows the result.

Usage (about 10 minutes on 2 cores for 3 geometries x 3 seeds)::

    python benchmarks/oct_geometry.py --data-dir ../shared/data/kermany-oct-1k --out docs/oct_real/geometry.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def run(data_dir: str, geometries: list[str], seeds: list[int], student: str, image_size: int, epochs: int,
        steps: int, task: str, labeled_fraction: float) -> dict:
    import keras

    from kd_keras.cli import quiet_tensorflow_start

    quiet_tensorflow_start()
    from kd_keras.data import pipeline
    from kd_keras.data.augment import build_augmenter
    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.engine.callbacks import seed_everything
    from kd_keras.engine.training import predict, train
    from kd_keras.models import build_model
    from kd_keras.studies.oct_config import OCTStudyConfig
    from kd_keras.studies.oct_data import prepare_data

    rows = []
    for seed in seeds:
        config = OCTStudyConfig.from_preset("quick", data_dir=data_dir, seed=seed, task=task,
                                           labeled_fraction=labeled_fraction)
        data = prepare_data(config, say=lambda _line: None)
        for geometry in geometries:
            seed_everything(seed)
            pre = PreprocessConfig((image_size, image_size), channels=1, geometry=geometry)
            augmenter = build_augmenter(flip="horizontal", rotation_degrees=10.0, vertical_shift=0.1,
                                        brightness=0.0, contrast=0.0, seed=seed)
            validation = pipeline.make_dataset(data.validation, pre, 64, shuffle=False, cache=True)
            start = time.perf_counter()
            result = train(build_model(student, (image_size, image_size, 1), len(data.class_names)),
                           lambda pre=pre, augmenter=augmenter, seed=seed, train=data.train: pipeline.make_dataset(
                               train, pre, 32, repeat=True, seed=seed, augmenter=augmenter, cache=True),
                           epochs=epochs, steps_per_epoch=steps, validation=validation, learning_rate=2e-3,
                           monitor="auc")
            test_auc = {name: predict(result.model, records, pre).score("auc") for name, records in data.tests.items()}
            rows.append({"seed": seed, "geometry": geometry, "validation_auc": result.best_score,
                         "best_epoch": result.best_epoch, "test_auc": test_auc,
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
            keras.backend.clear_session(free_memory=True)
    summary = {}
    for geometry in geometries:
        values = [r["validation_auc"] for r in rows if r["geometry"] == geometry]
        tests = [next(iter(r["test_auc"].values())) for r in rows if r["geometry"] == geometry]
        summary[geometry] = {"validation_auc_mean": statistics.mean(values),
                             "validation_auc_sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                             "test_auc_mean": statistics.mean(tests)}
    best = max(summary, key=lambda g: summary[g]["validation_auc_mean"])
    return {"data_dir": data_dir, "student": student, "image_size": image_size, "epochs": epochs,
            "steps_per_epoch": steps, "task": task, "labeled_fraction": labeled_fraction,
            "train": len(data.train), "validation": len(data.validation),
            "runs": rows, "summary": summary, "best_by_validation": best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--geometries", nargs="+", default=["resize", "center_crop", "pad"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--student", default="mobilenet_wd2")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--task", default="binary", choices=["binary", "multiclass"])
    parser.add_argument("--labeled-fraction", type=float, default=0.5,
                        help="share of the training patients whose labels are used (the main job's setting)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args.data_dir, args.geometries, args.seeds, args.student, args.image_size, args.epochs,
                 args.steps_per_epoch, args.task, args.labeled_fraction)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for geometry, values in result["summary"].items():
        print(f"{geometry:12s} validation AUC {values['validation_auc_mean']:.3f} +- {values['validation_auc_sd']:.3f}"
              f"  (test {values['test_auc_mean']:.3f})")
    print(f"best by validation: {result['best_by_validation']}")


if __name__ == "__main__":
    main()
