"""Building a teacher cache: the teacher run once over an unaugmented pool, shard by shard, into the store.

Images are read through the project's own input pipeline (:func:`kd_keras.data.pipeline.make_dataset` with
``shuffle=False``), so the cached logits are those of exactly the pixels a training stream decodes (OpenCV, grey
and 16-bit images, CLAHE, fundus crop, resize). Each shard is one pipeline stream over its rows; a file that
fails to decode is dropped by the pipeline and recorded in ``records.report``, and the build then either raises
(``on_bad_file="raise"``) or stores NaN outputs for it (``"nan"``). Rows are written by the stream's ``index``,
so a dropped file never shifts another example's row.

Example:

```python
from kd_keras.engine.teacher_cache import build_teacher_cache

cache = build_teacher_cache("runs/teacher.keras", pool, config, "runs/teacher_cache", batch_size=128)
cache.build_stats  # {'shards_computed': 3, 'shards_reused': 0, ...}
```
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.preprocess import ImageReadError, PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.engine.teacher_cache.keys import (
    FORMAT,
    FORMAT_VERSION,
    LOGITS,
    MANIFEST,
    ON_BAD_FILE,
    CacheError,
    _normalise_taps,
    make_cache_key,
)
from kd_keras.engine.teacher_cache.store import (
    CachePart,
    TeacherCache,
    _bad_name,
    _check_spec,
    _file_name,
    _parse_part,
    _part_name,
    _shard_bounds,
    _shard_complete,
    _spec,
    _write_json,
    _write_manifest,
    part_shards,
)

__all__ = ["build_cache_part", "build_teacher_cache"]

PoolLike = Records | Sequence[str | os.PathLike] | np.ndarray | str | os.PathLike


def as_records(pool: PoolLike) -> Records:
    """The pool as :class:`~kd_keras.data.records.Records` (what the input pipeline streams).

    A folder is read with :func:`kd_keras.data.sources.from_folder`; a sequence of paths and an image array
    ``(N, H, W[, C])`` become unlabeled records in the given order.

    Example:

    ```python
    as_records(["a.png", "b.png"]).describe_example(1)  # 'b.png'
    ```
    """
    if isinstance(pool, Records):
        return pool
    if isinstance(pool, (str, os.PathLike)):
        from kd_keras.data.sources import from_folder

        return from_folder(pool)
    if isinstance(pool, np.ndarray) and pool.dtype != object:
        if pool.ndim not in (3, 4):
            raise ValueError(f"an image array pool must be (N, H, W[, C]), got shape {pool.shape}")
        n = len(pool)
        return Records(paths=None, labels=np.full(n, -1, np.int64), patients=np.arange(n).astype(str),
                       class_names=(), task="unlabeled", images=pool, array_index=np.arange(n, dtype=np.int64))
    paths = np.asarray([os.fspath(p) for p in pool], dtype=object)
    return Records(paths=paths, labels=np.full(len(paths), -1, np.int64), patients=paths.copy(), class_names=(),
                   task="unlabeled")


class _Teacher:
    """Loads the teacher on first use (never when every shard is reused) and runs it batch by batch."""

    def __init__(self, teacher: Any, taps: Sequence[str], input_shape: tuple[int, ...]):
        self._source = teacher
        self._taps = list(taps)
        self.input_shape = tuple(input_shape)
        self._model = None
        self.calls = 0
        self.rows_here = 0  # rows this process's replicas computed (1/N of them on each of N workers)

    def _build(self):

        teacher = self._source
        if isinstance(teacher, (str, os.PathLike)):
            from kd_keras.models import load_model  # the one loader: registers every family's custom layers

            try:
                teacher = load_model(os.fspath(teacher))
            except Exception as error:  # noqa: BLE001 - one line naming the file, not a deep traceback
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise CacheError(self._source, f"cannot load the teacher ({first})") from None
        expected = tuple(teacher.input_shape[1:])
        if len(expected) != 3 or any(
            e is not None and e != g for e, g in zip(expected, self.input_shape, strict=True)
        ):
            raise CacheError(
                getattr(teacher, "name", "teacher"),
                f"teacher takes inputs of shape {expected}, the preprocessing gives "
                f"{self.input_shape}; set image_size/channels to the teacher's",
            )
        if self._taps:
            from kd_keras.models.registry import with_taps

            teacher = with_taps(teacher, self._taps)
        self._model = teacher

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        if self._model is None:
            self._build()
        self.calls += 1
        from kd_keras.engine.distribute import local_rows, predict_on_batch

        outputs = predict_on_batch(self._model, images)  # float32, right under any strategy
        self.rows_here += local_rows(len(images), getattr(self._model, "distribute_strategy", None))
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [np.asarray(o) for o in outputs]


def _store(value: np.ndarray, storage: str, name: str) -> np.ndarray:
    if storage == "pooled":
        return (
            value.mean(axis=tuple(range(1, value.ndim - 1))).astype(np.float32)
            if value.ndim > 2
            else value.astype(np.float32)
        )
    if storage == "float16":
        with np.errstate(over="ignore"):  # checked just below, with a message that says what to do
            stored = value.astype(np.float16)
        if not np.isfinite(stored).all() and np.isfinite(value).all():
            raise CacheError(
                name,
                f"tap values up to {float(np.abs(value).max()):.4g} overflow float16 (max "
                "65504); store this tap as 'float32' or 'pooled'",
            )
        return stored
    return value.astype(np.float32)


def _decoded_batches(records: Records, config: PreprocessConfig, start: int, stop: int, batch_size: int,
                     parallel: int | None):
    """``(index, images)`` NumPy batches of rows ``start..stop`` in order, through the training pipeline's
    decoding; files that fail to decode are missing from ``index`` (and recorded in ``records.report``)."""
    from kd_keras.data import pipeline, schema

    stream = pipeline.make_dataset(
        records,
        config,
        batch_size,
        indices=np.arange(start, stop, dtype=np.int64),
        shuffle=False,
        num_parallel_calls=pipeline.AUTOTUNE if not parallel else int(parallel),
        deterministic=True,  # the same batches every run: resumed and merged shards equal an unsharded build
    )
    for batch in stream.as_numpy_iterator():
        yield batch[schema.INDEX], batch[schema.IMAGE]


def _read_problem(records: Records, index: int) -> str:
    """The pipeline's report entry for example ``index`` (the latest skip naming its path)."""
    where = records.describe_example(index)
    problems = [p.detail for p in records.report.entries("skipped") if p.path == where]
    return problems[-1] if problems else "could not be decoded"


