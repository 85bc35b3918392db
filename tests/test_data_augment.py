"""Augmentation: shapes, value range, seeding (eager and tf.data), rotation bound, SimCLR views."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data.augment import (
    RandomApply,
    RandomResizedCrop,
    build_augmenter,
    build_simclr_augmenter,
    two_views,
)


def _images(batch=4, size=32, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, size, size, channels)).astype(np.float32)


def _run_in_tf_data(augmenter, images, epochs=2):
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(len(images)).repeat(epochs)
    dataset = dataset.map(lambda batch: augmenter(batch, training=True))
    return [batch.numpy() for batch in dataset]


@pytest.mark.parametrize("channels", [1, 3])
def test_augmenter_shape_dtype_range(channels):
    images = _images(channels=channels)
    augmenter = build_augmenter(brightness=0.5, contrast=0.5, seed=0)
    out = np.asarray(augmenter(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.allclose(out, images)
    single = np.asarray(build_augmenter(seed=0)(images[0], training=True))  # a fresh one takes single images
    assert single.shape == images[0].shape
    smaller = np.asarray(augmenter(images[:3, :20, :24], training=True))  # other batch and image sizes
    assert smaller.shape == (3, 20, 24, channels)


def test_augmenter_inference_is_identity():
    images = _images()
    np.testing.assert_allclose(build_augmenter(seed=0)(images, training=False), images, atol=1e-4)


def test_seeded_augmenter_is_reproducible_in_tf_data():
    images = _images()
    first = _run_in_tf_data(build_augmenter(seed=7), images)
    again = _run_in_tf_data(build_augmenter(seed=7), images)
    other = _run_in_tf_data(build_augmenter(seed=8), images)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[0], first[1])  # a new draw every epoch
    eager = np.asarray(build_augmenter(seed=7)(images, training=True))
    np.testing.assert_allclose(eager, first[0], atol=1e-4)  # same sequence eagerly and in tf.data


def _orientation_degrees(image):
    """Angle of a bright bar from its second moments (degrees, 0 = horizontal)."""
    rows, cols = np.nonzero(image > 127)
    rows = rows - rows.mean()
    cols = cols - cols.mean()
    return math.degrees(0.5 * math.atan2(2 * (rows * cols).mean(), (cols**2).mean() - (rows**2).mean()))


def test_rotation_stays_within_bound():
    size = 65
    bar = np.zeros((size, size, 1), np.float32)
    bar[30:35, 8:57] = 255.0  # horizontal bar through the centre
    batch = np.repeat(bar[None], 64, axis=0)
    augmenter = build_augmenter(
        flip=None, rotation_degrees=15, vertical_shift=0, brightness=0, contrast=0, seed=3
    )
    out = np.asarray(augmenter(batch, training=True))[..., 0]
    angles = np.array([_orientation_degrees(image) for image in out])
    assert np.abs(angles).max() <= 15.5
    assert np.abs(angles).max() > 8  # rotation does happen, in both directions
    assert angles.min() < -3 and angles.max() > 3


def test_vertical_shift_moves_rows_only():
    image = np.zeros((1, 40, 40, 1), np.float32)
    image[0, 18:22, :] = 255.0  # a horizontal band, like a retinal layer
    batch = np.repeat(image, 32, axis=0)
    augmenter = build_augmenter(flip=None, rotation_degrees=0, vertical_shift=0.2, brightness=0, contrast=0, seed=1)
    out = np.asarray(augmenter(batch, training=True))[..., 0]
    centres = [np.nonzero(img.mean(axis=1) > 127)[0].mean() for img in out]
    shifts = np.array(centres) - 19.5
    assert np.abs(shifts).max() <= 0.2 * 40 + 0.5 and np.abs(shifts).max() > 2
    np.testing.assert_allclose(out.std(axis=2), 0, atol=1e-3)  # each row stays uniform: no horizontal move


def test_flip_only_produces_flips():
    images = _images(batch=16, size=8)
    out = np.asarray(build_augmenter(flip="horizontal_and_vertical", rotation_degrees=0, vertical_shift=0,
                                     brightness=0, contrast=0, seed=0)(images, training=True))
    kinds = set()
    for original, flipped in zip(images, out, strict=True):
        matches = [k for k, f in enumerate([lambda x: x, np.fliplr, np.flipud, lambda x: np.flipud(np.fliplr(x))])
                   if np.allclose(f(original), flipped, atol=1e-4)]
        assert matches, "output is not a flip of its input"
        kinds.add(matches[0])
    assert kinds == {0, 1, 2, 3}  # all four flip states occur


def test_random_resized_crop_is_a_zoomed_region():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = np.stack([xx * 4, yy * 4, np.full_like(xx, 100.0)], -1)[None]  # x and y encoded in channels
    layer = RandomResizedCrop(area=(0.25, 0.25), aspect_ratio=(1.0, 1.0), seed=0)
    out = np.asarray(layer(np.repeat(ramp, 8, axis=0), training=True))
    for crop in out:
        x_span = crop[:, :, 0].max() - crop[:, :, 0].min()
        y_span = crop[:, :, 1].max() - crop[:, :, 1].min()
        # A quarter of the area, square: half of each side (32 px of 64, i.e. ~126 of 252 in pixel units).
        assert 110 < x_span < 135 and 110 < y_span < 135
        assert np.all(np.diff(crop[:, :, 0], axis=1) >= -1e-3)  # not flipped or rotated
    offsets = {round(float(crop[0, 0, 0])) for crop in out}
    assert len(offsets) > 4  # random positions


def test_random_apply_probability():
    ones = np.full((2000, 2, 2, 1), 100.0, np.float32)
    layer = RandomApply(keras.layers.Lambda(lambda x: x * 0.0), probability=0.3, seed=0)
    applied = (np.asarray(layer(ones, training=True))[:, 0, 0, 0] == 0).mean()
    assert abs(applied - 0.3) < 0.05
    np.testing.assert_array_equal(layer(ones, training=False), ones)


@pytest.mark.parametrize("channels", [1, 3])
def test_simclr_two_views_differ_and_stay_in_range(channels):
    images = _images(batch=4, size=32, channels=channels)
    augmenter = build_simclr_augmenter(channels=channels, image_size=32, seed=0)
    view1, view2 = two_views(images, augmenter)
    view1, view2 = np.asarray(view1), np.asarray(view2)
    assert view1.shape == view2.shape == images.shape
    for view in (view1, view2):
        assert view.min() >= 0 and view.max() <= 255
    for k in range(len(images)):
        assert np.abs(view1[k] - view2[k]).mean() > 1.0


def test_simclr_views_in_tf_data_are_seeded():
    images = _images(batch=4, size=32)

    def views(seed):
        augmenter = build_simclr_augmenter(image_size=32, seed=seed)
        dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
        dataset = dataset.map(lambda batch: two_views(batch, augmenter))
        return [np.asarray(v) for v in next(iter(dataset))]

    a1, a2 = views(5)
    b1, b2 = views(5)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert np.abs(a1 - a2).mean() > 1.0
