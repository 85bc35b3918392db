"""Study 000 as a command: ``kd-keras run dr`` (VGG16 teacher, Simple10 / VGG/2 / VGG/4 students, Base / +KD /
+UL / +KD+UL, patient-level cross-validation, Tables 1 and 2). ``--demo`` = ``--preset demo``; ``--demo --tiny``
(or ``KD_KERAS_TINY=1``) = ``--preset smoke``; ``--help`` lists every setting.

Examples::

    python experiments/dr_kd_unlabeled.py --layout messidor --data messidor.csv --image-dir messidor/ \
        --pool natural_images/ --out runs/dr_kd
    python experiments/dr_kd_unlabeled.py --demo --out runs/dr_kd_demo
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_keras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", "dr", *sys.argv[1:]]))