def _compute_shard(
    folder: Path,
    shard: int,
    start: int,
    stop: int,
    records: Records,
    config: PreprocessConfig,
    teacher: _Teacher,
    taps: Mapping[str, str],
    batch_size: int,
    workers: int | None,
    on_bad_file: str,
) -> None:
    """Runs the teacher over rows ``start..stop`` into temporary files, then renames them into place (taps
    first, logits last), after the shard's list of unreadable examples (``bad.<shard>.json``, only if any)."""
    names = [LOGITS, *taps]
    storages = {LOGITS: "float32", **taps}
    for name in names:  # a stray temporary file of a killed run
        for stale in glob.glob(os.fspath(folder / (glob.escape(_file_name(name, shard)) + ".tmp*"))):
            os.remove(stale)
    temporaries = {name: folder / f"{_file_name(name, shard)}.tmp{os.getpid()}" for name in names}
    writers: dict[str, np.ndarray] = {}
    seen = np.zeros(stop - start, bool)

    def write(rows: np.ndarray, outputs: list[np.ndarray]) -> None:
        if len(outputs) != len(names):
            raise CacheError("teacher", f"returned {len(outputs)} outputs, expected {len(names)} ({names})")
        for name, value in zip(names, outputs, strict=True):
            value = _store(value, storages[name], name)
            if name not in writers:
                writers[name] = np.lib.format.open_memmap(
                    temporaries[name], mode="w+", dtype=value.dtype, shape=(stop - start, *value.shape[1:])
                )
            writer = writers[name]
            if value.shape[1:] != writer.shape[1:]:
                raise CacheError(
                    name, f"output shape changed between batches: {value.shape[1:]} vs {writer.shape[1:]}"
                )
            writer[rows] = value

    try:
        for index, images in _decoded_batches(records, config, start, stop, batch_size, workers):
            rows = np.asarray(index, np.int64) - start
            write(rows, teacher(images))
            seen[rows] = True
        missing = np.flatnonzero(~seen)
        if len(missing) and on_bad_file == "raise":
            i = int(missing[0]) + start
            raise ImageReadError(records.describe_example(i), _read_problem(records, i))
        if not writers:  # every image of the shard unreadable: one blank call gives the output shapes
            write(np.zeros(0, np.int64), teacher(np.zeros((1, *teacher.input_shape), np.float32)))
        for writer in writers.values():
            writer[missing] = np.nan
            writer.flush()
        writers.clear()  # closes the maps before the rename (needed on Windows)
        bad_examples = [
            {"index": int(i) + start, "example": records.describe_example(int(i) + start),
             "problem": _read_problem(records, int(i) + start)}
            for i in missing
        ]
        bad_path = folder / _bad_name(shard)
        if bad_examples:
            _write_json(bad_path, {"bad_examples": bad_examples})
        elif bad_path.exists():
            bad_path.unlink()
        for name in names:  # logits last: a shard counts as complete only when every file is in place
            os.replace(temporaries[name], folder / _file_name(name, shard))
    finally:
        writers.clear()
        for temporary in temporaries.values():
            if temporary.exists():
                temporary.unlink()


