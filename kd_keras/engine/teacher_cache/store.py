"""The on-disk store of a teacher cache: memory-mapped shard files, the manifest, and the layout helpers the
build and the merge share (file names, shard bounds, parts, spec and manifest writing).

Layout of a cache folder ``<out>/<key digest>/``: ``logits.00000.npy`` ... (float32 ``(rows, K)``),
``tap-<name>.00000.npy`` ... (one per stored tap), ``bad.00000.json`` (unreadable examples of a shard, only if
any), ``cache_spec.json`` (written first), ``part-<i>-of-<n>.json`` (sharded builds) and ``manifest.json``
(written last: a folder without it is never read as a cache).

Example:

```python
from kd_keras.engine.teacher_cache import TeacherCache

cache = TeacherCache.open("runs/teacher_cache/3f2a9c0d51e6b7aa")
cache.lookup([3, 17])  # float32 (2, K), read from the memory-mapped shards
```
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.engine.teacher_cache.keys import (
    FORMAT,
    FORMAT_VERSION,
    LOGITS,
    MANIFEST,
    SPEC,
    CacheError,
    CacheKey,
    IncompleteCacheError,
)

__all__ = ["CachePart", "ShardedArray", "TeacherCache", "part_shards"]

# ----------------------------------------------------------------------------------------------------- reading



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


# ------------------------------------------------------------------------------------------------ layout


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

