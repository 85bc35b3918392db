"""Training streams over records, with one rule for keeping decoded images in memory.

- :func:`fits_in_memory`: whether ``count`` decoded float32 images of a preprocessing fit under
  :data:`CACHE_LIMIT_BYTES` (1 GiB): then the stream caches them after the first pass, otherwise every epoch
  decodes from disk. Every study and the engine ask this one function.
- :func:`train_stream`: the batched training stream of a recipe stage (cache decided by :func:`fits_in_memory`,
  augmentation after the cache so every epoch differs, optional replacement labels for pseudo-labels).

Example:

```python
from kd_keras.engine.streams import fits_in_memory, train_stream

stream = train_stream(records, config, 32, augmenter=augmenter, seed=0)
fits_in_memory(len(records), config)
```
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import pipeline
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records

# One budget for every in-memory image cache: 1 GiB of decoded float32 pixels. The machines this project runs
# on are shared (2 CPU cores, a few GB free per process), and several stages may hold a cache at once.
CACHE_LIMIT_BYTES = 2**30


def fits_in_memory(count: int, config: PreprocessConfig, limit_bytes: int = CACHE_LIMIT_BYTES) -> bool:
    """Whether ``count`` decoded images of ``config`` (float32, ``image_size`` x ``channels``) fit in
    ``limit_bytes``.

    Example:
        >>> fits_in_memory(1000, PreprocessConfig((224, 224), channels=3))  # 0.6 GB
        True
    """
    return count * math.prod(config.image_size) * config.channels * 4 < limit_bytes


def with_labels(records: Records, labels: np.ndarray) -> Records:
    """``records`` with ``labels`` instead of theirs (pseudo-labels), every row marked labeled.

    Example:
        >>> with_labels(pool, teacher_argmax).labeled.all()
        True
    """
    labels = np.asarray(labels)
    if len(labels) != len(records):
        raise ValueError(f"{len(labels)} labels for {len(records)} records")
    dtype = records.labels.dtype if labels.ndim == 1 else "float32"
    return dataclasses.replace(records, labels=labels.astype(dtype), labeled=np.ones(len(records), bool))


def train_stream(
    records: Records,
    config: PreprocessConfig,
    batch_size: int,
    *,
    augmenter: keras.Layer | None = None,
    view2_augmenter: keras.Layer | None = None,
    seed: int = 0,
    shuffle: bool = True,
    labels: np.ndarray | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """A training stream of batch dicts over ``records``: decoded images cached in memory after the first pass
    when :func:`fits_in_memory`; augmentation after the cache so every epoch differs; the last partial batch kept.

    Args:
        records: the training records.
        config: preprocessing.
        batch_size: examples per batch.
        augmenter, view2_augmenter: see :func:`kd_keras.data.pipeline.make_dataset`.
        seed: shuffle seed.
        shuffle: shuffle every epoch.
        labels: replaces the records' labels (pseudo-labels), same length as ``records``.
        repeat: endless stream (for :func:`kd_keras.engine.train` with ``directory=``, build it in a function).

    Example:
        >>> stream = train_stream(records, config, 32, augmenter=build_augmenter(flip="horizontal"))
    """
    if labels is not None:
        records = with_labels(records, labels)
    return pipeline.make_dataset(
        records,
        config,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        augmenter=augmenter,
        view2_augmenter=view2_augmenter,
        cache=fits_in_memory(len(records), config),
        drop_remainder=False,
        repeat=repeat,
    )
