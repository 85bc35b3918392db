"""The tf.data join: cached teacher logits (and taps) added to a stream of dicts by example ``index``.

Example:

```python
from kd_keras.engine.teacher_cache import with_cached_teacher

stream = with_cached_teacher(pipeline.make_dataset(pool, config, 64, augmenter=augmenter), cache)
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kd_keras.data import schema
from kd_keras.engine.teacher_cache.store import TeacherCache

__all__ = ["with_cached_teacher"]


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
