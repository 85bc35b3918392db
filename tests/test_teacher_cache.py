"""Teacher-output cache: values against a direct ``predict``, reuse without any teacher call, key
invalidation, sharded parts + merge, kill-and-resume, tf.data lookup by index, decoding through the input
pipeline (grey, 16-bit), bad files, pseudo-labels (argmax and threshold), CLI (one-line errors, status 2).

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
from kd_keras.engine.distiller import teacher_tap_key
from kd_keras.engine.teacher_cache.build import _Teacher
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
    assert cache.build_stats["examples_computed_here"] == NUM_IMAGES  # one process, one replica: all of them
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


def test_build_decodes_through_the_pipeline(teacher, tmp_path):
    """Grey and 16-bit PNGs: the cached logits are the teacher's on ``make_dataset``'s own batches, and the
    decoding matches an independent expectation (16-bit v * 257 is 8-bit v; grey is grey replicated to RGB)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    colour = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "a_grey8.png"), grey)
    cv2.imwrite(str(folder / "b_grey8_as_bgr.png"), np.repeat(grey[..., None], 3, axis=2))
    cv2.imwrite(str(folder / "c_colour8.png"), colour)
    cv2.imwrite(str(folder / "d_colour16.png"), colour.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "e_grey16.png"), grey.astype(np.uint16) * 257)
    records = sources.from_folder(folder)
    assert [os.path.basename(p) for p in records.paths][3] == "d_colour16.png"
    assert cv2.imread(str(folder / "d_colour16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    cache = build(teacher, records, tmp_path / "cache", taps=None, batch_size=2)
    direct = pipeline.make_dataset(records, CONFIG, batch_size=3, shuffle=False)
    seen = []
    for batch in direct:
        index = batch[schema.INDEX].numpy()
        seen.extend(index.tolist())
        expected = np.asarray(teacher.predict_on_batch(batch[schema.IMAGE].numpy()))
        np.testing.assert_allclose(cache.lookup(index), expected, rtol=1e-5, atol=1e-5)
    assert seen == list(range(5))
    logits = np.asarray(cache.logits)
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)  # grey == grey replicated to three channels
    np.testing.assert_allclose(logits[3], logits[2], atol=1e-4)  # 16-bit keeps the 8-bit content exactly
    np.testing.assert_allclose(logits[4], logits[0], atol=1e-4)
    assert not np.allclose(logits[2], logits[0], atol=1e-3)  # and different images give different logits


def test_a_shard_of_only_bad_files_is_nan(teacher, pool_dir, tmp_path):
    bad = [tmp_path / "bad0.png", tmp_path / "bad1.png"]
    bad[0].write_bytes(b"not an image at all")
    bad[1].write_bytes(b"")
    good = os.path.join(pool_dir, "img000.png")
    cache = tc.build_teacher_cache(
        teacher, [*bad, good], CONFIG, tmp_path / "cache", shard_size=2, batch_size=4, on_bad_file="nan"
    )
    assert cache.bad_indices.tolist() == [0, 1]
    assert np.isnan(cache.lookup([0, 1])).all()
    np.testing.assert_allclose(
        cache.lookup([2]), teacher.predict_on_batch(load_image(good, CONFIG)[None]), rtol=1e-5, atol=1e-5
    )
    problems = [b["problem"] for b in cache.manifest["bad_examples"]]
    assert all(problems) and problems[0] != problems[1]  # the pipeline's own wording per file
    with pytest.raises(ImageReadError, match=r"bad0\.png"):
        tc.build_teacher_cache(teacher, [*bad, good], CONFIG, tmp_path / "raise", shard_size=2, batch_size=4)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_cli_bad_input_is_one_line_and_status_2(teacher, pool_dir, tmp_path, capsys):
    saved = tmp_path / "teacher.keras"
    teacher.save(saved)

    def args(teacher_path=saved, pool=pool_dir, out=tmp_path / "out"):
        return ["--teacher", str(teacher_path), "--pool", str(pool), "--image-size", "32", "--out", str(out)]

    assert tc.main(args(teacher_path=tmp_path / "missing.keras")) == 2
    assert "missing.keras: teacher file does not exist" in _one_error_line(capsys)
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a keras file")
    assert tc.build_main(args(teacher_path=garbage)) == 2
    assert "garbage.keras: cannot load the teacher" in _one_error_line(capsys)
    assert tc.main(args(pool=tmp_path / "no_such_pool")) == 2
    assert "no_such_pool" in _one_error_line(capsys)
    assert tc.main(args(pool=saved)) == 2  # a file where the pool folder should be
    assert "teacher.keras" in _one_error_line(capsys)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert tc.main(args(out=blocker / "cache")) == 2  # the output folder cannot be created
    assert "a_file" in _one_error_line(capsys)
    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        assert tc.main(args(out=read_only)) == 2
        assert "read_only" in _one_error_line(capsys)
    assert tc.merge_main(args(out=tmp_path / "nothing")) == 2
    assert "no parts to merge" in _one_error_line(capsys)
    assert tc.build_main([*args(), "--merge"]) == 2  # an argparse error: its usage message, status 2
    assert "unrecognized arguments: --merge" in capsys.readouterr().err


def test_cli_build_main_and_merge_main(teacher, pool_dir, records, tmp_path, capsys):
    saved = tmp_path / "teacher.keras"
    teacher.save(saved)
    common = ["--teacher", str(saved), "--pool", pool_dir, "--image-size", "32", "--out", str(tmp_path / "tc")]
    sizes = ["--shard-size", str(SHARD), "--batch-size", str(BATCH)]
    assert tc.build_main([*common, *sizes, "--shard", "0/2"]) == 0
    assert tc.build_main([*common, *sizes, "--shard", "1/2"]) == 0
    assert tc.merge_main(common) == 0
    assert "merged 2 parts" in capsys.readouterr().out
    expected = tc.build_teacher_cache(str(saved), records, CONFIG, tmp_path / "api", shard_size=SHARD)
    merged = tc.TeacherCache.open(tmp_path / "tc" / expected.key.digest)
    np.testing.assert_array_equal(np.asarray(merged.logits), np.asarray(expected.logits))


def test_hard_pseudo_labels_argmax_and_threshold_hand_computed():
    from kd_keras.engine.pseudo_labels import hard_pseudo_labels

    # softmax([0, 2])[1] = 0.881, softmax([1, 0])[1] = 0.269, softmax([0, 0])[1] = 0.5 (not above 0.5).
    two = np.array([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    labels, confidence = hard_pseudo_labels(two)
    assert labels.tolist() == [1, 0, 0]
    np.testing.assert_allclose(confidence, [0.880797, 0.731059, 0.5], atol=1e-6)
    assert hard_pseudo_labels(two, threshold=0.5)[0].tolist() == [1, 0, 0]  # 003's rule == 002's argmax
    labels, confidence = hard_pseudo_labels(two, threshold=0.9)
    assert labels.tolist() == [0, 0, 0]
    np.testing.assert_allclose(confidence, [0.119203, 0.731059, 0.5], atol=1e-6)
    # One sigmoid logit: sigmoid(2) = 0.881, sigmoid(-0.5) = 0.378, sigmoid(0) = 0.5.
    one = np.array([[2.0], [-0.5], [0.0]])
    assert hard_pseudo_labels(one)[0].tolist() == [1, 0, 0] == hard_pseudo_labels(one, 0.5)[0].tolist()
    assert hard_pseudo_labels(one, threshold=0.3)[0].tolist() == [1, 1, 1]
    assert tc.threshold_pseudo_labels(one).tolist() == [1.0, 0.0, 0.0]  # the float 0/1 helper agrees
    with pytest.raises(ValueError, match="binary head"):
        hard_pseudo_labels(np.zeros((2, 3)), threshold=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        hard_pseudo_labels(two, threshold=1.0)


def test_pseudo_label_pool_threshold(teacher, tmp_path):
    from kd_keras.data.records import Records
    from kd_keras.engine import PseudoLabels, pseudo_label_pool

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)

    def array_records(rows, labels, task):
        return Records(paths=None, labels=np.asarray(labels, np.int64), patients=np.asarray(rows).astype(str),
                       class_names=("a", "b", "c") if task != "unlabeled" else (), task=task, images=images,
                       array_index=np.asarray(rows, np.int64))

    labeled = array_records([0, 1, 2, 3], [0, 1, 2, 1], "multiclass")
    pool = array_records([4, 5, 6, 7, 8, 9], [-1] * 6, "unlabeled")
    argmax = pseudo_label_pool(teacher, labeled, pool, CONFIG, tmp_path, batch_size=4)
    assert isinstance(argmax, PseudoLabels) and argmax.threshold is None
    expected = np.asarray(teacher.predict_on_batch(images.astype(np.float32)))
    np.testing.assert_array_equal(argmax.pool_labels, expected[4:].argmax(1))
    assert argmax.labeled_accuracy == pytest.approx(np.mean(expected[:4].argmax(1) == [0, 1, 2, 1]))
    assert argmax.summary()["rule"] == "argmax"
    with pytest.raises(ValueError, match="binary head"):  # three classes: a threshold is not defined
        pseudo_label_pool(teacher, labeled, pool, CONFIG, tmp_path, batch_size=4, threshold=0.5)
    # A two-logit teacher: threshold 0.5 is its argmax; 0.7 keeps only confident positives.
    keras.utils.set_random_seed(4)
    image = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 64.0)(image))
    binary = keras.Model(image, keras.layers.Dense(2)(pooled))
    labeled2 = array_records([0, 1, 2, 3], [0, 1, 0, 1], "binary")
    labeled2 = Records(paths=None, labels=labeled2.labels, patients=labeled2.patients, class_names=("a", "b"),
                       task="binary", images=images, array_index=labeled2.array_index)
    logits = np.asarray(binary.predict_on_batch(images.astype(np.float32)), np.float64)
    positive = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))  # softmax column 1
    for threshold in (0.5, 0.7, float(np.median(positive))):
        result = pseudo_label_pool(binary, labeled2, pool, CONFIG, tmp_path, batch_size=4, threshold=threshold)
        np.testing.assert_array_equal(result.pool_labels, (positive[4:] > threshold).astype(int))
        assert result.labeled_accuracy == pytest.approx(np.mean((positive[:4] > threshold) == [0, 1, 0, 1]))
    half = pseudo_label_pool(binary, labeled2, pool, CONFIG, tmp_path, batch_size=4, threshold=0.5)
    default = pseudo_label_pool(binary, labeled2, pool, CONFIG, tmp_path, batch_size=4)
    np.testing.assert_array_equal(half.pool_labels, default.pool_labels)
    assert half.summary()["rule"] == "positive-class probability > 0.5"
