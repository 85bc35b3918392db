"""The table every data source resolves to: one row per example, held as parallel NumPy arrays.

A :class:`Records` holds *where* each image is (a path, or a row of an in-memory array for ``.npz`` sources), its
label, its patient and, when the dataset ships its own split, that split. It never holds decoded pixels of a
file-based source, so a pool of half a million B-scans costs only its paths in memory; the tf.data pipeline
(:mod:`kd_keras.data.pipeline`) reads and decodes the files as it streams.

Labels:

- ``task="multiclass"`` or ``"binary"``: ``labels`` is int64 ``(N,)``, an index into ``class_names``.
- ``task="multilabel"``: ``labels`` is float32 ``(N, K)``, one column per name in ``class_names``: 1 positive,
  0 negative, and -1 for an uncertain label kept by the ``"ignore"`` policy (a loss must mask ``label < 0``).
- ``task="unlabeled"``: ``labels`` is int64 ``(N,)`` filled with -1 and ``class_names`` is empty.

``labeled`` is a bool ``(N,)`` mask: all True for a labeled source, all False for an unlabeled pool, mixed after
:meth:`Records.concat` (the labeled/unlabeled stream of study 002).

Example:

```python
from kd_keras.data.sources import from_class_folders

records = from_class_folders("OCT2017/train")
print(len(records), records.class_names, records.class_counts())
train = records.subset(records.patients != "1016042")
```
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from kd_keras.data.report import DataReport

TASKS = ("multiclass", "binary", "multilabel", "unlabeled")


@dataclass
class Records:
    """A resolved data source: parallel arrays, one row per example.

    Args:
        paths: object array of absolute file paths (``None`` for an array source).
        labels: int64 ``(N,)`` class indices (-1 unlabeled) or float32 ``(N, K)`` multi-hot (see module docs).
        patients: object array of patient ids (strings); an example without one is its own patient.
        class_names: names of the classes (multi-class/binary) or of the label columns (multi-label).
        task: one of ``"multiclass"``, ``"binary"``, ``"multilabel"``, ``"unlabeled"``.
        labeled: bool ``(N,)``; defaults to ``task != "unlabeled"`` for every row.
        given_split: object array of the split the dataset itself assigns (``"train"``, ``"val"``, ``"test"``,
            from ``train/``-style subfolders or a CSV column), or ``None``.
        images: for array sources (``.npz``), the image array ``(M, H, W[, C])``; ``array_index`` then says
            which row of it each example is.
        array_index: int64 ``(N,)`` rows of ``images``, or ``None``.
        root: the data root every path lies under (``None`` for an array source).
        patient_rule: how ``patients`` was obtained (a rule name of :mod:`kd_keras.data.patients`, ``"column:<name>"``
            or ``"none"``).
        report: the :class:`kd_keras.data.report.DataReport` collecting what was skipped, refused or noted.
    """

    paths: np.ndarray | None
    labels: np.ndarray
    patients: np.ndarray
    class_names: tuple[str, ...]
    task: str
    labeled: np.ndarray | None = None
    given_split: np.ndarray | None = None
    images: np.ndarray | None = None
    array_index: np.ndarray | None = None
    root: str | None = None
    patient_rule: str = "none"
    report: DataReport = field(default_factory=DataReport)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        n = len(self.labels)
        if self.labeled is None:
            self.labeled = np.full(n, self.task != "unlabeled", dtype=bool)
        self.class_names = tuple(str(name) for name in self.class_names)
        columns = {"labels": self.labels, "patients": self.patients, "labeled": self.labeled}
        if self.paths is not None:
            columns["paths"] = self.paths
        if self.given_split is not None:
            columns["given_split"] = self.given_split
        if self.array_index is not None:
            columns["array_index"] = self.array_index
        lengths = {name: len(value) for name, value in columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Records columns differ in length: {lengths}")
        if (self.paths is None) == (self.array_index is None):
            raise ValueError("Records need either paths (file source) or images + array_index (array source)")
        if self.array_index is not None and self.images is None:
            raise ValueError("Records with array_index need the images array")
        if self.task == "multilabel":
            if self.labels.ndim != 2 or self.labels.shape[1] != len(self.class_names):
                raise ValueError(f"multi-label labels must be (N, {len(self.class_names)}), got {self.labels.shape}")
        elif self.labels.ndim != 1:
            raise ValueError(f"{self.task} labels must be 1-D class indices, got shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (multi-class/binary) or label columns (multi-label); 0 for an unlabeled pool."""
        return len(self.class_names)

    def describe_example(self, index: int) -> str:
        """The file path (or ``"<npz>[row]"``) of example ``index``, for messages."""
        if self.paths is not None:
            return str(self.paths[index])
        return f"{self.root or '<array>'}[{int(self.array_index[index])}]"

    def subset(self, indices) -> Records:
        """The rows ``indices`` (int positions or a bool mask), sharing this table's report.

        Example:

        ```python
        normal_only = records.subset(records.labels == records.class_names.index("NORMAL"))
        ```
        """
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)

        def take(column):
            return None if column is None else column[indices]

        return dataclasses.replace(
            self,
            paths=take(self.paths),
            labels=self.labels[indices],
            patients=self.patients[indices],
            labeled=self.labeled[indices],
            given_split=take(self.given_split),
            array_index=take(self.array_index),
        )

    def class_counts(self) -> dict[str, int]:
        """Examples per class (multi-class/binary) or positives per label column (multi-label).

        Example:

        ```python
        from_class_folders("chest_xray/train").class_counts()  # {"NORMAL": 1341, "PNEUMONIA": 3875}
        ```
        """
        if self.task == "unlabeled":
            return {}
        if self.task == "multilabel":
            mask = self.labeled
            return {name: int((self.labels[mask, k] == 1).sum()) for k, name in enumerate(self.class_names)}
        counts = Counter(self.labels[self.labeled].tolist())
        return {name: int(counts.get(k, 0)) for k, name in enumerate(self.class_names)}

    def summary(self) -> dict:
        """A JSON-ready description: size, task, classes and counts, patients, the patient rule, the data root,
        given splits and the report's counts."""
        out = {
            "examples": len(self),
            "labeled": int(self.labeled.sum()),
            "task": self.task,
            "class_names": list(self.class_names),
            "class_counts": self.class_counts(),
            "patients": len(set(self.patients.tolist())),
            "patient_rule": self.patient_rule,
            "root": self.root,
        }
        if self.given_split is not None:
            out["given_split"] = dict(sorted(Counter(self.given_split.tolist()).items()))
        out["report"] = self.report.counts()
        return out

    @staticmethod
    def concat(first: Records, second: Records) -> Records:
        """``first`` followed by ``second``: a labeled table and an unlabeled pool (study 002's pooled stream).

        Unlabeled rows get placeholder labels (0, or a zero vector for multi-label) and ``labeled=False``. Both
        must be file sources (or both array sources over the same ``images``). The report is ``first``'s; the
        second's entries are merged into it.

        Example:

        ```python
        pooled = Records.concat(labeled_records, pool_records)  # rows 0..L-1 labeled, then the pool
        ```
        """
        if second.task != "unlabeled" and (second.task != first.task or second.class_names != first.class_names):
            raise ValueError(
                f"cannot concatenate a {second.task} table with classes {second.class_names} to a {first.task} "
                f"table with classes {first.class_names}"
            )
        if (first.paths is None) != (second.paths is None):
            raise ValueError("cannot concatenate a file source with an array source")
        if first.paths is None and first.images is not second.images:
            raise ValueError("array sources can only be concatenated over the same images array")
        task = first.task if first.task != "unlabeled" else second.task

        def placeholder(records: Records) -> np.ndarray:
            if records.task != "unlabeled":
                return records.labels
            if task == "multilabel":
                return np.zeros((len(records), len(first.class_names or second.class_names)), np.float32)
            return np.zeros(len(records), np.int64) if task != "unlabeled" else records.labels

        def both(a, b):
            if a is None and b is None:
                return None
            a = a if a is not None else np.full(len(first), "", dtype=object)
            b = b if b is not None else np.full(len(second), "", dtype=object)
            return np.concatenate([a, b])

        first.report.merge(second.report)
        return Records(
            paths=both(first.paths, second.paths),
            labels=np.concatenate([placeholder(first), placeholder(second)]),
            patients=np.concatenate([first.patients, second.patients]),
            class_names=first.class_names or second.class_names,
            task=task,
            labeled=np.concatenate([first.labeled, second.labeled]),
            given_split=both(first.given_split, second.given_split),
            images=first.images,
            array_index=None if first.array_index is None else np.concatenate([first.array_index,
                                                                                 second.array_index]),
            root=first.root if first.root == second.root else None,
            patient_rule=first.patient_rule if first.patient_rule == second.patient_rule else "mixed",
            report=first.report,
        )

    def to_csv(self, path: str | os.PathLike) -> None:
        """Writes one row per example (file, label or labels, patient, labeled, given split), e.g. for a run's
        record of exactly which files were used.

        Example:

        ```python
        split["test"].to_csv(run_dir / "test_files.csv")
        ```
        """
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            label_header = list(self.class_names) if self.task == "multilabel" else ["label"]
            writer.writerow(["file", *label_header, "patient", "labeled", "given_split"])
            for i in range(len(self)):
                if self.task == "multilabel":
                    label_cells = [f"{value:g}" for value in self.labels[i]]
                elif self.task == "unlabeled" or not self.labeled[i]:
                    label_cells = [""]
                else:
                    label_cells = [self.class_names[int(self.labels[i])]]
                split = "" if self.given_split is None else self.given_split[i]
                writer.writerow([self.describe_example(i), *label_cells, self.patients[i],
                                 int(self.labeled[i]), split])
