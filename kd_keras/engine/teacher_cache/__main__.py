"""``python -m kd_keras.engine.teacher_cache``: see :mod:`kd_keras.engine.teacher_cache.cli`."""

import sys

from kd_keras.engine.teacher_cache.cli import main

if __name__ == "__main__":
    sys.exit(main())
