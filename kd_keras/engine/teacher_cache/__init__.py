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

Modules (one job each): :mod:`~kd_keras.engine.teacher_cache.keys` (key, fingerprints, errors),
:mod:`~kd_keras.engine.teacher_cache.store` (sharded memory-mapped store, manifest, layout),
:mod:`~kd_keras.engine.teacher_cache.build` (the teacher over the pool, read through
:func:`kd_keras.data.pipeline.make_dataset`), :mod:`~kd_keras.engine.teacher_cache.merge` (parts into one
cache), :mod:`~kd_keras.engine.teacher_cache.lookup` (the tf.data join), :mod:`~kd_keras.engine.teacher_cache.cli`
(command line). Pseudo-labels from cached logits live in :mod:`kd_keras.engine.pseudo_labels`;
``argmax_pseudo_labels``, ``threshold_pseudo_labels`` and ``soft_targets`` stay importable from here.
"""

from __future__ import annotations

from typing import Any

from kd_keras.engine.teacher_cache.build import as_records, build_cache_part, build_teacher_cache
from kd_keras.engine.teacher_cache.cli import add_cache_arguments, build_main, main, merge_main, run_cache_command
from kd_keras.engine.teacher_cache.keys import (
    FORMAT,
    FORMAT_VERSION,
    LOGITS,
    MANIFEST,
    ON_BAD_FILE,
    SPEC,
    TAP_STORAGES,
    CacheError,
    CacheKey,
    IncompleteCacheError,
    fingerprint_data,
    fingerprint_preprocessing,
    fingerprint_teacher,
    make_cache_key,
)
from kd_keras.engine.teacher_cache.lookup import with_cached_teacher
from kd_keras.engine.teacher_cache.merge import merge_teacher_cache
from kd_keras.engine.teacher_cache.store import CachePart, ShardedArray, TeacherCache, part_shards

# Moved to kd_keras.engine.pseudo_labels (which imports this package to build the cache): re-exported lazily,
# so the import graph has no cycle.
_PSEUDO_LABEL_HELPERS = ("argmax_pseudo_labels", "threshold_pseudo_labels", "soft_targets")

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LOGITS",
    "MANIFEST",
    "ON_BAD_FILE",
    "SPEC",
    "TAP_STORAGES",
    "CacheError",
    "CacheKey",
    "CachePart",
    "IncompleteCacheError",
    "ShardedArray",
    "TeacherCache",
    "add_cache_arguments",
    "argmax_pseudo_labels",
    "as_records",
    "build_cache_part",
    "build_main",
    "build_teacher_cache",
    "fingerprint_data",
    "fingerprint_preprocessing",
    "fingerprint_teacher",
    "main",
    "make_cache_key",
    "merge_main",
    "merge_teacher_cache",
    "part_shards",
    "run_cache_command",
    "soft_targets",
    "threshold_pseudo_labels",
    "with_cached_teacher",
]


def __getattr__(name: str) -> Any:
    if name in _PSEUDO_LABEL_HELPERS:
        from kd_keras.engine import pseudo_labels

        return getattr(pseudo_labels, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
