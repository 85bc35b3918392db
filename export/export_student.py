"""Export a student ``.keras`` file to TFLite / ONNX with parity proven on real images: ``kd-keras export``
(:mod:`kd_keras.export.cli`; ``--help`` lists the options)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from kd_keras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