def _build(
    teacher,
    pool_data,
    config,
    out_dir,
    taps,
    batch_size,
    shard_size,
    part,
    teacher_fingerprint,
    data_fingerprint,
    on_bad_file,
    workers,
    on_shard_done,
) -> TeacherCache | CachePart:
    started = time.perf_counter()
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be positive, got {batch_size}, {shard_size}")
    if on_bad_file not in ON_BAD_FILE:
        raise ValueError(f"on_bad_file must be one of {ON_BAD_FILE}, got {on_bad_file!r}")
    part = _parse_part(part)
    taps = _normalise_taps(taps)
    records = as_records(pool_data)
    num_examples = len(records)
    if num_examples == 0:
        raise CacheError(out_dir, "the pool holds no examples")
    key = make_cache_key(
        teacher,
        records if isinstance(pool_data, (str, os.PathLike)) else pool_data,  # a folder: as listed
        config,
        taps,
        teacher_fingerprint=teacher_fingerprint,
        data_fingerprint=data_fingerprint,
    )
    cache_dir = Path(out_dir) / key.digest
    stats = {
        "key_digest": key.digest,
        "shards_computed": 0,
        "shards_reused": 0,
        "teacher_batches": 0,
        "examples_computed": 0,
        "examples_computed_here": 0,  # by this worker's replicas: predict_on_batch splits a batch over workers
    }

    if (cache_dir / MANIFEST).is_file():  # complete: no teacher, not even loaded
        cache = TeacherCache.open(cache_dir)
        if cache.num_examples != num_examples:
            raise CacheError(
                cache_dir,
                f"the cache with this key holds {cache.num_examples} examples but the pool "
                f"has {num_examples}; the data fingerprint does not identify the data",
            )
        stats.update(shards_reused=cache.manifest["num_shards"], seconds=time.perf_counter() - started)
        cache.build_stats = stats
        return cache

    cache_dir.mkdir(parents=True, exist_ok=True)
    spec = _spec(key, config, num_examples, shard_size, taps)
    _check_spec(cache_dir, spec)
    num_shards = spec["num_shards"]
    outputs = [LOGITS, *taps]
    runner = _Teacher(teacher, list(taps), (*config.image_size, config.channels))
    mine = part_shards(part, num_shards) if part[1] > 1 else range(num_shards)
    for shard in mine:
        start, stop = _shard_bounds(shard, shard_size, num_examples)
        if _shard_complete(cache_dir, shard, outputs, stop - start):
            stats["shards_reused"] += 1
            continue
        calls = runner.calls
        _compute_shard(
            cache_dir, shard, start, stop, records, config, runner, taps, batch_size, workers, on_bad_file
        )
        stats["shards_computed"] += 1
        stats["teacher_batches"] += runner.calls - calls
        stats["examples_computed"] += stop - start
        stats["examples_computed_here"] = runner.rows_here
        if on_shard_done is not None:
            on_shard_done(shard)
    stats["seconds"] = time.perf_counter() - started

    if part[1] == 1:
        cache = _write_manifest(cache_dir, spec, dict.fromkeys(range(num_shards), cache_dir), 1)
        cache.build_stats = stats
        return cache
    _write_json(
        cache_dir / _part_name(part),
        {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "key": key.to_dict(),
            "key_digest": key.digest,
            "part": list(part),
            "shards": list(mine),
            "spec": spec,
        },
    )
    return CachePart(cache_dir, part, mine, stats)


