"""Study 003 as a command: SimCLR-pretrained ResNet50 teacher fine-tuned on a small labeled fraction, pseudo-labels
on the pool, a student trained on them and fine-tuned; supervised / FixMatch / MixMatch baselines; AUC with CIs
on every test set; t-SNE of the embeddings.

Examples::

    python experiments/simclr_distill.py --layout eyepacs --data trainLabels.csv --image-dir train \\
        --extra-test messidor2.csv:messidor2/ --out runs/simclr
    python experiments/simclr_distill.py --layout folders --data chest_xray/train --no-fundus-crop \\
        --image-size 128 --labeled-fraction 0.1 --out runs/simclr_cxr
    python experiments/simclr_distill.py --demo --out runs/simclr_demo          # = --preset demo
    python experiments/simclr_distill.py --demo --tiny --out runs/simclr_smoke  # = --preset smoke
    python experiments/simclr_distill.py --out runs/simclr --resume             # a killed run goes on

Outputs: ``results.json``, ``report.md``, ``tsne.png``, ``models/*.keras``, ``config.yaml`` (replay:
``--config runs/simclr/config.yaml``).

This script is ``kd-keras run simclr`` (:mod:`kd_keras.cli`); ``--help`` lists every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from kd_keras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", "simclr", *sys.argv[1:]]))
