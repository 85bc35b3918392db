"""Precise BatchNorm in the one training stack: `kd_keras.engine.train` recomputes the statistics from training
batches before scoring and at the end."""

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import train


def _bn_model() -> keras.Model:
    x = keras.Input((4, 4, 1), name="image")
    h = keras.layers.Conv2D(2, 1, use_bias=False, kernel_initializer="ones", name="conv")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(2, name="logits")(h))


def _stream(n: int = 32, batch: int = 8) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    data = {
        schema.IMAGE: rng.uniform(100, 200, (n, 4, 4, 1)).astype("float32"),  # conv output mean ~150
        schema.LABEL: rng.integers(0, 2, n).astype("int32"),
        schema.LABELED: np.ones(n, "float32"),
    }
    return tf.data.Dataset.from_tensor_slices(data).batch(batch)


def test_short_stage_recalibrates_batch_norm_for_inference():
    """Four steps leave Keras' moving mean near its initial 0 (momentum 0.99); the stage recomputes it from the
    training batches, so inference-mode outputs are not one constant of badly normalised activations."""
    keras.utils.set_random_seed(0)
    model = _bn_model()
    train(model, _stream, epochs=1, learning_rate=1e-3, bn_batches=0)
    stale = model.get_layer("bn").moving_mean.numpy()
    assert np.all(stale < 0.1 * 150), stale  # what the fix is for: the moving mean lags far behind

    keras.utils.set_random_seed(0)
    model = _bn_model()
    train(model, _stream, epochs=1, learning_rate=1e-3, bn_batches=5)
    # The conv kernel is trained a little, so compare with the activations of the trained kernel.
    conv = keras.Model(model.input, model.get_layer("conv").output)
    images = np.concatenate([b[schema.IMAGE].numpy() for b in _stream()])
    expected = conv(images).numpy().mean(axis=(0, 1, 2))
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), expected, rtol=1e-3)


def test_recalibrated_statistics_are_kept_with_the_best_epoch():
    """With a validation function, the weights of the best epoch come back with the statistics they were scored
    with."""
    keras.utils.set_random_seed(0)
    model = _bn_model()
    seen = []

    def validation(student):
        seen.append(student.get_layer("bn").moving_mean.numpy().copy())
        return -len(seen)  # the first epoch is the best

    result = train(model, _stream, epochs=3, learning_rate=1e-2, validation=validation, bn_batches=5)
    assert result.best_epoch == 1 and len(seen) == 3  # epochs counted from 1
    assert np.all(seen[0] > 50)  # recalibrated before scoring
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(), seen[0])
