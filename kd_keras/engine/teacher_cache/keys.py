"""Cache keys: what a teacher cache was computed from (teacher, data, preprocessing, stored outputs), and the
cache's errors and on-disk constants. Pure Python and NumPy: no TensorFlow.

A :class:`CacheKey` digest names the cache folder; any change of the teacher's weights, the ordered pool files
(paths relative to the root, sizes, modification times), the preprocessing or the stored taps gives another one.

Example:

```python
from kd_keras.engine.teacher_cache import make_cache_key

key = make_cache_key("runs/teacher.keras", pool, config, taps={"conv4_block6_out": "pooled"})
key.digest  # '3f2a9c0d51e6b7aa', the folder name under the cache's --out
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records

FORMAT = "kd-keras-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEC = "cache_spec.json"
LOGITS = "logits"
TAP_STORAGES = ("float16", "float32", "pooled")
ON_BAD_FILE = ("raise", "nan")
_CHUNK = 1 << 20

__all__ = [
    "CacheError",
    "CacheKey",
    "IncompleteCacheError",
    "fingerprint_data",
    "fingerprint_preprocessing",
    "fingerprint_teacher",
    "make_cache_key",
]


class CacheError(ValueError):
    """A cache that cannot be built, read or merged; ``str(error)`` is one line: ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class IncompleteCacheError(CacheError):
    """A cache folder whose build has not finished (no manifest): run the same build again to resume."""


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

