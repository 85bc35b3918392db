"""Study 002 as a command: a ResNet50 teacher, lightweight students trained on labeled B-scans and on labeled +
teacher-pseudo-labeled unlabeled B-scans, clinical metrics with clustered-bootstrap CIs, TFLite/ONNX export and
per-volume timing against the teacher.

Examples::

    # the embedded synthetic OCT default (no data needed; about 12 minutes on 2 CPU cores)
    python experiments/oct_student_teacher.py
    # OCT2017-style data with an unlabeled pool and two hold-out test sets, the paper's protocol
    python experiments/oct_student_teacher.py --data-dir OCT2017/train --unlabeled-dir OCT_unlabeled \\
        --test-dir site1_test --test-dir site2_test --teacher-weights imagenet --preset paper --out runs/oct
    # any class-per-folder binary set: 10% of the training patients labeled, the rest unlabeled
    python experiments/oct_student_teacher.py --data-dir chest_xray/train --labeled-fraction 0.1 \\
        --image-size 64 --out runs/cxr
    # a killed run goes on where it stopped
    python experiments/oct_student_teacher.py --out runs/oct --resume

Outputs in ``--out`` (default ``runs/oct_student_teacher``): ``results.json``, ``report.md``, plots,
``models/*.keras``, ``export/*.tflite|*.onnx`` with sidecars, ``tensorboard/``. Exit status 2 with one line on
bad options, bad data or missing weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # errors reach the user as one line from Python


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as '0 0.5 1', got {text!r}") from None
    return tuple(v / 100 if v > 1 else v for v in values)  # "0 25 50" works too


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="labeled images in class folders (default: embedded synthetic OCT)")
    p.add_argument("--unlabeled-dir", action="append", default=[], help="unlabeled pool folder (repeatable)")
    p.add_argument("--test-dir", action="append", default=[], help="hold-out test set in class folders (repeatable)")
    p.add_argument("--normal-class", default=None, help="class folder of normal images (default NORMAL)")
    p.add_argument("--labeled-fraction", type=float, default=None,
                   help="keep labels for this fraction of the training patients; the rest join the unlabeled pool")
    p.add_argument("--teacher", default=None, help="teacher zoo name (default resnet50)")
    p.add_argument("--teacher-weights", default=None,
                   help="imagenet | none | path of a weights file | a trained teacher .keras (default none)")
    p.add_argument("--students", nargs="+", default=None, help="student zoo names")
    p.add_argument("--fractions", type=_fractions, default=None,
                   help="shares of the unlabeled pool, e.g. '0 0.5 1' (0 = labeled only, always run)")
    p.add_argument("--method", choices=("pseudo", "soft", "both"), default=None,
                   help="pseudo-labels (002 section 2.4), soft targets (2.5) or both (default pseudo)")
    p.add_argument("--preset", choices=("quick", "paper", "smoke"), default="quick",
                   help="quick: within 15 minutes on 2 CPU cores (default); paper: the study's protocol; "
                        "smoke: CI sizes")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="student epochs (the teacher's scale with them)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="student steps per epoch (0: one pass over each run's training images, as in 002, so "
                        "runs with more unlabeled images train longer; the quick preset's fixed 100 gives every "
                        "run the same 1,200 steps)")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="teacher epochs (default: the preset's, scaled with --epochs)")
    p.add_argument("--teacher-steps-per-epoch", type=int, default=None,
                   help="teacher steps per epoch (0: one pass over the labeled training images)")
    p.add_argument("--out", default="runs/oct_student_teacher")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="skip finished stages and resume a killed training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from kd_keras.studies.oct_student_teacher import OCTStudyConfig, StudyError

    overrides = dict(
        data_dir=args.data_dir, unlabeled_dirs=tuple(args.unlabeled_dir) or None,
        test_dirs=tuple(args.test_dir) or None,
        normal_class=args.normal_class, labeled_fraction=args.labeled_fraction, teacher=args.teacher,
        teacher_weights=args.teacher_weights, students=tuple(args.students) if args.students else None,
        fractions=args.fractions, method=args.method, image_size=args.image_size, seed=args.seed,
    )
    config = OCTStudyConfig.from_preset(args.preset, **overrides)
    for option, lowest in (("epochs", 1), ("steps_per_epoch", 0), ("teacher_epochs", 1),
                           ("teacher_steps_per_epoch", 0)):
        value = getattr(args, option)
        if value is not None and value < lowest:
            raise StudyError(f"--{option.replace('_', '-')} must be >= {lowest}, got {value}")
    if args.epochs is not None:
        # Keep the preset's teacher/student ratio: the teacher is trained once and labels everything.
        ratio = config.teacher_epochs / config.student_epochs
        config.teacher_epochs = max(1, round(args.epochs * ratio))
        config.student_epochs = args.epochs
    if args.steps_per_epoch is not None:
        config.student_steps_per_epoch = args.steps_per_epoch or None  # 0: one pass over the run's images
    if args.teacher_epochs is not None:
        config.teacher_epochs = args.teacher_epochs
    if args.teacher_steps_per_epoch is not None:
        config.teacher_steps_per_epoch = args.teacher_steps_per_epoch or None
    return config


def main(argv=None) -> int:
    args = parse_args(argv)
    from kd_keras.studies.oct_student_teacher import StudyError

    try:
        config = build_config(args)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import tensorflow as tf

    from kd_keras.data.preprocess import ImageReadError
    from kd_keras.data.validate import DataError
    from kd_keras.engine.callbacks import NonFiniteLossError
    from kd_keras.engine.teacher_cache import CacheError
    from kd_keras.models.weights import WeightsUnavailableError
    from kd_keras.studies.oct_student_teacher import run_study, summary_lines

    tf.get_logger().setLevel("ERROR")  # Keras' retracing notes when many models are evaluated in turn

    start = time.perf_counter()
    try:
        results = run_study(config, args.out, resume=args.resume, progress=not args.no_progress)
    except WeightsUnavailableError as error:
        first = str(error).split(": ")[0]
        print(f"error: --teacher-weights imagenet: the ImageNet weights of {first} are not available offline "
              f"({str(error).splitlines()[0]}). Pass a local weights file (--teacher-weights /path/to/file.h5) "
              "or --teacher-weights none to train the teacher from scratch.", file=sys.stderr)
        return 2
    except (StudyError, DataError, ImageReadError, CacheError, NonFiniteLossError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print()
    print("\n".join(summary_lines(results)))
    print()
    print(f"done in {time.perf_counter() - start:.0f} s; report: {out / 'report.md'}; results: "
          f"{out / 'results.json'}; models: {out / 'models'}; exported: {out / 'export'}; "
          f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    if results.get("resumed_stages"):
        print(f"resumed: skipped finished stages {', '.join(results['resumed_stages'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
