"""Teacher-output cache: a teacher's logits (and chosen features) over an unaugmented pool, computed once.

Offline distillation from a fixed view runs the teacher on the same clean image every epoch and for every
student. The cache runs it once, stores the outputs on disk and feeds them back by example ``index``
(:data:`kd_keras.data.schema.INDEX`); the :class:`~kd_keras.engine.Distiller` skips the teacher for a batch
that carries :data:`~kd_keras.data.schema.TEACHER_LOGITS`.

Layout. A cache is a folder ``<out>/<key digest>/`` holding fixed-size shards (``shard_size`` rows) as
``.npy`` files, opened with ``np.load(mmap_mode="r")``, and a small JSON ``manifest.json``:

- ``logits.00000.npy`` ... float32 ``(rows, K)``;
- ``tap-<name>.00000.npy`` ... for each requested tap (:func:`kd_keras.models.with_taps`), stored as
  ``"float16"`` (the full map, half the bytes), ``"float32"`` or ``"pooled"`` (global average over the spatial
  axes, float32 ``(rows, C)``); only when asked, since a ResNet50 ``conv4`` map at 224 px is 392 KB per image;
- ``cache_spec.json``: the key and the layout, written first; ``part-<i>-of-<n>.json`` for sharded runs;
- ``manifest.json``: written **last**, only when every shard is on disk. A folder without it is never read as
  a cache (:class:`IncompleteCacheError`).

Key. The digest hashes (a) the teacher: sha256 of its ``.keras`` file, or of its weights (shapes, dtypes,
values, in order) for an in-memory model; (b) the data: the ordered file paths (relative to the source root,
so workers may mount the data at different places) with sizes and modification times, or the pixels of an
array source, or a caller-supplied fingerprint; (c) the preprocessing (:class:`~kd_keras.data.preprocess.
PreprocessConfig`: size, channels, CLAHE, crop); (d) the outputs stored (taps and their storage). Any change
gives a new folder; the same key reuses the folder without loading or calling the teacher.

Crash safety. Each shard is written to a temporary name and renamed into place (atomic on POSIX and Windows),
so a killed run leaves whole shards and at most a stray ``*.tmp*`` file; running the same build again computes
only the missing shards.

Sharded inference. ``part=(i, n)`` (CLI ``--shard i/n``, ``i`` counted from 0 as ``tf.data.Dataset.shard``)
computes the ``i``-th of ``n`` contiguous runs of shards; :func:`merge_teacher_cache` checks that every part
is there with the same key and writes the manifest, pointing at the part shards (nothing is copied). Parts
written to different folders (one per worker) are merged with ``part_dirs=``.

Example:

```python
from kd_keras.data import pipeline, sources
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.engine.teacher_cache import build_teacher_cache, with_cached_teacher

pool = sources.from_folder("OCT_unlabeled/")
config = PreprocessConfig(image_size=(224, 224), channels=3)
cache = build_teacher_cache("runs/teacher.keras", pool, config, "runs/teacher_cache", batch_size=128)
stream = pipeline.make_dataset(pool, config, 64, augmenter=augmenter)     # dicts with "index"
stream = with_cached_teacher(stream, cache)                              # + "teacher_logits"
# or: pipeline.make_dataset(pool, config, 64, teacher_logits=cache.logits)
```

Command line (a folder pool, read recursively in sorted path order, the order of
:func:`kd_keras.data.sources.from_folder`)::

    python -m kd_keras.engine.teacher_cache --teacher teacher.keras --pool OCT_unlabeled/ --image-size 224 \\
        --out runs/teacher_cache [--shard 0/4 | --merge]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data import schema
from kd_keras.data.preprocess import ImageReadError, PreprocessConfig, load_image, preprocess
from kd_keras.data.records import Records

FORMAT = "kd-keras-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEC = "cache_spec.json"
LOGITS = "logits"
TAP_STORAGES = ("float16", "float32", "pooled")
ON_BAD_FILE = ("raise", "nan")
_CHUNK = 1 << 20


class CacheError(ValueError):
    """A cache that cannot be built, read or merged; ``str(error)`` is one line: ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class IncompleteCacheError(CacheError):
    """A cache folder whose build has not finished (no manifest): run the same build again to resume."""


