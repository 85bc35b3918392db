"""Study 004 as a command: attention transfer from DenseNet-121 into DenseNet-121 / DenseNet-40, beta grid,
transfer-learning baseline, training-set-size sweep, learning curves.

Examples::

    # CheXpert (multi-label, 14 observations, U-zero as the paper), ImageNet teacher and students
    python experiments/attention_transfer.py --layout chexpert --data CheXpert-v1.0/train.csv \
        --image-dir . --out runs/at_chexpert
    # an in-domain teacher checkpoint (a .keras DenseNet-121) and the paper's Retina beta
    python experiments/attention_transfer.py --layout eyepacs --data trainLabels.csv --image-dir train \
        --teacher-weights teacher.keras --betas 30 60 --out runs/at_dr
    # the embedded demo (synthetic fundus photographs; --demo-task multiclass | binary | multilabel)
    python experiments/attention_transfer.py --demo --out runs/at_demo

Outputs in ``--out``: ``results.json``, ``report.md``, ``learning_curves.png``, ``auc_vs_size.png``,
``models/*.keras``. The demo trains with a larger learning rate than the paper's 5e-5 (few epochs) and a
teacher trained here from scratch (no ImageNet offline).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_keras.data import sources, tasks  # noqa: E402
from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus  # noqa: E402
from kd_keras.studies import attention_transfer as study  # noqa: E402
from kd_keras.studies import common  # noqa: E402

# DenseNet-40 only: each DenseNet-121 student run took about 90 s on 2 cores (DenseNet-40: 45 s), so both
# students would need about 16 minutes; --students densenet121 densenet40 runs both (docs/demos.md).
DEMO = dict(image_size=64, teacher_weights=None, teacher_epochs=4, teacher_lr=1e-3, student_weights=None,
            students=("densenet40",),
            betas=(1.0, 100.0), train_fractions=(0.5, 1.0), epochs=6, batch_size=16, learning_rate=1e-3,
            halve_every_epochs=4, curve_points=8, n_boot=100)
DEMO_PATIENTS = 60
TINY = dict(image_size=32, teacher_weights=None, teacher_epochs=0, student_weights=None, students=("densenet40",),
            betas=(10.0,), train_fractions=(1.0,), epochs=1, batch_size=16, learning_rate=1e-3,
            halve_every_epochs=1, curve_points=2, n_boot=0, split=(0.6, 0.2, 0.2))
TINY_PATIENTS = 12


def demo_records(out: Path, task: str, patients: int, image_size: int, seed: int):
    """Synthetic fundus photographs as a multi-class (grades), binary (referable) or CheXpert-style multi-label
    set (labels ``any_dr``, ``referable``, ``proliferative``; a borderline grade is written as -1, uncertain,
    and ignored by the loss)."""
    root = generate_synthetic_fundus(out / "data" / "fundus", SyntheticFundusConfig(
        patients=patients, image_size=max(64, image_size), seed=seed, difficulty=0.5))
    records = sources.eyepacs(root / "trainLabels.csv", root / "train")
    if task == "multiclass":
        return tasks.dr_grades(records)
    if task == "binary":
        return tasks.referable_dr(records)
    sheet = out / "data" / "multilabel.csv"
    with open(sheet, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Path", "Patient", "any_dr", "referable", "proliferative"])
        for path, grade, patient in zip(records.paths, records.labels, records.patients, strict=True):
            grade = int(grade)
            writer.writerow([Path(path).relative_to(root).as_posix(), patient, int(grade >= 1),
                             -1 if grade == 2 else int(grade >= 2), -1 if grade == 3 else int(grade >= 4)])
    return sources.from_csv(sheet, root, file_column="Path", patient_column="Patient",
                            label_columns=["any_dr", "referable", "proliferative"], uncertain="ignore")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo", action="store_true")
    p.add_argument("--demo-task", choices=("multiclass", "binary", "multilabel"), default="multiclass")
    p.add_argument("--tiny", action="store_true", help="with --demo: CI smoke-test sizes (also KD_KERAS_TINY=1)")
    p.add_argument("--layout", choices=common.LAYOUTS, default="folders")
    p.add_argument("--data")
    p.add_argument("--image-dir")
    p.add_argument("--task", default="auto")
    p.add_argument("--uncertain", default="zeros", help="CheXpert -1 labels: zeros (paper) | ones | ignore")
    p.add_argument("--out", default="runs/attention_transfer")
    p.add_argument("--teacher-weights", default="imagenet", help="imagenet | none | weights file | teacher .keras")
    p.add_argument("--student-weights", default="imagenet", help="imagenet | none")
    p.add_argument("--students", nargs="+", choices=list(study.STUDENT_TAPS))
    p.add_argument("--betas", nargs="+", type=float)
    p.add_argument("--train-fractions", nargs="+", type=float)
    for name in ("image_size", "channels", "teacher_epochs", "epochs", "batch_size", "halve_every_epochs",
                 "curve_points", "n_boot", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    for name in ("teacher_lr", "learning_rate"):
        p.add_argument("--" + name.replace("_", "-"), type=float)
    p.add_argument("--variant", choices=("paper", "zagoruyko"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or os.environ.get("KD_KERAS_TINY") == "1"
    out = Path(args.out)
    overrides: dict = dict(TINY if tiny else DEMO) if args.demo else {}
    if not args.demo:
        for name in ("teacher_weights", "student_weights"):
            value = getattr(args, name)
            overrides[name] = None if value.lower() == "none" else value
    for name in ("image_size", "channels", "teacher_epochs", "epochs", "batch_size", "halve_every_epochs",
                 "curve_points", "n_boot", "seed", "teacher_lr", "learning_rate", "variant"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    for name in ("students", "betas", "train_fractions"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    config = study.ATConfig(**overrides)
    if args.demo:
        records = demo_records(out, args.demo_task, TINY_PATIENTS if tiny else DEMO_PATIENTS, config.image_size,
                               config.seed)
    else:
        if not args.data:
            raise ValueError("give --data (and --layout), or --demo")
        records = common.load_labeled(args.layout, args.data, image_dir=args.image_dir, task=args.task,
                                      uncertain=args.uncertain)
    print(f"{len(records)} images, task {records.task}, classes {records.class_names}", flush=True)
    results = common.start_results("004_attention_transfer", dataclasses.asdict(config), config.seed, argv)
    results["data"] = {"records": records.summary(), "demo": args.demo, "demo_task": args.demo_task, "tiny": tiny}
    results.update(study.run(records, config, out))
    results["overfitting"] = study.overfitting_delay(results)
    report = study.write_report(results, config, out)
    json_path, md_path = common.finish_outputs(out, results, report)
    print(report)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