def build_teacher_cache(
    teacher: Any,
    pool: Records | Sequence[str | os.PathLike] | np.ndarray | str | os.PathLike,
    config: PreprocessConfig,
    out_dir: str | os.PathLike,
    *,
    taps: Sequence[str] | Mapping[str, str] | None = None,
    batch_size: int = 64,
    shard_size: int = 4096,
    teacher_fingerprint: str | None = None,
    data_fingerprint: str | None = None,
    on_bad_file: str = "raise",
    workers: int | None = None,
    on_shard_done: Callable[[int], None] | None = None,
) -> TeacherCache:
    """Computes (or reuses, or resumes) the teacher-output cache of ``pool`` under ``out_dir/<key digest>``.

    The pool is read in order, unaugmented, ``batch_size`` images at a time (never the whole pool in memory),
    through the training input pipeline (:func:`kd_keras.data.pipeline.make_dataset`, ``shuffle=False``), so
    the teacher sees exactly the pixels a training stream decodes; the teacher runs in inference mode
    (``predict_on_batch``). Row ``i`` of the cache is example ``i`` of ``pool``: build over the records the
    training stream's ``index`` refers to (:func:`kd_keras.data.pipeline.mixed_records` for a mixed stream).

    Args:
        teacher: a ``keras.Model``, or the path of a saved ``.keras`` model (loaded only if a shard is
            missing).
        pool: :class:`~kd_keras.data.records.Records` (file or array source), a sequence of image paths, an
            image array ``(N, H, W[, C])``, or a folder (read with :func:`kd_keras.data.sources.from_folder`).
        config: the preprocessing (image size and channels must be the teacher's input).
        out_dir: parent folder of cache folders.
        taps: feature taps to store too (:func:`kd_keras.models.with_taps` layer names): a list (stored
            float16) or ``{name: "float16" | "float32" | "pooled"}``.
        batch_size: images per teacher call.
        shard_size: rows per shard file.
        teacher_fingerprint: your own identity of the teacher instead of hashing it.
        data_fingerprint: your own identity of the data instead of stat-ing every file.
        on_bad_file: what to do with a file the pipeline cannot decode (it is dropped from the stream and
            recorded in ``records.report``): ``"raise"`` (default: :class:`~kd_keras.data.preprocess.
            ImageReadError`, one line naming the file, after that shard's stream) or ``"nan"`` (its outputs are
            NaN; listed in the manifest and ``cache.bad_indices``: leave those indices out of the stream).
        workers: parallel decode calls of the pipeline (``None``: ``tf.data.AUTOTUNE``).
        on_shard_done: called with the shard number after each computed shard is on disk (progress).

    Returns:
        The complete :class:`TeacherCache`; ``cache.build_stats`` says what was computed and reused.

    Raises:
        CacheError / ImageReadError: one line naming the file and the problem.

    Example:

    ```python
    cache = build_teacher_cache(teacher, pool, PreprocessConfig((224, 224)), "runs/teacher_cache",
                                taps={"conv4_block6_out": "float16"})
    cache.build_stats  # {'shards_computed': 3, 'shards_reused': 0, ...}; a second call computes none
    ```
    """
    return _build(
        teacher,
        pool,
        config,
        out_dir,
        taps,
        batch_size,
        shard_size,
        None,
        teacher_fingerprint,
        data_fingerprint,
        on_bad_file,
        workers,
        on_shard_done,
    )


def build_cache_part(
    teacher: Any,
    pool: Records | Sequence[str | os.PathLike] | np.ndarray | str | os.PathLike,
    config: PreprocessConfig,
    out_dir: str | os.PathLike,
    part: tuple[int, int] | str,
    **kwargs: Any,
) -> CachePart | TeacherCache:
    """Computes part ``i`` of ``n`` (the ``i``-th contiguous run of shards, ``i`` from 0) for one worker.

    Each worker runs this with its own ``part``; then :func:`merge_teacher_cache` (or the CLI's ``--merge``)
    writes the manifest. Shard files are named by their global number, so all parts can share one folder (a
    shared file system) or be gathered from one folder per worker (``part_dirs``). A finished cache is
    returned as it is. Keyword arguments as :func:`build_teacher_cache`.

    Example:

    ```python
    build_cache_part("teacher.keras", pool, config, "/shared/cache", part=(worker, num_workers))
    ```
    """
    kwargs = {
        "taps": None,
        "batch_size": 64,
        "shard_size": 4096,
        "teacher_fingerprint": None,
        "data_fingerprint": None,
        "on_bad_file": "raise",
        "workers": None,
        "on_shard_done": None,
        **kwargs,
    }
    return _build(
        teacher,
        pool,
        config,
        out_dir,
        kwargs["taps"],
        kwargs["batch_size"],
        kwargs["shard_size"],
        part,
        kwargs["teacher_fingerprint"],
        kwargs["data_fingerprint"],
        kwargs["on_bad_file"],
        kwargs["workers"],
        kwargs["on_shard_done"],
    )