# ----------------------------------------------------------------------------------------------------- keys


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """What a cache was computed from; equal keys mean interchangeable outputs.

    Args:
        teacher: teacher fingerprint (:func:`fingerprint_teacher`).
        data: data fingerprint (:func:`fingerprint_data`).
        preprocessing: preprocessing fingerprint (:func:`fingerprint_preprocessing`).
        outputs: the stored outputs, e.g. ``"logits;stage3=float16"``.
    """

    teacher: str
    data: str
    preprocessing: str
    outputs: str

    @property
    def digest(self) -> str:
        """16 hex digits of sha256 over the four fields: the cache's folder name."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, str]) -> CacheKey:
        return cls(**{f.name: str(values[f.name]) for f in dataclasses.fields(cls)})


def _hash_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_teacher(teacher: Any) -> str:
    """Fingerprint of a teacher: sha256 of its saved file, or of an in-memory model's weights.

    A path is hashed as bytes (a ``.keras`` file, ``.h5``, ...), so reusing a cache never loads the model. An
    in-memory model is hashed over its weights in order (shape, dtype and values; not the auto-generated layer
    names, which differ between two builds of one architecture in one process). The same weights as a file
    and in memory therefore give two different fingerprints.

    Example:

    ```python
    fingerprint_teacher("runs/teacher.keras")  # 'keras-file-sha256:9f2c...'
    ```
    """
    if isinstance(teacher, (str, os.PathLike)):
        path = Path(teacher)
        if not path.is_file():
            raise CacheError(path, "teacher file does not exist")
        return f"keras-file-sha256:{_hash_file(path)}"
    weights = getattr(teacher, "weights", None)
    if weights is None:
        raise TypeError(
            f"teacher must be a keras.Model or a path to a saved model, got {type(teacher).__name__}"
        )
    digest = hashlib.sha256()
    for variable in weights:
        value = np.ascontiguousarray(np.asarray(variable))
        digest.update(f"{value.shape}|{value.dtype}|".encode())
        digest.update(value.tobytes())
    return f"weights-sha256:{digest.hexdigest()}"


def fingerprint_data(
    data: Records | Sequence[str | os.PathLike] | np.ndarray, root: str | None = None
) -> str:
    """Fingerprint of an ordered pool: file paths with sizes and modification times, or the pixels.

    Args:
        data: :class:`~kd_keras.data.records.Records`, a sequence of file paths, or an image array
            ``(N, H, W[, C])``.
        root: the folder paths are made relative to (default: ``records.root``, or absolute paths), so a data
            set mounted at another place on another worker keeps its fingerprint.

    Example:

    ```python
    fingerprint_data(sources.from_folder("OCT_unlabeled/"))  # 'files-sha256:41d0...'
    ```
    """
    digest = hashlib.sha256()
    if isinstance(data, Records):
        if data.paths is None:
            digest.update(_hash_array(data.images).encode())
            digest.update(np.ascontiguousarray(data.array_index, np.int64).tobytes())
            return f"array-sha256:{digest.hexdigest()}"
        root = root if root is not None else data.root
        paths = data.paths
    elif isinstance(data, np.ndarray) and data.dtype != object:
        return f"array-sha256:{_hash_array(data)}"
    else:
        paths = data
    for path in paths:
        path = os.fspath(path)
        try:
            info = os.stat(path)
        except OSError as error:
            raise CacheError(
                path, f"cannot stat file for the data fingerprint ({error.strerror or error})"
            ) from None
        name = os.path.relpath(path, root) if root else os.path.abspath(path)
        digest.update(f"{Path(name).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return f"files-sha256:{digest.hexdigest()}"


def _hash_array(images: np.ndarray) -> str:
    digest = hashlib.sha256(f"{images.shape}|{images.dtype}|".encode())
    for row in images:  # row by row: no full copy of a large array
        digest.update(np.ascontiguousarray(row).tobytes())
    return digest.hexdigest()


def fingerprint_preprocessing(config: PreprocessConfig | Mapping[str, Any]) -> str:
    """Fingerprint of the preprocessing: the canonical JSON of the config's fields.

    Example:

    ```python
    fingerprint_preprocessing(PreprocessConfig((96, 96), channels=1, clahe=True))
    ```
    """
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    text = json.dumps(values, sort_keys=True, default=list)
    return f"preprocess-sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def _normalise_taps(taps: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    if not taps:
        return {}
    items = taps.items() if isinstance(taps, Mapping) else ((t, "float16") for t in taps)
    result = {}
    for name, storage in items:
        if storage not in TAP_STORAGES:
            raise ValueError(f"tap {name!r}: storage must be one of {TAP_STORAGES}, got {storage!r}")
        if name == LOGITS or name in result:
            raise ValueError(f"tap {name!r} named twice (or named 'logits')")
        result[str(name)] = storage
    return result


def _outputs_fingerprint(taps: Mapping[str, str]) -> str:
    return ";".join([LOGITS] + [f"{name}={storage}" for name, storage in taps.items()])


def make_cache_key(
    teacher: Any,
    data: Records | Sequence[str | os.PathLike] | np.ndarray,
    config: PreprocessConfig | Mapping[str, Any],
    taps: Sequence[str] | Mapping[str, str] | None = None,
    *,
    teacher_fingerprint: str | None = None,
    data_fingerprint: str | None = None,
) -> CacheKey:
    """The :class:`CacheKey` of a teacher, an ordered pool, a preprocessing and the stored outputs.

    Args:
        teacher: a ``keras.Model`` or the path of its saved file (ignored when ``teacher_fingerprint`` is
            given).
        data: the pool (ignored when ``data_fingerprint`` is given).
        config: the preprocessing.
        taps: feature taps to store: names (stored float16) or ``{name: "float16" | "float32" | "pooled"}``.
        teacher_fingerprint: a caller's own teacher identity (e.g. a model registry version).
        data_fingerprint: a caller's own data identity (e.g. a dataset version), instead of stat-ing every
            file.

    Example:

    ```python
    key = make_cache_key("teacher.keras", pool, config)
    print(key.digest)  # the cache folder name
    ```
    """
    return CacheKey(
        teacher=f"caller:{teacher_fingerprint}" if teacher_fingerprint else fingerprint_teacher(teacher),
        data=f"caller:{data_fingerprint}" if data_fingerprint else fingerprint_data(data),
        preprocessing=fingerprint_preprocessing(config),
        outputs=_outputs_fingerprint(_normalise_taps(taps)),
    )


# --------------------------------------------------------------------------------------------- reading


class ShardedArray:
    """A read-only ``(N, ...)`` array over per-shard ``.npy`` files, each memory-mapped on first use.

    Indexing with an int, a slice, an int array or a bool mask reads only the rows asked for, so a lookup's
    memory is the rows returned plus the pages the OS maps. It has ``shape`` and ``dtype`` and can be passed
    wherever the data layer takes an array of teacher logits (``pipeline.make_dataset(teacher_logits=...)``).
    ``np.asarray(array)`` reads everything (small caches only).

    Example:

    ```python
    rows = cache.logits[np.array([3, 17, 4])]  # float32 (3, K)
    ```
    """

    def __init__(
        self, files: Sequence[Path], num_rows: int, shard_size: int, row_shape: tuple[int, ...], dtype
    ):
        self._files = [Path(f) for f in files]
        self._maps: dict[int, np.ndarray] = {}
        self.shard_size = int(shard_size)
        self.shape = (int(num_rows), *row_shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, index: int) -> np.ndarray:
        mapped = self._maps.get(index)
        if mapped is None:
            path = self._files[index]
            rows = min(self.shard_size, self.shape[0] - index * self.shard_size)
            try:
                mapped = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise CacheError(path, f"cannot open cache shard ({error})") from None
            expected = (rows, *self.shape[1:])
            if mapped.shape != expected or mapped.dtype != self.dtype:
                raise CacheError(
                    path,
                    f"cache shard holds {mapped.dtype}{mapped.shape}, the manifest says "
                    f"{self.dtype}{expected}",
                )
            self._maps[index] = mapped  # a benign race under parallel readers: both maps are the same file
        return mapped

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            raise IndexError("ShardedArray takes one index (rows); index the result for more")
        if isinstance(key, slice):
            key = np.arange(*key.indices(self.shape[0]))
        indices = np.asarray(key)
        if indices.dtype == bool:
            if indices.shape != (self.shape[0],):
                raise IndexError(f"boolean index of shape {indices.shape} for {self.shape[0]} rows")
            indices = np.flatnonzero(indices)
        if indices.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, got {indices.dtype}")
        flat = indices.reshape(-1).astype(np.int64)
        n = self.shape[0]
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"row index out of range for {n} cached examples: {flat.min()}..{flat.max()}")
        flat = np.where(flat < 0, flat + n, flat)
        out = np.empty((flat.size, *self.shape[1:]), self.dtype)
        shards = flat // self.shard_size
        for shard in np.unique(shards):
            chosen = shards == shard
            out[chosen] = self._shard(int(shard))[flat[chosen] - shard * self.shard_size]
        return out.reshape(indices.shape + self.shape[1:])

    def __array__(self, dtype=None, copy=None):
        values = self[np.arange(self.shape[0])]
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, dtype={self.dtype}, shards={len(self._files)})"


class TeacherCache:
    """A complete cache folder: teacher logits (and taps) by example index.

    Open one with :meth:`open` (or get it from :func:`build_teacher_cache`). ``logits`` and :meth:`features`
    are :class:`ShardedArray` views; :meth:`lookup` returns float32 rows; :func:`with_cached_teacher` adds
    them to a ``tf.data`` stream.

    Attributes:
        path: the cache folder.
        manifest: the parsed ``manifest.json``.
        key: the :class:`CacheKey`.
        num_examples: rows (the pool size).
        taps: ``{name: storage}`` of the stored taps.
        bad_indices: int64 rows whose image could not be read (their outputs are NaN; ``on_bad_file="nan"``).
        build_stats: for a cache returned by a build, what the build did (shards computed / reused, seconds).

    Example:

    ```python
    cache = TeacherCache.open("runs/teacher_cache/3f2a9c0d51e6b7aa")
    teacher_logits = cache.lookup(batch["index"])
    ```
    """

    def __init__(self, path: str | os.PathLike, manifest: Mapping[str, Any]):
        self.path = Path(path)
        self.manifest = dict(manifest)
        self.key = CacheKey.from_dict(manifest["key"])
        self.num_examples = int(manifest["num_examples"])
        self.taps = {name: spec["storage"] for name, spec in manifest["outputs"].items() if name != LOGITS}
        self.bad_indices = np.asarray([bad["index"] for bad in manifest.get("bad_examples", [])], np.int64)
        self.build_stats: dict[str, Any] = {}
        shard_size = int(manifest["shard_size"])
        self._arrays = {}
        for name, spec in manifest["outputs"].items():
            files = [self.path / shard["files"][name] for shard in manifest["shards"]]
            self._arrays[name] = ShardedArray(
                files, self.num_examples, shard_size, tuple(spec["shape"]), spec["dtype"]
            )

    @classmethod
    def open(cls, path: str | os.PathLike) -> TeacherCache:
        """Opens a complete cache folder (or its ``manifest.json``).

        Raises:
            IncompleteCacheError: the build has not finished (killed, or parts not merged yet).
            CacheError: not a cache, or a manifest of another format.
        """
        path = Path(path)
        if path.name == MANIFEST:
            path = path.parent
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            if (path / SPEC).is_file():
                spec = _read_json(path / SPEC)
                done = len(glob.glob(os.fspath(path / f"{LOGITS}.*.npy")))
                raise IncompleteCacheError(
                    path,
                    f"incomplete teacher cache ({done} of {spec.get('num_shards', '?')} logit shards on "
                    "disk, no manifest): run the same build again to resume, or merge the parts",
                )
            raise CacheError(path, f"not a teacher cache (no {MANIFEST})")
        manifest = _read_json(manifest_path)
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise CacheError(
                manifest_path,
                f"not a {FORMAT} v{FORMAT_VERSION} manifest "
                f"(format {manifest.get('format')!r}, version {manifest.get('version')!r})",
            )
        return cls(path, manifest)

    @property
    def logits(self) -> ShardedArray:
        """float32 ``(num_examples, K)`` teacher logits, memory-mapped."""
        return self._arrays[LOGITS]

    @property
    def num_logits(self) -> int:
        return self.logits.shape[1]

    def features(self, tap: str) -> ShardedArray:
        """The stored outputs of ``tap`` (float16/float32 maps, or float32 pooled vectors)."""
        if tap not in self.taps:
            raise KeyError(f"{self.path}: tap {tap!r} is not cached; cached taps: {sorted(self.taps)}")
        return self._arrays[tap]

    def lookup(self, indices) -> np.ndarray:
        """float32 logits of the examples ``indices`` (any int array shape; rows appended as the last axis).

        Example:

        ```python
        cache.lookup(np.array([0, 5]))  # (2, K)
        ```
        """
        return np.asarray(self.logits[np.asarray(indices)], np.float32)

    def lookup_features(self, tap: str, indices) -> np.ndarray:
        """float32 outputs of ``tap`` for ``indices``."""
        return np.asarray(self.features(tap)[np.asarray(indices)], np.float32)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (
            f"TeacherCache({os.fspath(self.path)!r}, examples={self.num_examples}, logits={self.num_logits}, "
            f"taps={self.taps})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise CacheError(path, f"cannot read JSON ({error})") from None


def _write_json(path: Path, values: Mapping[str, Any]) -> None:
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------- tf.data


def with_cached_teacher(
    dataset,
    cache: TeacherCache,
    taps: Sequence[str] = (),
    num_parallel_calls: int | None = None,
):
    """Adds cached teacher logits (and taps) to a ``tf.data`` stream of dicts carrying ``index``.

    Each element gets ``teacher_logits`` (float32, ``index.shape + (K,)``) and, for each tap in ``taps``,
    ``schema.TEACHER_TAP_PREFIX + tap`` (float32; the key the ``Distiller`` reads). Works on batched
    (``index`` of shape ``(B,)``) and unbatched streams. The rows are read from the memory-mapped shards
    through ``tf.numpy_function`` per element, so memory does not grow with the pool. Under a multi-worker
    strategy every worker needs the cache folder (a shared file system).

    Args:
        dataset: ``tf.data.Dataset`` of dicts with :data:`kd_keras.data.schema.INDEX` (int), the row of the
            example in the pool the cache was built over.
        cache: an open :class:`TeacherCache`.
        taps: cached taps to add (default none).
        num_parallel_calls: parallelism of the lookup map (default ``tf.data.AUTOTUNE``).

    Example:

    ```python
    stream = with_cached_teacher(pipeline.make_dataset(pool, config, 64), cache)
    distiller.fit(stream, epochs=10)  # the teacher is not run
    ```
    """
    import tensorflow as tf

    taps = tuple(taps)
    for tap in taps:
        cache.features(tap)  # a clear error now rather than inside tf.data
    spec = dataset.element_spec
    if not isinstance(spec, Mapping) or schema.INDEX not in spec or not spec[schema.INDEX].dtype.is_integer:
        keys_found = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
        raise ValueError(
            f"with_cached_teacher needs dict elements with an integer {schema.INDEX!r}; got {keys_found}"
        )
    arrays = [cache.logits] + [cache.features(t) for t in taps]
    keys = [schema.TEACHER_LOGITS] + [schema.TEACHER_TAP_PREFIX + t for t in taps]
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls

    def rows(index):
        index = np.asarray(index)
        return [np.asarray(array[index], np.float32) for array in arrays]

    def add(element):
        index = element[schema.INDEX]
        values = tf.numpy_function(rows, [index], [tf.float32] * len(arrays), name="teacher_cache_lookup")
        out = dict(element)
        for key, value, array in zip(keys, values, arrays, strict=True):
            value.set_shape(index.shape.concatenate(array.shape[1:]))
            out[key] = value
        return out

    return dataset.map(add, num_parallel_calls=parallel)


# ------------------------------------------------------------------------------------------ pseudo-labels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def argmax_pseudo_labels(logits: np.ndarray) -> np.ndarray:
    """Hard pseudo-labels of a softmax head: the teacher's argmax class (study 002).

    Args:
        logits: ``(N, K)`` with ``K >= 2``.

    Returns:
        int64 ``(N,)``.

    Example:
        >>> argmax_pseudo_labels(np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])).tolist()
        [1, 0]
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"argmax pseudo-labels need (N, K>=2) logits, got {logits.shape}; "
            "use threshold_pseudo_labels for a 1-logit head"
        )
    return np.argmax(logits, axis=1).astype(np.int64)


