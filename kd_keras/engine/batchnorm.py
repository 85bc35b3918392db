"""Precise BatchNorm (Wu & Johnson, 2021): the moving mean and variance of every ``BatchNormalization`` layer set
to their exact average over a few training batches.

Keras' moving averages (momentum 0.99) still carry their initial values (0 and 1) after a few hundred steps, so a
model trained briefly (as on a CPU) predicts nonsense in inference mode although it has learned: measured on the
synthetic OCT data, a small CNN after 200 steps scores test AUC 0.55 with Keras' statistics and 0.97 with
recalibrated ones. :func:`kd_keras.engine.train` recalibrates before every validation and at the end.

Example:

```python
from kd_keras.engine import recalibrate_batch_norm

recalibrate_batch_norm(student, make_dataset(train_records, config, 64), max_batches=10)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from kd_keras.data import schema
from kd_keras.engine.distiller import Distiller


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every ``BatchNormalization`` layer of ``model``, nested models included.

    Example:
        >>> len(batch_norm_layers(build_model("mobilenet_v2", (64, 64, 3), 2))) > 0
        True
    """
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        for child in getattr(layer, "layers", None) or []:
            visit(child)

    visit(model)
    return found


def recalibrate_batch_norm(model: keras.Model, batches: Any, max_batches: int = 10) -> int:
    """Set each BatchNorm layer's moving mean and variance to their average over ``batches`` ("precise BN").

    The model runs in training mode (batch statistics) on each batch, one eager call at a time, with the layers'
    momentum set to ``k / (k + 1)`` at batch ``k`` so the moving statistics become the exact running average;
    the momentum is restored afterwards. No weight is trained. Dropout and other random layers draw as in
    training.

    Args:
        model: a classifier (a Distiller: its student).
        batches: an iterable of image batches, or of schema dicts with ``image`` (e.g. the training stream).
        max_batches: batches to average over.

    Returns:
        The number of batches used (0 when the model has no BatchNorm layer: nothing is run).

    Example:
        >>> recalibrate_batch_norm(student, make_dataset(train_records, config, 64), max_batches=10)
        10
    """
    net = model.student if isinstance(model, Distiller) else model
    layers = batch_norm_layers(net)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            images = batch[schema.IMAGE] if isinstance(batch, Mapping) else batch
            for layer in layers:
                layer.momentum = used / (used + 1.0)
            net(images, training=True)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return used
