"""Per-volume latency of a teacher and students in Keras, LiteRT and ONNX Runtime: ``kd-keras latency``
(:mod:`kd_keras.export.cli`; ``--help`` lists the options)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from kd_keras.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["latency", *sys.argv[1:]]))
