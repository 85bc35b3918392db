"""Merging the parts of a sharded teacher-cache build (one part per worker) into one cache: check that every
part is there with one key and layout, then write the manifest pointing at the parts' shard files.

Example:

```python
from kd_keras.engine.teacher_cache import merge_teacher_cache

cache = merge_teacher_cache("/shared/tc/3f2a9c0d51e6b7aa")  # after every --shard i/n finished
```
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_keras.engine.teacher_cache.keys import LOGITS, MANIFEST, SPEC, CacheError, CacheKey
from kd_keras.engine.teacher_cache.store import (
    TeacherCache,
    _part_name,
    _read_json,
    _shard_bounds,
    _shard_complete,
    _write_json,
    _write_manifest,
    part_shards,
)

__all__ = ["merge_teacher_cache"]


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
