"""Study 004 as a command: attention transfer from DenseNet-121 into DenseNet-121 / DenseNet-40, beta grid,
transfer-learning baseline, training-set-size sweep, learning curves.

Examples::

    # CheXpert (multi-label, 14 observations, U-zero as the paper), ImageNet teacher and students
    python experiments/attention_transfer.py --layout chexpert --data CheXpert-v1.0/train.csv \\
        --image-dir . --out runs/at_chexpert
    # an in-domain teacher checkpoint (a .keras DenseNet-121) and the paper's Retina beta
    python experiments/attention_transfer.py --layout eyepacs --data trainLabels.csv --image-dir train \\
        --teacher-weights teacher.keras --betas 30 60 --out runs/at_dr
    # the embedded demo (synthetic fundus photographs; --demo-task multiclass | binary | multilabel)
    python experiments/attention_transfer.py --demo --out runs/at_demo
    # a killed run goes on where it stopped
    python experiments/attention_transfer.py --demo --out runs/at_demo --resume

``--demo`` is ``--preset demo`` and ``--demo --tiny`` (or ``KD_KERAS_TINY=1``) is ``--preset smoke``. Outputs in
``--out``: ``results.json``, ``report.md``, ``learning_curves.png``, ``auc_vs_size.png``, ``models/*.keras``,
``config.yaml`` (replay: ``--config <out>/config.yaml``). The demo trains with a larger learning rate than the
paper's 5e-5 (few epochs) and a teacher trained here from scratch (no ImageNet offline).

This script is ``kd-keras run attention`` (:mod:`kd_keras.cli`); ``--help`` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from kd_keras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", "attention", *sys.argv[1:]]))
