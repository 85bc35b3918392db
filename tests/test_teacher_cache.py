"""Teacher-output cache: values against a direct ``predict``, reuse without any teacher call, key
invalidation, sharded parts + merge, kill-and-resume, tf.data lookup by index, pseudo-label helpers, CLI.

A tiny Keras teacher on 32 px images generated in a temporary folder keeps the whole file to a few seconds.
"""

from __future__ import annotations

import os
import shutil

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import pipeline, schema, sources
from kd_keras.data.preprocess import ImageReadError, PreprocessConfig, load_image
from kd_keras.engine import teacher_cache as tc
from kd_keras.engine.teacher_cache.build import _Teacher
from kd_keras.engine.distiller import teacher_tap_key
from kd_keras.models import with_taps

NUM_IMAGES = 22
SHARD = 6  # 22 images -> shards of 6, 6, 6, 4
NUM_SHARDS = 4
BATCH = 4
CONFIG = PreprocessConfig(image_size=(32, 32), channels=3)
TAPS = {"stage1": "float16", "features": "pooled"}


def tiny_teacher(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(image)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="stage1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    logits = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(image, logits, name=f"tiny_teacher_{seed}")


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        # Sizes other than 32 px so the resize in the preprocessing matters.
        cv2.imwrite(str(folder / f"img{i:03d}.png"), rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    return str(folder)


@pytest.fixture(scope="module")
def records(pool_dir):
    return sources.from_folder(pool_dir)


@pytest.fixture(scope="module")
def teacher() -> keras.Model:
    return tiny_teacher(1)


@pytest.fixture(scope="module")
def reference(teacher, records):
    """What the cache must hold: the teacher's own predict over the pool, in order, and its taps."""
    images = np.stack([load_image(p, CONFIG) for p in records.paths])
    logits = teacher.predict(images, batch_size=BATCH, verbose=0)
    _, stage1, features = with_taps(teacher, list(TAPS)).predict(images, batch_size=BATCH, verbose=0)
    return {"images": images, "logits": logits, "stage1": stage1, "features": features}


def build(teacher, pool, out, **kwargs):
    options = {"shard_size": SHARD, "batch_size": BATCH, "taps": TAPS, **kwargs}
    return tc.build_teacher_cache(teacher, pool, CONFIG, out, **options)


@pytest.fixture
def count_teacher_calls(monkeypatch):
    """Counts every real batch inference of any Keras model (the teacher's only way to run in a build)."""
    calls = {"n": 0}
    original = keras.Model.predict_on_batch

    def counting(self, x):
        calls["n"] += 1
        return original(self, x)

    monkeypatch.setattr(keras.Model, "predict_on_batch", counting)
    return calls


def forbid_teacher(monkeypatch):
    """Any attempt to load, build or run a teacher raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was used although the cache should have been reused")

    monkeypatch.setattr(keras.Model, "predict_on_batch", refuse)
    monkeypatch.setattr(keras.Model, "predict", refuse)
    monkeypatch.setattr(keras.models, "load_model", refuse)
    monkeypatch.setattr(_Teacher, "_build", refuse)


def test_cached_outputs_equal_direct_predict(teacher, records, reference, tmp_path, count_teacher_calls):
    cache = build(teacher, records, tmp_path)
    assert cache.path.parent == tmp_path and cache.path.name == cache.key.digest
    assert cache.num_examples == NUM_IMAGES and cache.num_logits == 3
    np.testing.assert_allclose(np.asarray(cache.logits), reference["logits"], rtol=1e-6, atol=1e-6)
    # float16 map: the teacher's tap rounded to half precision; pooled: its spatial mean.
    stage1 = np.asarray(cache.features("stage1"))
    assert stage1.dtype == np.float16 and stage1.shape == reference["stage1"].shape
    np.testing.assert_allclose(stage1, reference["stage1"].astype(np.float16), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(
        cache.lookup_features("features", np.arange(NUM_IMAGES)), reference["features"], rtol=1e-5, atol=1e-6
    )
    # Shards on disk: fixed-size .npy files, memory-mapped on read.
    shard_rows = [
        np.load(cache.path / f"logits.{s:05d}.npy", mmap_mode="r").shape[0] for s in range(NUM_SHARDS)
    ]
    assert shard_rows == [6, 6, 6, 4]
    assert isinstance(cache.logits._shard(0), np.memmap)
    # One teacher call per batch: ceil(6/4) * 3 + ceil(4/4) = 7.
    assert count_teacher_calls["n"] == 7 == cache.build_stats["teacher_batches"]
    # Lookup by index, any order and shape; negative indices as NumPy; out of range is an error.
    rows = np.array([[21, 0], [7, 6]])
    np.testing.assert_allclose(cache.lookup(rows), reference["logits"][rows], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.logits[-1], reference["logits"][-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.logits[4:9], reference["logits"][4:9], rtol=1e-6, atol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        cache.lookup([NUM_IMAGES])
    # A lookup maps only the shards it reads (memory does not grow with the pool).
    reopened = tc.TeacherCache.open(cache.path / "manifest.json")
    reopened.lookup([13, 12])
    assert sorted(reopened.logits._maps) == [2]


def test_reuse_makes_no_teacher_call(teacher, records, reference, tmp_path, monkeypatch):
    first = build(teacher, records, tmp_path)
    saved = tmp_path / "teacher.keras"
    teacher.save(saved)
    from_file = build(str(saved), records, tmp_path)
    assert (
        from_file.key.digest != first.key.digest
    )  # a file and in-memory weights are fingerprinted differently
    forbid_teacher(monkeypatch)
    again = build(teacher, records, tmp_path)
    again_file = build(str(saved), records, tmp_path)
    assert again.path == first.path and again_file.path == from_file.path
    assert again.build_stats["shards_computed"] == 0 and again.build_stats["shards_reused"] == NUM_SHARDS
    np.testing.assert_array_equal(np.asarray(again.logits), np.asarray(first.logits))
    np.testing.assert_allclose(np.asarray(again_file.logits), reference["logits"], rtol=1e-6, atol=1e-6)


def test_key_changes_invalidate(teacher, records, pool_dir, tmp_path):
    base = build(teacher, records, tmp_path)
    other_teacher = build(tiny_teacher(2), records, tmp_path)
    clahe = tc.build_teacher_cache(
        teacher,
        records,
        PreprocessConfig((32, 32), clahe=True),
        tmp_path,
        shard_size=SHARD,
        batch_size=BATCH,
        taps=TAPS,
    )
    logits_only = build(teacher, records, tmp_path, taps=None)
    reordered = build(teacher, list(records.paths)[::-1], tmp_path)
    # The same files, one with a new modification time: the data key changes.
    copy = tmp_path / "pool_copy"
    shutil.copytree(pool_dir, copy)
    copied = sources.from_folder(copy)
    same_content = build(teacher, copied, tmp_path)
    assert (
        same_content.key.data == base.key.data
    )  # paths are relative to the root: a moved pool keeps its key
    touched = copied.paths[3]
    os.utime(touched, ns=(os.stat(touched).st_atime_ns, os.stat(touched).st_mtime_ns + 10**9))
    retouched = build(teacher, sources.from_folder(copy), tmp_path)

    changed = [other_teacher, clahe, logits_only, reordered, retouched]
    digests = {base.key.digest} | {c.key.digest for c in changed}
    assert len(digests) == 6
    for cache in changed:
        assert cache.build_stats["shards_computed"] == NUM_SHARDS and cache.build_stats["shards_reused"] == 0
    assert (
        other_teacher.key.teacher != base.key.teacher
        and clahe.key.preprocessing != base.key.preprocessing
        and retouched.key.data != base.key.data
        and reordered.key.data != base.key.data
    )
    assert not np.allclose(np.asarray(other_teacher.logits), np.asarray(base.logits))
    np.testing.assert_allclose(
        np.asarray(reordered.logits), np.asarray(base.logits)[::-1], rtol=1e-6, atol=1e-6
    )
    # A caller-supplied data fingerprint replaces the file listing.
    versioned = build(teacher, records, tmp_path, data_fingerprint="pool-v1")
    assert versioned.key.data == "caller:pool-v1"


def test_parts_and_merge_equal_unsharded(teacher, records, tmp_path, count_teacher_calls):
    whole = build(teacher, records, tmp_path / "whole")
    shared = tmp_path / "shared"
    parts = [
        tc.build_cache_part(
            teacher, records, CONFIG, shared, (i, 3), shard_size=SHARD, batch_size=BATCH, taps=TAPS
        )
        for i in range(3)
    ]
    # 4 shards over 3 parts: contiguous runs [0], [1], [2, 3].
    assert [list(p.shards) for p in parts] == [[0], [1], [2, 3]]
    with pytest.raises(tc.IncompleteCacheError, match="no manifest"):
        tc.TeacherCache.open(parts[0].path)
    merged = tc.merge_teacher_cache(parts[0].path)
    assert merged.key == whole.key and merged.manifest["parts"] == 3
    for name in ["logits", *TAPS]:
        values = np.asarray(merged.logits if name == "logits" else merged.features(name))
        expected = np.asarray(whole.logits if name == "logits" else whole.features(name))
        np.testing.assert_array_equal(values, expected)

    # One folder per worker: the merged manifest points at the other folders' shards, nothing is copied.
    workers = [tmp_path / f"worker{i}" for i in range(2)]
    for i, folder in enumerate(workers):
        tc.build_cache_part(
            teacher, records, CONFIG, folder, f"{i}/2", shard_size=SHARD, batch_size=BATCH, taps=TAPS
        )
    digest = whole.key.digest
    with pytest.raises(tc.CacheError, match=r"parts missing: 1/2"):
        tc.merge_teacher_cache(workers[0] / digest)
    gathered = tc.merge_teacher_cache(
        workers[0] / digest, part_dirs=[workers[1] / digest], expected_key=whole.key
    )
    assert gathered.manifest["shards"][3]["files"]["logits"] == f"../../worker1/{digest}/logits.00003.npy"
    assert not (workers[0] / digest / "logits.00003.npy").exists()
    np.testing.assert_array_equal(np.asarray(gathered.logits), np.asarray(whole.logits))
    # Parts of another key are refused.
    with pytest.raises(tc.CacheError, match="another cache"):
        tc.merge_teacher_cache(
            tmp_path / "elsewhere",
            part_dirs=[workers[1] / digest],
            expected_key=tc.CacheKey("x", "y", "z", "logits"),
        )


def test_kill_then_resume(teacher, records, tmp_path, count_teacher_calls):
    reference_cache = build(teacher, records, tmp_path / "reference")
    written = []

    def killed_after_two(shard):
        written.append(shard)
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        build(teacher, records, tmp_path, on_shard_done=killed_after_two)
    folder = tmp_path / reference_cache.key.digest
    with pytest.raises(tc.IncompleteCacheError, match="2 of 4 logit shards"):
        tc.TeacherCache.open(folder)
    # A half-written temporary file of the killed process is ignored and cleaned up.
    (folder / "logits.00002.npy.tmp99999").write_bytes(b"\x93NUMPY garbage")
    before = count_teacher_calls["n"]
    resumed = build(teacher, records, tmp_path)
    assert resumed.build_stats["shards_reused"] == 2 and resumed.build_stats["shards_computed"] == 2
    assert count_teacher_calls["n"] - before == 3  # shard 2: 2 batches, shard 3: 1 batch
    assert not list(folder.glob("*.tmp*"))
    for name in ["logits", *TAPS]:
        values = np.asarray(resumed.logits if name == "logits" else resumed.features(name))
        expected = np.asarray(reference_cache.logits if name == "logits" else reference_cache.features(name))
        np.testing.assert_array_equal(values, expected)


def test_lookup_by_index_in_tf_data(teacher, records, reference, tmp_path):
    cache = build(teacher, records, tmp_path)
    stream = pipeline.make_dataset(records, CONFIG, batch_size=5, shuffle=True, seed=3)
    stream = tc.with_cached_teacher(stream, cache, taps=["features"])
    assert stream.element_spec[schema.TEACHER_LOGITS].shape.as_list() == [None, 3]
    seen = []
    for batch in stream:
        index = batch[schema.INDEX].numpy()
        seen.extend(index.tolist())
        np.testing.assert_allclose(
            batch[schema.TEACHER_LOGITS].numpy(), reference["logits"][index], rtol=1e-6, atol=1e-6
        )
        np.testing.assert_allclose(
            batch[teacher_tap_key("features")].numpy(), reference["features"][index], rtol=1e-5, atol=1e-6
        )
    assert sorted(seen) == list(range(NUM_IMAGES)) and seen != list(range(NUM_IMAGES))  # shuffled, complete
    # Unbatched elements (scalar index) and the data layer's own teacher_logits= argument.
    single = tc.with_cached_teacher(
        tf.data.Dataset.from_tensor_slices({schema.INDEX: np.array([9, 2], np.int64)}), cache
    )
    np.testing.assert_allclose(
        np.stack([e[schema.TEACHER_LOGITS].numpy() for e in single]),
        reference["logits"][[9, 2]],
        rtol=1e-6,
        atol=1e-6,
    )
    direct = pipeline.make_dataset(records, CONFIG, batch_size=8, shuffle=False, teacher_logits=cache.logits)
    batch = next(iter(direct))
    np.testing.assert_allclose(
        batch[schema.TEACHER_LOGITS].numpy(), reference["logits"][:8], rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match="integer 'index'"):
        tc.with_cached_teacher(tf.data.Dataset.from_tensor_slices({schema.IMAGE: np.zeros((2, 4))}), cache)


def test_bad_file_raises_or_is_listed(teacher, pool_dir, tmp_path):
    folder = tmp_path / "pool"
    shutil.copytree(pool_dir, folder)
    broken = folder / "img005.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated PNG
    with pytest.raises(ImageReadError, match="img005.png"):
        build(teacher, sources.from_folder(folder), tmp_path / "cache")
    cache = build(teacher, sources.from_folder(folder), tmp_path / "cache", on_bad_file="nan")
    assert cache.bad_indices.tolist() == [5]
    assert np.isnan(cache.lookup([5])).all() and np.isfinite(cache.lookup([4, 6])).all()
    assert cache.manifest["bad_examples"][0]["example"].endswith("img005.png")


def test_pseudo_label_helpers_hand_computed():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    assert tc.argmax_pseudo_labels(logits).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="threshold_pseudo_labels"):
        tc.argmax_pseudo_labels(np.zeros((2, 1)))
    # sigmoid(2) = 0.881, sigmoid(-0.5) = 0.378, sigmoid(0) = 0.5 (not above 0.5), sigmoid(0.1) = 0.525.
    assert tc.threshold_pseudo_labels(np.array([[2.0], [-0.5], [0.0], [0.1]])).tolist() == [
        1.0,
        0.0,
        0.0,
        1.0,
    ]
    assert tc.threshold_pseudo_labels(np.array([[2.0, -0.5]]), threshold=0.8).tolist() == [[1.0, 0.0]]
    # softmax([0, ln 3]) = [1/4, 3/4]; at T = 2: softmax([0, ln 3 / 2]) = [1 / (1 + sqrt 3), sqrt 3 / (1 +
    # sqrt 3)].
    np.testing.assert_allclose(tc.soft_targets(np.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], rtol=1e-6)
    root3 = np.sqrt(3.0)
    np.testing.assert_allclose(
        tc.soft_targets(np.array([[0.0, np.log(3.0)]]), temperature=2.0),
        [[1 / (1 + root3), root3 / (1 + root3)]],
        rtol=1e-6,
    )
    # One logit: sigmoid(z / T); sigmoid(ln 3) = 3/4, and at T = 2 it equals the two-logit form above.
    np.testing.assert_allclose(tc.soft_targets(np.array([[np.log(3.0)]])), [[0.75]], rtol=1e-6)
    np.testing.assert_allclose(
        tc.soft_targets(np.array([[np.log(3.0)]]), 2.0), [[root3 / (1 + root3)]], rtol=1e-6
    )
    # Large logits stay finite.
    assert np.isfinite(tc.soft_targets(np.array([[1000.0, -1000.0]]), 0.5)).all()


def test_cli_shards_merge_and_errors(teacher, pool_dir, records, tmp_path, capsys):
    saved = tmp_path / "teacher.keras"
    teacher.save(saved)
    common = [
        "--teacher",
        str(saved),
        "--pool",
        pool_dir,
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "cli"),
        "--shard-size",
        str(SHARD),
        "--batch-size",
        str(BATCH),
    ]
    assert tc.main([*common, "--shard", "0/2"]) == 0
    assert tc.main([*common, "--merge"]) == 2
    assert "parts missing: 1/2" in capsys.readouterr().err
    assert tc.main([*common, "--shard", "1/2"]) == 0
    assert tc.main([*common, "--merge"]) == 0
    expected = tc.build_teacher_cache(
        str(saved), records, CONFIG, tmp_path / "api", shard_size=SHARD, batch_size=BATCH
    )
    merged = tc.TeacherCache.open(tmp_path / "cli" / expected.key.digest)
    np.testing.assert_array_equal(np.asarray(merged.logits), np.asarray(expected.logits))
    assert tc.main([*common, "--shard", "2/2"]) == 2
    assert "0 <= i < n" in capsys.readouterr().err
    assert tc.main([*common[:5], "64", *common[6:]]) == 2  # preprocessing not the teacher's input
    assert "teacher takes inputs of shape (32, 32, 3)" in capsys.readouterr().err


def test_float16_overflow_is_refused(records, tmp_path):
    image = keras.Input((32, 32, 3), name="image")
    big = keras.layers.Rescaling(1e4, name="stage1")(image)  # pixels up to 2.55e6: beyond float16's 65504
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(big))
    loud = keras.Model(image, logits)
    with pytest.raises(tc.CacheError, match="overflow float16"):
        build(loud, records, tmp_path, taps=["stage1"])
    cache = build(loud, records, tmp_path, taps={"stage1": "float32"})
    assert cache.features("stage1").dtype == np.float32