def threshold_pseudo_labels(logits: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard pseudo-labels of sigmoid heads: 1 where ``sigmoid(z) > threshold`` (study 003: 0.5, ``z > 0``).

    Args:
        logits: ``(N, 1)`` (a binary head: returns ``(N,)``) or ``(N, L)`` multi-label (returns ``(N, L)``).
        threshold: probability threshold in (0, 1).

    Returns:
        float32 0/1 labels, the form the data layer uses for one-logit and multi-label heads.

    Example:
        >>> threshold_pseudo_labels(np.array([[2.0], [-0.5], [0.0]])).tolist()
        [1.0, 0.0, 0.0]
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, L), got {logits.shape}")
    labels = (_sigmoid(logits) > threshold).astype(np.float32)
    return labels[:, 0] if logits.shape[1] == 1 else labels


def soft_targets(logits: np.ndarray, temperature: float = 1.0, task: str = "auto") -> np.ndarray:
    """Temperature soft targets (Hinton et al. 2015): ``softmax(z / T)``; ``sigmoid(z / T)`` for a sigmoid.

    Args:
        logits: ``(N, K)``.
        temperature: ``T > 0`` (1: plain probabilities; larger: softer).
        task: ``"auto"`` (one logit: sigmoid, else softmax), ``"multiclass"``, ``"binary"`` or
            ``"multilabel"`` (independent sigmoids); as :mod:`kd_keras.engine.losses`.

    Returns:
        float32 ``(N, K)``: rows summing to 1 (softmax), or per-logit positive-class probabilities (sigmoid;
        the pair ``[1 - p, p]`` is ``softmax([0, z] / T)``).

    Example:
        >>> soft_targets(np.array([[0.0, np.log(3.0)]]), temperature=1.0).round(4).tolist()
        [[0.25, 0.75]]
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got {logits.shape}")
    if task == "auto":
        task = "binary" if logits.shape[1] == 1 else "multiclass"
    if task in ("binary", "multilabel"):
        return _sigmoid(logits / temperature).astype(np.float32)
    if task != "multiclass":
        raise ValueError(f"task must be 'auto', 'multiclass', 'binary' or 'multilabel', got {task!r}")
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------- building


class _Pool:
    """Uniform access to the examples of a pool: its size, one preprocessed image, a name for messages."""

    def __init__(
        self,
        data: Records | Sequence[str | os.PathLike] | np.ndarray | str | os.PathLike,
        config: PreprocessConfig,
    ):
        self.config = config
        self.images: np.ndarray | None = None
        self.array_index: np.ndarray | None = None
        self.paths: Sequence[str] | None = None
        if isinstance(data, (str, os.PathLike)):
            from kd_keras.data.sources import from_folder

            data = from_folder(data)
        self.records = data if isinstance(data, Records) else None
        if isinstance(data, Records):
            if data.paths is not None:
                self.paths = [os.fspath(p) for p in data.paths]
            else:
                self.images, self.array_index = data.images, np.asarray(data.array_index, np.int64)
        elif isinstance(data, np.ndarray) and data.dtype != object:
            if data.ndim not in (3, 4):
                raise ValueError(f"an image array pool must be (N, H, W[, C]), got shape {data.shape}")
            self.images = data
        else:
            self.paths = [os.fspath(p) for p in data]
        self.data = data

    def __len__(self) -> int:
        if self.paths is not None:
            return len(self.paths)
        return len(self.array_index) if self.array_index is not None else len(self.images)

    def describe(self, i: int) -> str:
        if self.paths is not None:
            return self.paths[i]
        return f"<array>[{int(self.array_index[i]) if self.array_index is not None else i}]"

    def load(self, i: int) -> np.ndarray:
        if self.paths is not None:
            return load_image(self.paths[i], self.config)
        row = int(self.array_index[i]) if self.array_index is not None else i
        return preprocess(self.images[row], self.config)


def _load_batch(
    pool: _Pool, start: int, stop: int, on_bad_file: str
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    shape = (*pool.config.image_size, pool.config.channels)
    batch = np.empty((stop - start, *shape), np.float32)
    bad = []
    for row, i in enumerate(range(start, stop)):
        try:
            batch[row] = pool.load(i)
        except ImageReadError as error:
            if on_bad_file == "raise":
                raise
            batch[row] = 0.0
            bad.append((i, error.problem))
        except ValueError as error:  # decoded, but preprocessing refused it (e.g. an odd layout)
            raise CacheError(pool.describe(i), f"preprocessing failed: {error}") from None
    return batch, bad


def _batches(pool: _Pool, start: int, stop: int, batch_size: int, workers: int, on_bad_file: str) -> Iterator:
    """Preprocessed batches of rows ``start..stop`` in order; ``workers`` batches decode ahead in threads
    (OpenCV releases the GIL), so at most ``workers + 1`` batches of pixels are in memory."""
    bounds = [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as executor:
        pending: deque = deque()
        for begin, end in bounds:
            pending.append((begin, executor.submit(_load_batch, pool, begin, end, on_bad_file)))
            if len(pending) > max(1, workers):
                begin_ready, future = pending.popleft()
                yield (begin_ready, *future.result())
        while pending:
            begin_ready, future = pending.popleft()
            yield (begin_ready, *future.result())


class _Teacher:
    """Loads the teacher on first use (never when every shard is reused) and runs it batch by batch."""

    def __init__(self, teacher: Any, taps: Sequence[str], input_shape: tuple[int, ...]):
        self._source = teacher
        self._taps = list(taps)
        self._input_shape = input_shape
        self._model = None
        self.calls = 0

    def _build(self):
        import keras

        teacher = self._source
        if isinstance(teacher, (str, os.PathLike)):
            from kd_keras.models import list_models

            list_models()  # imports every model family, registering the custom layers a saved model may use
            try:
                teacher = keras.models.load_model(os.fspath(teacher), compile=False)
            except Exception as error:  # noqa: BLE001 - one line naming the file, not a deep traceback
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise CacheError(self._source, f"cannot load the teacher ({first})") from None
        expected = tuple(teacher.input_shape[1:])
        if len(expected) != 3 or any(
            e is not None and e != g for e, g in zip(expected, self._input_shape, strict=True)
        ):
            raise CacheError(
                getattr(teacher, "name", "teacher"),
                f"teacher takes inputs of shape {expected}, the preprocessing gives "
                f"{self._input_shape}; set image_size/channels to the teacher's",
            )
        if self._taps:
            from kd_keras.models.registry import with_taps

            teacher = with_taps(teacher, self._taps)
        self._model = teacher

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        if self._model is None:
            self._build()
        self.calls += 1
        outputs = self._model.predict_on_batch(images)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [np.asarray(o) for o in outputs]


def _file_name(output: str, shard: int) -> str:
    if output == LOGITS:
        return f"{LOGITS}.{shard:05d}.npy"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", output)
    return f"tap-{safe}.{shard:05d}.npy"


def _bad_name(shard: int) -> str:
    return f"bad.{shard:05d}.json"


def _shard_bounds(shard: int, shard_size: int, num_examples: int) -> tuple[int, int]:
    return shard * shard_size, min((shard + 1) * shard_size, num_examples)


def _rows_in(path: Path) -> int | None:
    """Rows of a complete ``.npy`` file, or ``None`` when it is missing or unreadable."""
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None


def _shard_complete(folder: Path, shard: int, outputs: Sequence[str], rows: int) -> bool:
    return all(_rows_in(folder / _file_name(name, shard)) == rows for name in outputs)


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


def _compute_shard(
    folder: Path,
    shard: int,
    start: int,
    stop: int,
    pool: _Pool,
    teacher: _Teacher,
    taps: Mapping[str, str],
    batch_size: int,
    workers: int,
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
    bad_examples = []
    try:
        for begin, images, bad in _batches(pool, start, stop, batch_size, workers, on_bad_file):
            outputs = teacher(images)
            if len(outputs) != len(names):
                raise CacheError(
                    "teacher", f"returned {len(outputs)} outputs, expected {len(names)} ({names})"
                )
            for name, value in zip(names, outputs, strict=True):
                value = _store(value, storages[name], name)
                if name not in writers:
                    writers[name] = np.lib.format.open_memmap(
                        temporaries[name],
                        mode="w+",
                        dtype=value.dtype,
                        shape=(stop - start, *value.shape[1:]),
                    )
                writer = writers[name]
                if value.shape[1:] != writer.shape[1:]:
                    raise CacheError(
                        name, f"output shape changed between batches: {value.shape[1:]} vs {writer.shape[1:]}"
                    )
                rows = slice(begin - start, begin - start + len(value))
                writer[rows] = value
                for i, _ in bad:
                    writer[i - start] = np.nan
            bad_examples.extend({"index": i, "example": pool.describe(i), "problem": p} for i, p in bad)
        for name in names:
            writers[name].flush()
        writers.clear()  # closes the maps before the rename (needed on Windows)
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


def _parse_part(part: tuple[int, int] | str | None) -> tuple[int, int]:
    if part is None:
        return 0, 1
    if isinstance(part, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", part)
        if not match:
            raise ValueError(f"shard must be 'i/n' (e.g. '0/4'), got {part!r}")
        part = int(match.group(1)), int(match.group(2))
    index, count = int(part[0]), int(part[1])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard i/n needs n >= 1 and 0 <= i < n (i counts from 0), got {index}/{count}")
    return index, count


def part_shards(part: tuple[int, int], num_shards: int) -> range:
    """The shards part ``i`` of ``n`` computes: the ``i``-th of ``n`` contiguous, near-equal runs.

    Example:
        >>> list(part_shards((1, 3), 7))
        [2, 3, 4]
    """
    index, count = part
    return range(index * num_shards // count, (index + 1) * num_shards // count)


@dataclasses.dataclass
class CachePart:
    """What one ``part=(i, n)`` build wrote: merge the parts with :func:`merge_teacher_cache`.

    Attributes:
        path: the cache folder the part's shards are in.
        part: ``(i, n)``.
        shards: the shard numbers of this part.
        build_stats: shards computed and reused, teacher batches, seconds.
    """

    path: Path
    part: tuple[int, int]
    shards: range
    build_stats: dict[str, Any]


def _spec(
    key: CacheKey, config, num_examples: int, shard_size: int, taps: Mapping[str, str]
) -> dict[str, Any]:
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key.to_dict(),
        "key_digest": key.digest,
        "num_examples": int(num_examples),
        "shard_size": int(shard_size),
        "num_shards": -(-int(num_examples) // int(shard_size)),
        "taps": dict(taps),
        "preprocessing": json.loads(json.dumps(values, default=list)),
    }


def _check_spec(folder: Path, spec: Mapping[str, Any]) -> None:
    """Writes the spec of a new cache folder, or checks that an existing (partial) one matches."""
    path = folder / SPEC
    if not path.exists():
        _write_json(path, spec)
        return
    existing = _read_json(path)
    for field in ("key", "num_examples", "shard_size", "taps"):
        if existing.get(field) != spec[field]:
            raise CacheError(
                path,
                f"this cache folder was started with {field}={existing.get(field)!r}, this run "
                f"asks for {spec[field]!r}; use the same settings to resume, or another --out",
            )


def _outputs_of(folder_of_shard: Mapping[int, Path], spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{output: {shape, dtype, storage}}`` read from the headers of shard 0 (every shard has the same)."""
    outputs = {}
    first = folder_of_shard[0]
    for name, storage in [(LOGITS, "float32"), *spec["taps"].items()]:
        mapped = np.load(first / _file_name(name, 0), mmap_mode="r")
        outputs[name] = {"shape": list(mapped.shape[1:]), "dtype": str(mapped.dtype), "storage": storage}
    return outputs


