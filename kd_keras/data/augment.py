"""Training-time augmentation with Keras 3 layers only.

Two builders, both returning a ``keras.Sequential`` that takes float pixels in [0, 255] and works eagerly or inside
``tf.data.Dataset.map``. Apply them to batches ``(N, H, W, C)`` (any N, H, W): a Sequential fixes the input rank
at its first call, so map after ``batch`` (or call it on single ``(H, W, C)`` images only):

- :func:`build_augmenter`: the supervised augmentation of the studies: row/column flips (000), rotation within
  +-15 degrees and a vertical shift (002's OCT B-scans), brightness/contrast jitter.
- :func:`build_simclr_augmenter`: SimCLR's view augmentation for study 003 (random resized crop, colour
  distortion of strength ``s``, random grey, Gaussian blur); :func:`two_views` makes two independent views.

Randomness: every layer gets its own seed derived from ``seed``; a ``keras.random.SeedGenerator`` advances at
each call, so epochs and the two SimCLR views differ while two augmenters built with the same seed produce the
same sequence. That holds eagerly and in a ``tf.data`` map run in order; with ``num_parallel_calls`` the calls
may reach the generator in another order, so exact replay then needs ``deterministic=True`` and one call at a
time (reproducibility of the distribution is unaffected).

Example:

```python
augmenter = build_augmenter(seed=0)
dataset = dataset.map(lambda batch: {**batch, "image": augmenter(batch["image"], training=True)})
```
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

VALUE_RANGE = (0.0, 255.0)


def _seed(seed: int | None, offset: int) -> int | None:
    return None if seed is None else int(seed) + 1009 * offset  # distinct, reproducible per-layer seeds


@keras.saving.register_keras_serializable(package="kd_keras")
class RandomApply(layers.Layer):
    """Applies ``layer`` to each example with probability ``probability``, else passes it through.

    Keras' colour layers always transform; SimCLR applies colour jitter to 80% of images and blur to 50%.

    Args:
        layer: a Keras layer mapping a batch to a batch of the same shape.
        probability: chance per example, in [0, 1].
        seed: seed of the coin flips.

    Example:

    ```python
    maybe_jitter = RandomApply(keras.layers.RandomColorJitter(brightness_factor=0.8), probability=0.8)
    ```
    """

    def __init__(self, layer: layers.Layer, probability: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.layer = layer
        self.probability = float(probability)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training or self.probability == 0.0:
            return images
        transformed = self.layer(images, training=True)
        if self.probability == 1.0:
            return transformed
        batched = len(images.shape) == 4
        batch = ops.shape(images)[0] if batched else 1
        coin = keras.random.uniform((batch, 1, 1, 1), seed=self.generator) < self.probability
        if not batched:
            coin = coin[0]
        return ops.where(coin, ops.cast(transformed, images.dtype), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"layer": keras.saving.serialize_keras_object(self.layer), "probability": self.probability,
             "seed": self.seed}
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="kd_keras")
class RandomResizedCrop(layers.Layer):
    """SimCLR / Inception random resized crop: a crop of random area and aspect ratio, resized to the input size.

    Per example, the crop covers a fraction ``U(*area)`` of the image with aspect ratio ``exp(U(log r0, log r1))``
    (sides clipped to the image), at a uniformly random position; it is resampled bilinearly to the input size
    with one affine transform per example (``keras.ops.image.affine_transform``), so a batch needs no loop.

    Args:
        area: range of the crop area as a fraction of the image.
        aspect_ratio: range of width / height of the crop.
        seed: seed.

    Example:

    ```python
    crops = RandomResizedCrop(area=(0.08, 1.0), seed=0)(images, training=True)  # same shape as images
    ```
    """

    def __init__(self, area=(0.08, 1.0), aspect_ratio=(3 / 4, 4 / 3), seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < area[0] <= area[1] <= 1.0:
            raise ValueError(f"area must satisfy 0 < low <= high <= 1, got {area}")
        if not 0.0 < aspect_ratio[0] <= aspect_ratio[1]:
            raise ValueError(f"aspect_ratio must satisfy 0 < low <= high, got {aspect_ratio}")
        self.area = tuple(float(a) for a in area)
        self.aspect_ratio = tuple(float(r) for r in aspect_ratio)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        batched = len(images.shape) == 4
        x = images if batched else images[None]
        batch = ops.shape(x)[0]
        height = ops.cast(ops.shape(x)[1], "float32")
        width = ops.cast(ops.shape(x)[2], "float32")
        area = keras.random.uniform((batch,), *self.area, seed=self.generator)
        log_ratio = keras.random.uniform(
            (batch,), math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1]), seed=self.generator
        )
        ratio = ops.exp(log_ratio)
        # Crop sides as fractions of the image sides (an image-relative aspect ratio, like torchvision on squares).
        crop_w = ops.minimum(ops.sqrt(area * ratio), 1.0)
        crop_h = ops.minimum(ops.sqrt(area / ratio), 1.0)
        offset_x = keras.random.uniform((batch,), seed=self.generator) * (1.0 - crop_w)
        offset_y = keras.random.uniform((batch,), seed=self.generator) * (1.0 - crop_h)
        zeros = ops.zeros_like(crop_w)
        # Output pixel (x, y) samples input (crop_w * x + offset_x * W, crop_h * y + offset_y * H).
        transform = ops.stack(
            [crop_w, zeros, offset_x * width, zeros, crop_h, offset_y * height, zeros, zeros], axis=1
        )
        out = ops.image.affine_transform(
            ops.cast(x, "float32"), transform, interpolation="bilinear", fill_mode="nearest"
        )
        out = ops.cast(out, images.dtype)
        return out if batched else out[0]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"area": self.area, "aspect_ratio": self.aspect_ratio, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="kd_keras")
class ClipPixels(layers.Layer):
    """Clips to [0, 255] so every augmenter's output stays in the models' input range.

    Example:

    ```python
    ClipPixels()(images)
    ```
    """

    def call(self, images):
        return ops.clip(images, VALUE_RANGE[0], VALUE_RANGE[1])

    def compute_output_shape(self, input_shape):
        return input_shape


def build_augmenter(
    flip: str | None = "horizontal_and_vertical",
    rotation_degrees: float = 15.0,
    vertical_shift: float = 0.1,
    horizontal_shift: float = 0.0,
    zoom: float = 0.0,
    brightness: float = 0.1,
    contrast: float = 0.1,
    fill_mode: str = "constant",
    seed: int | None = None,
    name: str = "augmenter",
) -> keras.Sequential:
    """Builds the supervised augmentation pipeline from Keras 3 preprocessing layers.

    Each argument set to zero / ``None`` leaves its layer out. Layers are active only with ``training=True``.

    Args:
        flip: ``"horizontal"`` (column flip), ``"vertical"`` (row flip), ``"horizontal_and_vertical"`` (000's
            row- and column-wise flips, each independent) or ``None``. For OCT B-scans use ``"horizontal"``:
            an upside-down retina never occurs.
        rotation_degrees: maximum absolute rotation in degrees (002: 15).
        vertical_shift: maximum vertical translation as a fraction of the height (002's vertical shift; moves a
            retina up or down the B-scan).
        horizontal_shift: maximum horizontal translation as a fraction of the width.
        zoom: maximum zoom in or out as a fraction.
        brightness: maximum brightness change as a fraction of the [0, 255] range.
        contrast: maximum contrast change (factor in ``[1 - contrast, 1 + contrast]``).
        fill_mode: how geometric layers fill pixels from outside the image; ``"constant"`` (black, matching the
            dark surroundings of B-scans and fundus photographs), ``"reflect"``, ``"nearest"``, ``"wrap"``.
        seed: base seed; ``None`` for non-reproducible draws.
        name: name of the Sequential.

    Returns:
        ``keras.Sequential`` mapping float [0, 255] images to float [0, 255] images of the same shape.

    Example:

    ```python
    augmenter = build_augmenter(flip="horizontal", rotation_degrees=15, vertical_shift=0.1, seed=42)
    augmented = augmenter(images, training=True)
    ```
    """
    stack: list[layers.Layer] = []
    if flip not in (None, "horizontal", "vertical", "horizontal_and_vertical"):
        raise ValueError(f"flip must be None, 'horizontal', 'vertical' or 'horizontal_and_vertical', got {flip!r}")
    # One layer per axis: Keras' "horizontal_and_vertical" flips both axes on the same coin, giving only two of
    # the four flip states.
    if flip in ("horizontal", "horizontal_and_vertical"):
        stack.append(layers.RandomFlip("horizontal", seed=_seed(seed, 0)))
    if flip in ("vertical", "horizontal_and_vertical"):
        stack.append(layers.RandomFlip("vertical", seed=_seed(seed, 6)))
    if rotation_degrees:
        stack.append(
            layers.RandomRotation(abs(rotation_degrees) / 360.0, fill_mode=fill_mode, seed=_seed(seed, 1))
        )
    if vertical_shift or horizontal_shift:
        stack.append(
            layers.RandomTranslation(
                vertical_shift, horizontal_shift, fill_mode=fill_mode, seed=_seed(seed, 2)
            )
        )
    if zoom:
        stack.append(layers.RandomZoom(zoom, fill_mode=fill_mode, seed=_seed(seed, 3)))
    if brightness:
        stack.append(layers.RandomBrightness(brightness, value_range=VALUE_RANGE, seed=_seed(seed, 4)))
    if contrast:
        stack.append(layers.RandomContrast(contrast, value_range=VALUE_RANGE, seed=_seed(seed, 5)))
    stack.append(ClipPixels())
    return keras.Sequential(stack, name=name)


def build_simclr_augmenter(
    channels: int = 3,
    image_size: int | None = None,
    strength: float = 1.0,
    crop_area: tuple[float, float] = (0.08, 1.0),
    jitter_probability: float = 0.8,
    grayscale_probability: float = 0.2,
    blur_probability: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    seed: int | None = None,
    name: str = "simclr_augmenter",
) -> keras.Sequential:
    """Builds SimCLR's view augmentation (Chen et al. 2020, appendix A), used by study 003.

    Random resized crop (area in ``crop_area``, aspect ratio 3/4 to 4/3) and a column flip; with probability
    ``jitter_probability`` colour jitter of brightness, contrast and saturation ``0.8 * strength`` and hue
    ``0.2 * strength`` (SimCLR's torchvision values, mapped onto Keras' factors); random grey with probability
    ``grayscale_probability``; with probability
    ``blur_probability`` a Gaussian blur with sigma in ``blur_sigma`` and a kernel about 10% of the image side.
    For one-channel images saturation, hue and grey are left out. Keras' blur layer draws one sigma per batch
    (per example in SimCLR); the per-example on/off choice is kept.

    Args:
        channels: 1 or 3 input channels.
        image_size: image side used to size the blur kernel (10% of it, odd, at least 3); ``None`` gives 3.
        strength: colour distortion strength ``s`` (SimCLR uses 1.0 on ImageNet, 0.5 on CIFAR-10).
        crop_area: range of the crop area fraction.
        jitter_probability: chance of colour jitter per example.
        grayscale_probability: chance of converting an RGB example to grey.
        blur_probability: chance of blur per example (0 turns blur off).
        blur_sigma: range of the blur's standard deviation in pixels.
        seed: base seed.
        name: name of the Sequential.

    Example:

    ```python
    augmenter = build_simclr_augmenter(channels=3, image_size=96, strength=1.0, seed=0)
    view1, view2 = two_views(images, augmenter)
    ```
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    stack: list[layers.Layer] = [
        RandomResizedCrop(area=crop_area, seed=_seed(seed, 10)),
        layers.RandomFlip("horizontal", seed=_seed(seed, 11)),
    ]
    if strength > 0 and jitter_probability > 0:
        # Keras' factors differ from torchvision's: brightness is additive (a fraction of the range), so
        # +-0.4 s of 255 matches SimCLR's multiplicative [1 - 0.8 s, 1 + 0.8 s] on a mid-grey pixel; contrast is
        # the same (x - mean) * f + mean; saturation maps 0.5 to "unchanged"; a hue factor h shifts by +-h / 2.
        colour = {"brightness_factor": min(1.0, 0.4 * strength), "contrast_factor": 0.8 * strength}
        if channels == 3:
            colour["saturation_factor"] = (max(0.0, 0.5 - 0.4 * strength), min(1.0, 0.5 + 0.4 * strength))
            colour["hue_factor"] = min(1.0, 0.4 * strength)
        jitter = layers.RandomColorJitter(value_range=VALUE_RANGE, seed=_seed(seed, 12), **colour)
        stack.append(RandomApply(jitter, jitter_probability, seed=_seed(seed, 13)))
    if channels == 3 and grayscale_probability > 0:
        stack.append(layers.RandomGrayscale(factor=grayscale_probability, seed=_seed(seed, 14)))
    if blur_probability > 0:
        kernel = 3 if image_size is None else max(3, int(round(0.1 * image_size)) // 2 * 2 + 1)
        blur = layers.RandomGaussianBlur(
            factor=(1.0, 1.0), kernel_size=kernel, sigma=blur_sigma, value_range=VALUE_RANGE, seed=_seed(seed, 15)
        )
        stack.append(RandomApply(blur, blur_probability, seed=_seed(seed, 16)))
    stack.append(ClipPixels())
    return keras.Sequential(stack, name=name)


def two_views(images, augmenter: keras.Layer):
    """Two independently augmented views of the same images (the augmenter's seed state advances between them).

    Args:
        images: float [0, 255] batch ``(N, H, W, C)`` or image ``(H, W, C)``.
        augmenter: e.g. :func:`build_simclr_augmenter`.

    Returns:
        ``(view1, view2)``, each shaped like ``images``.

    Example:

    ```python
    augmenter = build_simclr_augmenter(seed=0)
    dataset = dataset.map(lambda batch: dict(zip(("image", "view2"), two_views(batch["image"], augmenter))))
    ```
    """
    return augmenter(images, training=True), augmenter(images, training=True)
