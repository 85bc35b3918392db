"""In-memory arrays: a MedMNIST-style ``.npz`` (:func:`from_npz`). Re-exported by :mod:`kd_keras.data.sources`.

Example:

```python
from kd_keras.data.source_npz import from_npz

records = from_npz("pneumoniamnist.npz", "train", class_names=("normal", "pneumonia"))
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from kd_keras.data.records import Records
from kd_keras.data.report import DataError, DataReport


def from_npz(
    path: str | os.PathLike,
    split: str | None = "train",
    class_names: Sequence[str] | None = None,
    multilabel: bool | None = None,
) -> Records:
    """A MedMNIST-style ``.npz``: ``<split>_images`` ``(N, H, W[, C])`` and ``<split>_labels`` ``(N,)``/``(N, 1)``
    (multi-class) or ``(N, K)`` 0/1 (multi-label). With ``split=None`` the arrays are ``images`` and ``labels``.

    The images are loaded into memory (MedMNIST sets are small). There are no patient ids: each image is its own
    patient (noted once), so a split is by image.

    Args:
        path: the ``.npz`` file.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None``.
        class_names: names in label order (default ``"0"``, ``"1"``, ...). Rows whose label is not below
            ``len(class_names)`` are skipped (``unknown_label``).
        multilabel: force the task; default: multi-label when labels have more than one column.

    Raises:
        DataError: missing file or arrays, mismatched lengths, non-integer labels, bad image shape or dtype.

    Example:

    ```python
    records = from_npz("pneumoniamnist.npz", "train", class_names=("normal", "pneumonia"))
    ```
    """
    path = os.path.abspath(os.fspath(path))
    report = DataReport()
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (OSError, ValueError) as error:
        raise DataError(path, f"not a readable .npz ({str(error).splitlines()[0]})") from None
    image_key, label_key = (f"{split}_images", f"{split}_labels") if split else ("images", "labels")
    for key in (image_key, label_key):
        if key not in data.files:
            raise report.refuse("bad_table", path, f"no {key!r} array (arrays: {', '.join(data.files)})")
    images, labels = data[image_key], data[label_key]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise report.refuse("bad_table", path, f"{image_key} must be (N, H, W) or (N, H, W, 1|3), got {images.shape}")
    if images.dtype not in (np.uint8, np.uint16) and images.dtype.kind != "f":
        raise report.refuse("bad_table", path, f"{image_key} has unsupported dtype {images.dtype}")
    if len(labels) != len(images):
        raise report.refuse("bad_table", path, f"{len(images)} images but {len(labels)} labels")
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise report.refuse("bad_table", path, f"{label_key} must be integer class indices or 0/1 columns")
    is_multilabel = labels.shape[1] > 1 if multilabel is None else multilabel
    n = len(images)
    keep = np.ones(n, bool)
    if is_multilabel:
        names = tuple(class_names) if class_names is not None else tuple(str(k) for k in range(labels.shape[1]))
        if len(names) != labels.shape[1]:
            raise report.refuse("bad_table", path, f"{len(names)} class names for {labels.shape[1]} label columns")
        bad = ~np.all(np.isin(labels, (0, 1)), axis=1)
        for i in np.flatnonzero(bad):
            report.skip("unknown_label", f"{path}[{i}]", f"multi-label row {i} holds values other than 0/1")
        keep &= ~bad
        label_values = labels.astype(np.float32)
    else:
        if labels.shape[1] != 1:
            raise report.refuse("bad_table", path, f"single-label {label_key} must be (N,) or (N, 1)")
        flat = labels[:, 0].astype(np.int64)
        count = len(class_names) if class_names is not None else int(flat.max()) + 1
        names = tuple(class_names) if class_names is not None else tuple(str(k) for k in range(count))
        bad = (flat < 0) | (flat >= len(names))
        for i in np.flatnonzero(bad):
            report.skip("unknown_label", f"{path}[{i}]", f"label {flat[i]} is not a class index 0..{len(names) - 1}")
        keep &= ~bad
        label_values = flat
    if not keep.any():
        raise report.refuse("no_images", path, "no row with a usable label")
    rows = np.flatnonzero(keep)
    report.note("own_patient", path, "no patient ids in a .npz: each image is its own patient")
    return Records(
        paths=None, labels=label_values[rows], patients=np.asarray([f"row:{i}" for i in rows], dtype=object),
        class_names=names, task="multilabel" if is_multilabel else "multiclass", images=images,
        array_index=rows.astype(np.int64), root=path, patient_rule="none", report=report,
        given_split=np.full(len(rows), split or "", dtype=object) if split else None,
    )
