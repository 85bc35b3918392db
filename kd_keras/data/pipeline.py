"""Streaming tf.data pipelines over :class:`~kd_keras.data.records.Records`: the training streams of kd-keras.

:func:`make_dataset` turns a source into batches of dicts with the keys of :mod:`kd_keras.data.schema`:
``image`` (float32 ``(B, H, W, C)`` in [0, 255]), ``label``, ``labeled`` (1/0 mask), ``index`` (int64 position
of the example in the records, the key of a teacher-logit cache) and, when asked, ``teacher_logits`` and
``view2``. :func:`make_mixed_dataset` pools a labeled set with a chosen fraction of an unlabeled pool (study
002's 0/25/50/75/100%), the pool's examples carrying ``labeled = 0``; :func:`make_two_stream_dataset` gives every
batch a fixed number of labeled examples and ``mu`` times as many pool examples (FixMatch, MixMatch).

How it streams. Only the records (paths, labels, patients) are in memory. Each epoch is one seeded
permutation of int64 positions (a single ``(N,)`` tensor, drawn anew per epoch); a parallel map
(``num_parallel_calls=AUTOTUNE``) reads and decodes each file with OpenCV through ``tf.numpy_function``
(:func:`kd_keras.data.preprocess.load_image`: decode, fundus crop, CLAHE, resize, channels), then the stream is
batched, augmented per batch with Keras layers, and prefetched. Memory therefore depends on the batch size and
the prefetch depth, not on the pool size; ``cache=`` trades that for speed on small sets.

Bad files at run time. A file that fails to decode (truncated, not an image, unreadable, deleted since it was
listed) is dropped from the stream *and* recorded in ``records.report`` with its path and problem (a warning is
logged once per file). Nothing is raised inside ``tf.data``. Check files up front with
:func:`kd_keras.data.validate.check_files` to refuse or skip them before training instead. Because a file can be
dropped, the stream's length is unknown to Keras: ``fit`` counts the batches in the first epoch and prints "Your
input ran out of data" once at its end (harmless); pass ``repeat=True`` and ``steps_per_epoch`` to avoid it.

Example:

```python
from kd_keras.data import pipeline, sources, tasks
from kd_keras.data.augment import build_augmenter
from kd_keras.data.preprocess import PreprocessConfig

records = tasks.normal_vs_abnormal(sources.from_class_folders("OCT2017/train"))
config = PreprocessConfig(image_size=(224, 224), channels=3)
train = pipeline.make_dataset(records, config, batch_size=32, augmenter=build_augmenter(flip="horizontal"))
pool = sources.from_folder("OCT_unlabeled/")
mixed = pipeline.make_mixed_dataset(records, pool, config, batch_size=32, unlabeled_fraction=0.25)
records.report.write_json("runs/oct/data_report.json")  # after training: every file skipped at run time
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.data.preprocess import ImageReadError, PreprocessConfig, load_image, preprocess
from kd_keras.data.records import Records
from kd_keras.data.validate import DataError, classify_read_error

AUTOTUNE = tf.data.AUTOTUNE
_OK = "_ok"
UNLABELED_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # study 002


class _Loader:
    """The per-example decode step run by ``tf.numpy_function``: never raises, reports instead."""

    def __init__(self, records: Records, config: PreprocessConfig):
        self.records = records
        self.config = config
        self.shape = (*config.image_size, config.channels)

    def __call__(self, position) -> tuple[np.ndarray, np.bool_]:
        i = int(position)
        records = self.records
        try:
            if records.paths is not None:
                image = load_image(records.paths[i], self.config)
            else:
                image = preprocess(records.images[int(records.array_index[i])], self.config)
            if image.shape != self.shape:
                raise ValueError(f"preprocessing gave shape {image.shape}, expected {self.shape}")
            return np.ascontiguousarray(image, np.float32), np.bool_(True)
        except ImageReadError as error:
            records.report.skip(classify_read_error(error.problem), records.describe_example(i), error.problem)
        except Exception as error:  # noqa: BLE001 - a bad file must never raise inside tf.data
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            records.report.skip("bad_image", records.describe_example(i),
                                f"{type(error).__name__} while decoding/preprocessing: {first_line}")
        return np.zeros(self.shape, np.float32), np.bool_(False)


def _positions_dataset(positions: np.ndarray, shuffle: bool, seed: int | None, repeat: bool) -> tf.data.Dataset:
    """Example positions, one seeded permutation per epoch (one int64 vector in memory, not a shuffle buffer)."""
    table = tf.constant(positions, tf.int64)
    if not shuffle:
        epoch = tf.data.Dataset.from_tensor_slices(table)
        return epoch.repeat() if repeat else epoch
    # Dataset.random draws a new number for every epoch and, with rerandomize_each_iteration, for every new
    # iterator (Keras makes one per epoch), while the same seed replays the same sequence of permutations.
    epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    epoch_seeds = epoch_seeds if repeat else epoch_seeds.take(1)

    def permutation(epoch_seed):
        stateless_seed = tf.stack([epoch_seed, tf.constant(int(seed or 0), tf.int64)])
        return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(table, stateless_seed))

    return epoch_seeds.flat_map(permutation)


def _augment(dataset, augmenter, view2_augmenter, num_parallel_calls, deterministic) -> tf.data.Dataset:
    """Each batch's ``image`` through ``augmenter`` and, as ``view2``, through ``view2_augmenter``."""
    if augmenter is None and view2_augmenter is None:
        return dataset

    def augment(batch):
        batch = dict(batch)
        clean = batch[schema.IMAGE]
        if view2_augmenter is not None:
            batch[schema.VIEW2] = view2_augmenter(clean, training=True)
        if augmenter is not None:
            batch[schema.IMAGE] = augmenter(clean, training=True)
        return batch

    return dataset.map(augment, num_parallel_calls=num_parallel_calls, deterministic=deterministic)


