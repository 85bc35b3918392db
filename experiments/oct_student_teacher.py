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
``config.yaml`` (replay: ``--config runs/oct_student_teacher/config.yaml``), ``models/*.keras``,
``export/*.tflite|*.onnx`` with sidecars, ``tensorboard/``. Exit status 2 with one line on bad options, bad data
or missing weights.

This script is ``kd-keras run oct`` (:mod:`kd_keras.cli`); ``--help`` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from kd_keras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", "oct", *sys.argv[1:]]))
