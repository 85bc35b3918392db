"""The model zoo: teachers and lightweight students, built by name.

See :mod:`kd_keras.models.registry` for the conventions every model follows (input in [0, 255], logits out,
named stage taps). ``python -m kd_keras.models`` prints the zoo.
"""

from __future__ import annotations

from pathlib import Path

import keras

from kd_keras.models import layers  # noqa: F401  (registers PixelNormalization for .keras loading)
from kd_keras.models.registry import (
    ModelSpec,
    _discover,
    build_model,
    get_spec,
    list_models,
    register_model,
    with_taps,
)


def load_model(path: str | Path, compile: bool = False) -> keras.Model:
    """Load a ``.keras`` model saved from the zoo, in any process.

    The custom layers of the families (channel shuffle, hard-swish, pixel normalisation, ...) are registered when
    their modules are imported; this imports them all first, then calls ``keras.models.load_model``.

    Example:
        >>> student = load_model("runs/oct/squeezenet_v1_1.keras")
    """
    _discover()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    return keras.models.load_model(path, compile=compile)


__all__ = ["ModelSpec", "build_model", "get_spec", "list_models", "load_model", "register_model", "with_taps"]