def _check_teacher_logits(teacher_logits, size: int) -> int:
    shape = getattr(teacher_logits, "shape", None)
    if shape is None or len(shape) != 2:
        raise DataError("teacher_logits", f"must be an array or memmap of shape (examples, logits), got {shape}")
    if shape[0] < size:
        raise DataError("teacher_logits", f"holds {shape[0]} rows but the stream's index goes up to {size - 1}")
    return int(shape[1])


def make_dataset(
    records: Records,
    config: PreprocessConfig,
    batch_size: int,
    *,
    indices: Sequence[int] | np.ndarray | None = None,
    shuffle: bool = True,
    seed: int | None = 0,
    augmenter: keras.Layer | None = None,
    view2_augmenter: keras.Layer | None = None,
    teacher_logits: np.ndarray | None = None,
    cache: bool | str | os.PathLike = False,
    shuffle_buffer: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
    float_labels: bool = False,
    shard: tuple[int, int] | None = None,
    num_parallel_calls: int = AUTOTUNE,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """A batched stream of schema dicts from ``records``, decoded from disk as it goes.

    Args:
        records: the source (file or array records, labeled, unlabeled or mixed).
        config: preprocessing (:class:`~kd_keras.data.preprocess.PreprocessConfig`): size, channels, CLAHE, crop.
        batch_size: examples per batch.
        indices: which rows of ``records`` to stream (default all); ``index`` stays the row number in
            ``records``.
        shuffle: a new seeded permutation every epoch.
        seed: shuffle seed (``None``: different every run).
        augmenter: a Keras layer applied to each batch's images with ``training=True``
            (:func:`kd_keras.data.augment.build_augmenter`); leave ``None`` for evaluation streams.
        view2_augmenter: a second, independent augmentation of the same images, emitted as ``view2`` (SimCLR,
            FixMatch's strong view).
        teacher_logits: cached teacher outputs, an array or ``np.memmap`` of shape ``(len(records), K)`` indexed
            by ``index``; rows are read per batch, so a memmap of a large pool stays on disk.
        cache: ``True`` caches decoded (un-augmented) images in memory, a path caches them in files; ``False``
            streams from disk every epoch. With a cache, shuffling is a buffer shuffle after the cache (buffer:
            ``shuffle_buffer``, default all examples in memory, 1,024 for a file cache) over a first epoch that
            was already permuted.
        shuffle_buffer: see ``cache``.
        repeat: repeat forever (then pass ``steps_per_epoch`` to ``fit``).
        drop_remainder: drop the last partial batch (static batch size, e.g. for TPUs).
        float_labels: emit binary labels as float32 0/1 (a one-logit head); multi-label labels are always float32.
        shard: ``(num_shards, shard_index)``: stream only this shard of each epoch's permutation, *before* decoding
            (multi-worker training: ``strategy.distribute_datasets_from_function(lambda ctx: make_dataset(...,
            batch_size=ctx.get_per_replica_batch_size(global_batch), shard=(ctx.num_input_pipelines,
            ctx.input_pipeline_id)))``). Without it, a dataset given to a multi-worker strategy is sharded by
            element (``AutoShardPolicy.DATA``): correct, but every worker decodes every image.
        num_parallel_calls: parallelism of the decode map.
        deterministic: keep element order under parallel decode (``None``: tf.data's default, ``True``).

    Returns:
        ``tf.data.Dataset`` of dicts: ``image`` float32 ``(B, H, W, C)``, ``label`` int32 ``(B,)`` (float32 for
        multi-label ``(B, K)`` or ``float_labels``), ``labeled`` float32 ``(B,)``, ``index`` int64 ``(B,)``, and
        ``teacher_logits`` float32 ``(B, K)`` / ``view2`` when asked.

    Raises:
        DataError: empty selection, an index out of range, or ``teacher_logits`` of the wrong shape.

    Example:

    ```python
    stream = make_dataset(records, PreprocessConfig((96, 96), channels=1, clahe=True), batch_size=64, seed=0)
    batch = next(iter(stream))  # {"image": (64, 96, 96, 1), "label": (64,), "labeled": (64,), "index": (64,)}
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(records)
    positions = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    where = records.root or "records"
    if positions.size == 0:
        raise DataError(where, "nothing to stream (no examples selected)")
    if positions.min() < 0 or positions.max() >= n:
        raise DataError(where, f"indices must be within 0..{n - 1}, got {positions.min()}..{positions.max()}")
    logits_width = _check_teacher_logits(teacher_logits, n) if teacher_logits is not None else None

    multilabel = records.task == "multilabel"
    label_dtype = tf.float32 if (multilabel or float_labels) else tf.int32
    labels = tf.constant(records.labels.astype(np.float32 if label_dtype == tf.float32 else np.int32))
    labeled = tf.constant(records.labeled.astype(np.float32))
    loader = _Loader(records, config)
    image_shape = loader.shape

    def load(position):
        image, ok = tf.numpy_function(loader, [position], [tf.float32, tf.bool], name="decode_preprocess")
        image.set_shape(image_shape)
        ok.set_shape(())
        return {
            schema.IMAGE: image,
            schema.LABEL: tf.gather(labels, position),
            schema.LABELED: tf.gather(labeled, position),
            schema.INDEX: position,
            _OK: ok,
        }

    def drop_flag(element):
        return {key: value for key, value in element.items() if key != _OK}

    dataset = _positions_dataset(positions, shuffle, seed, repeat and not cache)
    if shard is not None:
        num_shards, shard_index = (int(v) for v in shard)
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise ValueError(f"shard must be (num_shards, index) with 0 <= index < num_shards, got {shard}")
        # Same seed on every worker -> same permutation, so the shards of an epoch are disjoint.
        dataset = dataset.shard(num_shards, shard_index)
    dataset = dataset.map(load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    dataset = dataset.filter(lambda element: element[_OK]).map(drop_flag)
    if cache:
        dataset = dataset.cache("" if cache is True else os.fspath(cache))
        if shuffle:
            buffer = shuffle_buffer or (len(positions) if cache is True else min(len(positions), 1024))
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    dataset = _augment(dataset, augmenter, view2_augmenter, num_parallel_calls, deterministic)

    if teacher_logits is not None:
        def rows(index):
            return np.asarray(teacher_logits[np.asarray(index)], np.float32)

        def add_logits(batch):
            cached = tf.numpy_function(rows, [batch[schema.INDEX]], tf.float32, name="teacher_logits_lookup")
            cached.set_shape((None, logits_width))
            return {**batch, schema.TEACHER_LOGITS: cached}

        dataset = dataset.map(add_logits, num_parallel_calls=num_parallel_calls, deterministic=deterministic)

    options = tf.data.Options()
    # Positions are not files: shard by element under multi-worker strategies (FILE sharding would fail), unless
    # the caller already sharded the positions.
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if shard is not None else policy.DATA
    return dataset.with_options(options).prefetch(AUTOTUNE)


def select_fraction(pool_size: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions of ``round(fraction * pool_size)`` pool examples, sorted.

    Selections are nested: for one seed, the 25% selection is inside the 50% one, which is inside the 75% one
    (prefixes of one permutation), so a fraction sweep adds images instead of redrawing them.

    Example:

    ```python
    quarter = select_fraction(len(pool), 0.25, seed=0)
    ```
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"unlabeled_fraction must be in [0, 1], got {fraction}")
    count = int(round(fraction * pool_size))
    order = np.random.default_rng(seed).permutation(pool_size)
    return np.sort(order[:count]).astype(np.int64)


def mixed_records(labeled: Records, unlabeled: Records) -> Records:
    """The index space of a mixed stream: the labeled rows (``index`` 0..L-1), then the whole pool
    (``index`` L..L+U-1, whatever fraction is streamed). Run the teacher over these records in order
    (``make_dataset(mixed_records(...), config, bs, shuffle=False)``) to build the ``teacher_logits`` cache that
    :func:`make_mixed_dataset` reads.

    Example:

    ```python
    everything = mixed_records(labeled, pool)
    logits = teacher.predict(make_dataset(everything, config, 256, shuffle=False).map(lambda b: b["image"]))
    ```
    """
    if labeled.task == "unlabeled":
        raise ValueError("the first records must be labeled")
    if unlabeled.task != "unlabeled":
        unlabeled = Records(paths=unlabeled.paths, labels=np.full(len(unlabeled), -1, np.int64),
                            patients=unlabeled.patients, class_names=(), task="unlabeled",
                            images=unlabeled.images, array_index=unlabeled.array_index, root=unlabeled.root,
                            patient_rule=unlabeled.patient_rule, report=unlabeled.report)
    return Records.concat(labeled, unlabeled)


def make_mixed_dataset(
    labeled: Records,
    unlabeled: Records,
    config: PreprocessConfig,
    batch_size: int,
    unlabeled_fraction: float = 1.0,
    *,
    seed: int | None = 0,
    teacher_logits: np.ndarray | None = None,
    **kwargs,
) -> tf.data.Dataset:
    """Labeled examples pooled with ``unlabeled_fraction`` of an unlabeled pool, shuffled together (study 002).

    Labeled examples carry ``labeled = 1`` and their label; pool examples ``labeled = 0`` and a placeholder label
    0, to be labeled by the teacher (on the fly, or from ``teacher_logits``). With ``L`` labeled and ``U`` pool
    images, an epoch holds ``L + round(fraction * U)`` examples, so the expected share of unlabeled examples per
    batch is ``round(fraction * U) / (L + round(fraction * U))``.

    Args:
        labeled: the labeled set.
        unlabeled: the pool (an unlabeled source; a labeled one is used without its labels).
        config: preprocessing.
        batch_size: examples per batch.
        unlabeled_fraction: share of the pool streamed, in [0, 1] (002: 0, 0.25, 0.5, 0.75, 1); the selection is
            seeded and nested across fractions (:func:`select_fraction`).
        seed: seeds both the pool selection and the shuffle (``None``: selection seed 0, random shuffle).
        teacher_logits: ``(L + U, K)`` array or memmap in the order of :func:`mixed_records`.
        **kwargs: passed to :func:`make_dataset` (``augmenter``, ``cache``, ``repeat``, ``shard``, ...).

    Files skipped at run time are recorded in ``labeled.report``, which also receives the pool's report entries.

    Example:

    ```python
    for fraction in UNLABELED_FRACTIONS:
        stream = make_mixed_dataset(labeled, pool, config, 64, unlabeled_fraction=fraction, seed=0)
    ```
    """
    combined = mixed_records(labeled, unlabeled)
    chosen = select_fraction(len(unlabeled), unlabeled_fraction, seed=0 if seed is None else seed)
    positions = np.concatenate([np.arange(len(labeled), dtype=np.int64), len(labeled) + chosen])
    return make_dataset(combined, config, batch_size, indices=positions, seed=seed, teacher_logits=teacher_logits,
                        **kwargs)


def two_stream_steps(unlabeled_size: int, labeled_batch_size: int, unlabeled_ratio: int) -> int:
    """Steps of one epoch of :func:`make_two_stream_dataset`: one pass over the pool,
    ``ceil(unlabeled_size / (unlabeled_ratio * labeled_batch_size))``.

    Example:
        >>> two_stream_steps(1000, 32, 7)
        5
    """
    return max(1, -(-int(unlabeled_size) // (int(unlabeled_ratio) * int(labeled_batch_size))))


def make_two_stream_dataset(
    labeled: Records,
    unlabeled: Records,
    config: PreprocessConfig,
    labeled_batch_size: int,
    unlabeled_ratio: int = 1,
    *,
    seed: int | None = 0,
    augmenter: keras.Layer | None = None,
    view2_augmenter: keras.Layer | None = None,
    teacher_logits: np.ndarray | None = None,
    cache: bool | str | os.PathLike = False,
    num_parallel_calls: int = AUTOTUNE,
    deterministic: bool | None = None,
) -> tf.data.Dataset:
    """Endless batches of ``labeled_batch_size`` labeled examples followed by ``unlabeled_ratio`` times as many
    pool examples (FixMatch's ``B`` and ``mu B``, MixMatch's equal batches), each stream shuffled on its own.

    Unlike :func:`make_mixed_dataset`, where the share of labeled examples in a batch is their share of the data
    (2% labeled: about one labeled image in a batch of 32), every batch here holds exactly ``labeled_batch_size``
    labeled examples; the labeled set repeats as often as the pool needs. The elements are the schema dicts of
    :func:`make_dataset` (``labeled`` 1 for the first ``labeled_batch_size`` rows, 0 after), ``index`` in the
    order of :func:`mixed_records`; the augmenters run on the whole batch. Give ``fit`` a ``steps_per_epoch``
    (:func:`two_stream_steps`: one pass over the pool).

    Args:
        labeled: the labeled set.
        unlabeled: the pool (a labeled source is used without its labels).
        config: preprocessing.
        labeled_batch_size: labeled examples per batch (``B``).
        unlabeled_ratio: pool examples per labeled example in a batch (FixMatch's ``mu`` = 7; MixMatch 1).
        seed: seeds both shuffles (the pool's with ``seed + 1``); ``None``: random.
        augmenter, view2_augmenter: see :func:`make_dataset` (FixMatch: weak, strong; MixMatch: two weak ones).
        teacher_logits: ``(L + U, K)`` array or memmap in the order of :func:`mixed_records`.
        cache: see :func:`make_dataset` (each stream caches its decoded images).
        num_parallel_calls, deterministic: see :func:`make_dataset`.

    Example:

    ```python
    stream = make_two_stream_dataset(labeled, pool, config, 32, unlabeled_ratio=7, seed=0,
                                     augmenter=weak, view2_augmenter=strong)
    batch = next(iter(stream))  # 32 + 224 examples; batch["labeled"][:32] are 1, the rest 0
    ```
    """
    if labeled_batch_size < 1 or unlabeled_ratio < 1:
        raise ValueError(f"labeled_batch_size and unlabeled_ratio must be >= 1, got {labeled_batch_size} and "
                         f"{unlabeled_ratio}")
    combined = mixed_records(labeled, unlabeled)
    common = dict(teacher_logits=teacher_logits, cache=cache, repeat=True, num_parallel_calls=num_parallel_calls,
                  deterministic=deterministic)
    first = make_dataset(combined, config, labeled_batch_size, indices=np.arange(len(labeled)), seed=seed,
                         **common)
    pool_positions = len(labeled) + np.arange(len(unlabeled))
    second = make_dataset(combined, config, labeled_batch_size * unlabeled_ratio, indices=pool_positions,
                          seed=None if seed is None else seed + 1, **common)

    def join(a, b):
        return {key: tf.concat([a[key], b[key]], 0) for key in a}

    dataset = tf.data.Dataset.zip(first, second).map(join)
    dataset = _augment(dataset, augmenter, view2_augmenter, num_parallel_calls, deterministic)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(AUTOTUNE)
