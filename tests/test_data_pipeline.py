"""tf.data pipelines: schema dicts whose image, label, mask and index stay aligned under parallel decode and
shuffling; seeded per-epoch permutations; the labeled/unlabeled mixed stream at 002's fractions; cached teacher
logits read by index from a memmap; cache, augmentation, views, array sources; a Distiller step on the stream."""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import pipeline, schema, sources, tasks
from kd_keras.data.augment import build_augmenter
from kd_keras.data.preprocess import PreprocessConfig, preprocess
from kd_keras.data.records import Records

SIZE = 16
CONFIG = PreprocessConfig((SIZE, SIZE), channels=1)


def _value(k: int) -> int:
    return 5 + 5 * k  # distinct grey level per file, so a decoded image says which file it came from


def _write(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((SIZE + 4, SIZE + 2), value, np.uint8))  # resized by the pipeline


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Records, Records]:
    root = tmp_path_factory.mktemp("pipeline")
    k = 0
    for label, name in enumerate(("CNV", "DME", "NORMAL")):
        for n in range(6 + 2 * label):
            _write(root / "labeled" / name / f"{name}-{100 + n}-{k}.png", _value(k))
            k += 1
    for n in range(20):
        _write(root / "pool" / f"OCT-{500 + n // 2}-{n}.png", _value(k))
        k += 1
    return sources.from_class_folders(root / "labeled"), sources.from_folder(root / "pool")


def _expected_value(records: Records, index: int) -> float:
    return float(cv2.imread(records.paths[index], cv2.IMREAD_GRAYSCALE).mean())


def _epoch(dataset) -> dict[str, np.ndarray]:
    batches = list(dataset.as_numpy_iterator())
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def test_batches_are_schema_dicts_with_aligned_fields(data):
    labeled, _ = data
    stream = pipeline.make_dataset(labeled, CONFIG, batch_size=5, seed=0)
    spec = stream.element_spec
    assert set(spec) == {schema.IMAGE, schema.LABEL, schema.LABELED, schema.INDEX}
    assert spec[schema.IMAGE].shape.as_list() == [None, SIZE, SIZE, 1] and spec[schema.IMAGE].dtype == tf.float32
    assert spec[schema.LABEL].dtype == tf.int32 and spec[schema.LABELED].dtype == tf.float32
    assert spec[schema.INDEX].dtype == tf.int64
    epoch = _epoch(stream)
    assert sorted(epoch[schema.INDEX].tolist()) == list(range(len(labeled)))  # each example exactly once
    assert epoch[schema.INDEX].tolist() != list(range(len(labeled)))  # shuffled
    for image, label, index in zip(epoch[schema.IMAGE], epoch[schema.LABEL], epoch[schema.INDEX], strict=True):
        np.testing.assert_allclose(image, _expected_value(labeled, index), atol=0.5)
        assert label == labeled.labels[index]
    assert np.all(epoch[schema.LABELED] == 1.0)


def test_permutation_changes_per_epoch_and_replays_per_seed(data):
    labeled, _ = data
    stream = pipeline.make_dataset(labeled, CONFIG, batch_size=8, seed=3)
    first, second = (_epoch(stream)[schema.INDEX].tolist() for _ in range(2))
    assert first != second and sorted(first) == sorted(second)
    again = pipeline.make_dataset(labeled, CONFIG, batch_size=8, seed=3)
    assert _epoch(again)[schema.INDEX].tolist() == first
    other = pipeline.make_dataset(labeled, CONFIG, batch_size=8, seed=4)
    assert _epoch(other)[schema.INDEX].tolist() != first
    ordered = pipeline.make_dataset(labeled, CONFIG, batch_size=8, shuffle=False)
    assert _epoch(ordered)[schema.INDEX].tolist() == list(range(len(labeled)))
    shards = [_epoch(pipeline.make_dataset(labeled, CONFIG, batch_size=8, seed=3, shard=(2, k)))[schema.INDEX]
              for k in range(2)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(24)) and len(shards[0]) == 12
    assert shards[0].tolist() == first[0::2]  # sharded before decoding, from the same permutation
    repeated = pipeline.make_dataset(labeled, CONFIG, batch_size=8, seed=3, repeat=True, drop_remainder=True)
    indices = np.concatenate([b[schema.INDEX] for b in repeated.take(6).as_numpy_iterator()])
    assert len(indices) == 48 and sorted(indices[:24].tolist()) == list(range(24))