def _write_manifest(
    cache_dir: Path, spec: Mapping[str, Any], folder_of_shard: Mapping[int, Path], parts: int
) -> TeacherCache:
    outputs = _outputs_of(folder_of_shard, spec)
    shards, bad_examples = [], []
    for shard in range(spec["num_shards"]):
        bad_path = folder_of_shard[shard] / _bad_name(shard)
        if bad_path.is_file():
            bad_examples.extend(_read_json(bad_path)["bad_examples"])
        start, stop = _shard_bounds(shard, spec["shard_size"], spec["num_examples"])
        relative = os.path.relpath(folder_of_shard[shard], cache_dir)
        files = {name: Path(relative, _file_name(name, shard)).as_posix() for name in outputs}
        shards.append({"start": start, "stop": stop, "files": files})
    manifest = {
        **spec,
        "outputs": outputs,
        "shards": shards,
        "parts": parts,
        "bad_examples": sorted(bad_examples, key=lambda b: b["index"]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(cache_dir / MANIFEST, manifest)
    return TeacherCache(cache_dir, manifest)


def _part_name(part: tuple[int, int]) -> str:
    return f"part-{part[0]}-of-{part[1]}.json"


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
    pool = _Pool(pool_data, config)
    num_examples = len(pool)
    if num_examples == 0:
        raise CacheError(out_dir, "the pool holds no examples")
    key = make_cache_key(
        teacher,
        pool.data,
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
        _compute_shard(cache_dir, shard, start, stop, pool, runner, taps, batch_size, workers, on_bad_file)
        stats["shards_computed"] += 1
        stats["teacher_batches"] += runner.calls - calls
        stats["examples_computed"] += stop - start
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
    workers: int = 2,
    on_shard_done: Callable[[int], None] | None = None,
) -> TeacherCache:
    """Computes (or reuses, or resumes) the teacher-output cache of ``pool`` under ``out_dir/<key digest>``.

    The pool is read in order, unaugmented, ``batch_size`` images at a time (never the whole pool in memory),
    through the data layer's :func:`~kd_keras.data.preprocess.load_image`; the teacher runs in inference mode
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
        on_bad_file: ``"raise"`` (default: one line naming the file) or ``"nan"`` (its outputs are NaN; listed
            in the manifest and ``cache.bad_indices``: leave those indices out of the stream).
        workers: batches decoded ahead in threads.
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
        "workers": 2,
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


def merge_teacher_cache(
    cache_dir: str | os.PathLike,
    part_dirs: Sequence[str | os.PathLike] = (),
    expected_key: CacheKey | None = None,
) -> TeacherCache:
    """Checks that every part of a sharded build is present with one key, and writes the manifest.

    Args:
        cache_dir: the cache folder (``<out>/<key digest>``) the manifest is written to; it may hold parts.
        part_dirs: other folders holding parts (one per worker); the manifest points at their shard files
            by relative path, so nothing is copied (keep them where they are).
        expected_key: refuse parts of any other key (the CLI passes the key of its arguments).

    Raises:
        CacheError: a part missing, parts of different keys or splits, or a shard file missing or short.

    Example:

    ```python
    cache = merge_teacher_cache("runs/teacher_cache/3f2a9c0d51e6b7aa")
    ```
    """
    cache_dir = Path(cache_dir)
    if (cache_dir / MANIFEST).is_file():
        cache = TeacherCache.open(cache_dir)
        if expected_key is not None and cache.key != expected_key:
            raise CacheError(cache_dir, "holds a cache of another key")
        return cache
    folders = [cache_dir, *(Path(p) for p in part_dirs)]
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    counts, keys = set(), set()
    for folder in folders:
        for path in sorted(glob.glob(os.fspath(folder / "part-*-of-*.json"))):
            record = _read_json(Path(path))
            key = CacheKey.from_dict(record["key"])
            if expected_key is not None and key != expected_key:
                raise CacheError(
                    path,
                    f"part of another cache (key {key.digest}, expected {expected_key.digest}): "
                    "different teacher, data, preprocessing or taps",
                )
            keys.add(key)
            index, count = record["part"]
            counts.add(count)
            if index in found and found[index][0] != folder:
                raise CacheError(path, f"part {index}/{count} found twice ({found[index][0]} and {folder})")
            found[index] = (folder, record)
    if not found:
        raise CacheError(cache_dir, "no parts to merge (no part-*-of-*.json here or in part_dirs)")
    if len(keys) > 1:
        raise CacheError(
            cache_dir, f"parts of {len(keys)} different keys: " + ", ".join(sorted(k.digest for k in keys))
        )
    if len(counts) > 1:
        raise CacheError(
            cache_dir, f"parts of different splits n={sorted(counts)}: rerun with one --shard i/n count"
        )
    count = counts.pop()
    missing = [i for i in range(count) if i not in found]
    if missing:
        raise CacheError(
            cache_dir,
            "parts missing: " + ", ".join(f"{i}/{count}" for i in missing) + " (run those --shard i/n first)",
        )
    spec = found[0][1]["spec"]
    folder_of_shard: dict[int, Path] = {}
    for index in range(count):
        folder, record = found[index]
        if record["spec"] != spec:
            raise CacheError(
                folder / _part_name((index, count)), "part layout differs from part 0 (shard size?)"
            )
        expected = list(part_shards((index, count), spec["num_shards"]))
        if record["shards"] != expected:
            raise CacheError(
                folder / _part_name((index, count)), f"covers shards {record['shards']}, expected {expected}"
            )
        for shard in expected:
            start, stop = _shard_bounds(shard, spec["shard_size"], spec["num_examples"])
            if not _shard_complete(folder, shard, [LOGITS, *spec["taps"]], stop - start):
                raise CacheError(folder, f"shard {shard} of part {index}/{count} is missing or short")
            folder_of_shard[shard] = folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    if not (cache_dir / SPEC).exists():
        _write_json(cache_dir / SPEC, spec)
    return _write_manifest(cache_dir, spec, folder_of_shard, count)


# ---------------------------------------------------------------------------------------------------- CLI


def _image_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:[xX,](\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _tap_argument(text: str) -> tuple[str, str]:
    name, _, storage = text.partition(":")
    storage = storage or "float16"
    if storage not in TAP_STORAGES:
        raise argparse.ArgumentTypeError(f"tap storage must be one of {TAP_STORAGES}, got {storage!r}")
    return name, storage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kd_keras.engine.teacher_cache",
        description="Compute (once) the teacher's logits over an unaugmented image folder into a sharded, "
        "memory-mapped cache keyed by teacher, data and preprocessing.",
    )
    parser.add_argument("--teacher", required=True, help="saved teacher (.keras)")
    parser.add_argument("--pool", required=True, help="image folder, read recursively in sorted path order")
    parser.add_argument(
        "--image-size", required=True, type=_image_size, help="N or HxW (the teacher's input)"
    )
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--clahe", action="store_true", help="per-channel CLAHE (study 000)")
    parser.add_argument("--clahe-clip", type=float, default=2.0)
    parser.add_argument("--clahe-grid", type=int, default=8)
    parser.add_argument("--fundus-crop", action="store_true")
    parser.add_argument("--out", required=True, help="parent folder of cache folders")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shard", metavar="i/n", help="compute only part i of n (i from 0), for one worker")
    mode.add_argument(
        "--merge", action="store_true", help="check that all parts are there and write the manifest"
    )
    parser.add_argument(
        "--parts",
        nargs="*",
        default=(),
        metavar="OUT",
        help="with --merge: other --out folders holding parts (one per worker)",
    )
    parser.add_argument(
        "--taps",
        nargs="*",
        default=(),
        type=_tap_argument,
        metavar="LAYER[:STORAGE]",
        help="feature taps to store too; storage float16 (default), float32 or pooled",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--data-fingerprint", help="your data version, instead of stat-ing every file")
    parser.add_argument("--on-bad-file", choices=ON_BAD_FILE, default="raise")
    parser.add_argument("--workers", type=int, default=2, help="batches decoded ahead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (1 with one line on stderr for bad input)."""
    args = _parser().parse_args(argv)
    from kd_keras.data.sources import from_folder
    from kd_keras.data.validate import DataError

    try:
        config = PreprocessConfig(
            image_size=args.image_size,
            channels=args.channels,
            clahe=args.clahe,
            clahe_clip=args.clahe_clip,
            clahe_grid=args.clahe_grid,
            fundus_crop=args.fundus_crop,
        )
        records = from_folder(args.pool)
        if records.report.counts().get("skipped"):
            print(records.report.format_summary(), file=sys.stderr)
        taps = dict(args.taps)
        options = {
            "taps": taps,
            "batch_size": args.batch_size,
            "shard_size": args.shard_size,
            "data_fingerprint": args.data_fingerprint,
            "on_bad_file": args.on_bad_file,
            "workers": args.workers,
        }
        if args.merge:
            key = make_cache_key(args.teacher, records, config, taps, data_fingerprint=args.data_fingerprint)
            cache = merge_teacher_cache(
                Path(args.out) / key.digest, [Path(p) / key.digest for p in args.parts], expected_key=key
            )
            print(f"merged {cache.manifest['parts']} parts: {cache}")
            return 0

        def progress(shard: int) -> None:
            print(f"shard {shard} written", file=sys.stderr, flush=True)

        if args.shard:
            result = build_cache_part(
                args.teacher, records, config, args.out, args.shard, on_shard_done=progress, **options
            )
        else:
            result = build_teacher_cache(
                args.teacher, records, config, args.out, on_shard_done=progress, **options
            )
        stats = result.build_stats
        print(
            f"{result.path}: {stats['shards_computed']} shards computed, {stats['shards_reused']} reused, "
            f"{stats['examples_computed']} images in {stats['seconds']:.1f} s"
            + (
                ""
                if isinstance(result, TeacherCache)
                else f" (part {result.part[0]}/{result.part[1]}; run --merge when every part is done)"
            )
        )
        return 0
    except (CacheError, ImageReadError, DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
