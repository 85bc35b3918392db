"""Student noise for noisy-student training: stochastic depth.

Dropout comes from the model itself (``build_model(..., dropout=...)``) and input noise from an augmentation
layer given to the ``noisy_student`` objective; stochastic depth needs a residual branch, so a model family
opts in by wrapping its residual branches with :class:`StochasticDepth`.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kd_keras")
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch per example in training (Huang et al., 2016), identity at inference.

    ``outputs = shortcut + branch * keep / (1 - rate)`` with ``keep ~ Bernoulli(1 - rate)`` per example in
    training mode (the "inverted" form: no rescaling at inference, so exported models are unchanged), and
    ``shortcut + branch`` otherwise.

    Args:
        rate: probability of dropping the branch, in [0, 1).
        seed: seed of the layer's generator.

    Example:
        >>> y = StochasticDepth(0.2)([shortcut, branch])
    """

    def __init__(self, rate: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"StochasticDepth: rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        shortcut, branch = inputs
        if not training or self.rate == 0.0:
            return shortcut + branch
        shape = (ops.shape(branch)[0],) + (1,) * (len(branch.shape) - 1)
        keep = ops.cast(keras.random.uniform(shape, seed=self.seed_generator) >= self.rate, branch.dtype)
        return shortcut + branch * keep / (1.0 - self.rate)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