@pytest.mark.parametrize("fraction", pipeline.UNLABELED_FRACTIONS)
def test_mixed_stream_at_each_unlabeled_fraction(data, tmp_path, fraction):
    labeled, pool = data
    combined = pipeline.mixed_records(labeled, pool)
    logits = np.lib.format.open_memmap(tmp_path / "teacher_logits.npy", mode="w+", dtype=np.float32,
                                       shape=(len(combined), 3))
    logits[:] = np.random.default_rng(0).normal(size=logits.shape)
    logits.flush()
    cached = np.load(tmp_path / "teacher_logits.npy", mmap_mode="r")
    stream = pipeline.make_mixed_dataset(labeled, pool, CONFIG, batch_size=7, unlabeled_fraction=fraction,
                                         seed=1, teacher_logits=cached)
    epoch = _epoch(stream)
    chosen = round(fraction * len(pool))
    assert len(epoch[schema.INDEX]) == len(labeled) + chosen
    is_pool = epoch[schema.INDEX] >= len(labeled)
    assert int(is_pool.sum()) == chosen and np.array_equal(epoch[schema.LABELED], (~is_pool).astype(np.float32))
    assert np.all(epoch[schema.LABEL][is_pool] == 0)  # placeholder label for the teacher to replace
    np.testing.assert_array_equal(epoch[schema.TEACHER_LOGITS], np.asarray(cached)[epoch[schema.INDEX]])
    for image, index in zip(epoch[schema.IMAGE], epoch[schema.INDEX], strict=True):
        np.testing.assert_allclose(image, _expected_value(combined, index), atol=0.5)


def test_fraction_selection_is_nested_and_seeded():
    picks = [set(pipeline.select_fraction(400, f, seed=2).tolist()) for f in pipeline.UNLABELED_FRACTIONS]
    assert [len(p) for p in picks] == [0, 100, 200, 300, 400]
    assert all(small <= large for small, large in zip(picks, picks[1:], strict=False))
    assert picks[1] != set(pipeline.select_fraction(400, 0.25, seed=3).tolist())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipeline.select_fraction(10, 1.5)


def test_cache_in_memory_and_in_files(data, tmp_path):
    labeled, _ = data
    for cache in (True, tmp_path / "cache"):
        stream = pipeline.make_dataset(labeled, CONFIG, batch_size=6, seed=0, cache=cache)
        first, second = _epoch(stream), _epoch(stream)
        assert sorted(first[schema.INDEX].tolist()) == sorted(second[schema.INDEX].tolist()) == list(range(24))
        for epoch in (first, second):
            means = epoch[schema.IMAGE].mean(axis=(1, 2, 3))
            expected = [_expected_value(labeled, i) for i in epoch[schema.INDEX]]
            np.testing.assert_allclose(means, expected, atol=0.5)
    assert any(p.name.startswith("cache") for p in tmp_path.iterdir())


def test_augmentation_views_and_label_types(data):
    labeled, _ = data
    binary = tasks.normal_vs_abnormal(labeled)
    augmenter = build_augmenter(flip="horizontal", rotation_degrees=0, vertical_shift=0, brightness=0.3,
                                contrast=0, seed=0)
    view2 = build_augmenter(flip=None, rotation_degrees=0, vertical_shift=0, brightness=0.3, contrast=0, seed=1)
    stream = pipeline.make_dataset(binary, CONFIG, batch_size=24, seed=0, augmenter=augmenter,
                                   view2_augmenter=view2, float_labels=True)
    batch = next(iter(stream.as_numpy_iterator()))
    clean = np.asarray([_expected_value(binary, i) for i in batch[schema.INDEX]])
    assert batch[schema.LABEL].dtype == np.float32
    np.testing.assert_array_equal(batch[schema.LABEL], binary.labels[batch[schema.INDEX]].astype(np.float32))
    for key in (schema.IMAGE, schema.VIEW2):
        assert batch[key].shape == (24, SIZE, SIZE, 1) and batch[key].min() >= 0 and batch[key].max() <= 255
        shift = batch[key].mean(axis=(1, 2, 3)) - clean
        assert np.abs(shift).max() > 1.0  # brightness jitter changed the images
    assert not np.allclose(batch[schema.IMAGE], batch[schema.VIEW2])


def test_array_source_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / "chestmnist.npz"
    np.savez(path, train_images=images, train_labels=np.asarray([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]]))
    records = sources.from_npz(path)
    config = PreprocessConfig((SIZE, SIZE), channels=3)
    epoch = _epoch(pipeline.make_dataset(records, config, batch_size=4, shuffle=False))
    assert epoch[schema.LABEL].dtype == np.float32 and epoch[schema.LABEL].shape == (5, 2)
    np.testing.assert_array_equal(epoch[schema.LABEL], records.labels)
    for k in range(5):
        np.testing.assert_allclose(epoch[schema.IMAGE][k], preprocess(images[k], config))


# Dropping bad files makes the stream's length unknown, so Keras warns once at the end of the first epoch.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_distiller_trains_on_the_mixed_stream_with_cached_logits(data):
    from kd_keras.engine import Distiller

    labeled, pool = data
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(2, 3, name="stage1")(h)
    features = keras.layers.GlobalAveragePooling2D(name="features")(h)
    student = keras.Model(x, keras.layers.Dense(3, name="logits")(features))
    logits = np.zeros((len(labeled) + len(pool), 3), np.float32)
    logits[:, 2] = 5.0  # the "teacher" says NORMAL for every pool image
    stream = pipeline.make_mixed_dataset(labeled, pool, CONFIG, batch_size=8, unlabeled_fraction=0.5,
                                         seed=0, teacher_logits=logits)
    distiller = Distiller(student)
    distiller.compile(keras.optimizers.SGD(0.01), objective="pseudo_label")
    history = distiller.fit(stream, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][-1])
