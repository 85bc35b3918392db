"""The one optimizer factory of kd-keras (every training path builds its optimizer here).

``"sgd"`` is SGD **with momentum 0.9**: study 002 trains its teachers with "SGD, momentum 0.9", and plain SGD
(momentum 0) is never what a recipe in this project means. Pass a function ``lr -> optimizer`` for anything
else (e.g. ``lambda lr: keras.optimizers.SGD(lr)`` for plain SGD).

Example:

```python
from kd_keras.engine import make_optimizer

make_optimizer("sgd", 0.01).momentum  # 0.9
make_optimizer("adam", keras.optimizers.schedules.CosineDecay(1e-3, 1000))
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

SGD_MOMENTUM = 0.9
OPTIMIZERS = ("adam", "adamw", "sgd")

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


def make_optimizer(optimizer: str | Callable[[LearningRate], Any], learning_rate: LearningRate):
    """An optimizer for ``learning_rate`` (a float or a ``LearningRateSchedule``).

    Args:
        optimizer: ``"adam"``, ``"adamw"`` (Keras' default weight decay 0.004), ``"sgd"`` (momentum
            :data:`SGD_MOMENTUM` = 0.9, study 002) or a function ``learning_rate -> optimizer``.
        learning_rate: a number or a ``keras.optimizers.schedules.LearningRateSchedule``.

    Returns:
        A new ``keras.optimizers.Optimizer``.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> make_optimizer("sgd", 0.01).momentum
        0.9
    """
    if callable(optimizer):
        return optimizer(learning_rate)
    if isinstance(learning_rate, int | float):
        learning_rate = float(learning_rate)
    elif not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        raise TypeError(f"learning_rate must be a number or a LearningRateSchedule, got {type(learning_rate).__name__}")
    name = str(optimizer).lower()
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=SGD_MOMENTUM)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS} or a function lr -> optimizer, got {optimizer!r}")
