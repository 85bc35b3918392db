"""The model zoo: teachers and lightweight students, built by name.

See :mod:`kd_keras.models.registry` for the conventions every model follows (input in [0, 255], logits out,
named stage taps). ``python -m kd_keras.models`` prints the zoo.
"""

from kd_keras.models.registry import ModelSpec, build_model, get_spec, list_models, register_model, with_taps

__all__ = ["ModelSpec", "build_model", "get_spec", "list_models", "register_model", "with_taps"]
