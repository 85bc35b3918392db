"""``python -m kd_keras``: the ``kd-keras`` command (:mod:`kd_keras.cli`)."""

import sys

from kd_keras.cli import main

if __name__ == "__main__":
    sys.exit(main())
