"""Shared test set-up.

Two logical CPU devices are configured before TensorFlow starts, so MirroredStrategy tests can compare 1 and 2
replicas on any machine. Tests that read ``../shared`` use the ``shared_dir`` fixture, which skips with a reason
when it is absent (a user's clone has none; CI always has it).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # already initialised by a plugin; replica tests skip if fewer than 2 devices
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("KD_KERAS_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; skips the test when it is absent."""
    if not (SHARED_DIR / "data").is_dir():
        pytest.skip(f"real data not found at {SHARED_DIR / 'data'} (only CI and developers have ../shared)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def cxr_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "kermany-cxr" / "train"


@pytest.fixture(scope="session")
def oct_sample_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "kermany-oct-sample"
