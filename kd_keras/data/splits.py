"""Patient-level splits: train/val/test and k-fold, seeded, stratified where possible, never leaking a patient.

Examples are grouped by patient (:mod:`kd_keras.data.patients`) and whole groups are assigned to parts. With
``duplicates="merge"`` (the default) patients that share a byte-identical file are merged into one group first,
so an exact duplicate can never sit on both sides of a split even if its two copies carry different patient ids
(the Kermany chest X-rays hold 24 sets of identical files; each set happens to stay within one patient).

Assignment is greedy and seeded: groups are visited largest first (random order among equal sizes, from
``seed``), and each goes to the part whose per-class counts and size are furthest below their targets
(``fraction * total``, every class weighted equally). That keeps class proportions close to the whole set's
when there are enough patients (stratification "where possible"): a part cannot be stratified better than the
patients allow. With at least as many patients as parts, no part is left empty. Multi-label sources are
stratified on positives per label; unlabeled pools on size only.

Example:

```python
from kd_keras.data.splits import kfold_by_patient, split_by_patient

parts = split_by_patient(records, fractions=(0.7, 0.15, 0.15), seed=0)  # {"train": Records, "val": ..., "test": ...}
for fold, (train, test) in enumerate(kfold_by_patient(records, k=5, seed=0)):  # study 000's 5-fold CV
    ...
```
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kd_keras.data.records import Records
from kd_keras.data.validate import report_duplicates

DUPLICATE_MODES = ("merge", "report", "ignore")


def _count_matrix(records: Records) -> np.ndarray:
    """Per example: one column per class (1 where the example is of it / positive for it), then a size column."""
    n = len(records)
    if records.task == "multilabel":
        per_class = (records.labels == 1).astype(np.float64)
        per_class[~records.labeled] = 0.0
    elif records.task == "unlabeled" or records.num_classes == 0:
        per_class = np.zeros((n, 0))
    else:
        per_class = np.zeros((n, records.num_classes))
        rows = np.flatnonzero(records.labeled)
        per_class[rows, records.labels[rows]] = 1.0
    return np.concatenate([per_class, np.ones((n, 1))], axis=1)


def assign_groups(
    groups: Sequence,
    fractions: Sequence[float],
    counts: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Assigns whole groups to parts; returns the part index (0..len(fractions)-1) of every example.

    Args:
        groups: group id per example (patients).
        fractions: target share of each part, summing to 1.
        counts: ``(N, C)`` per-example amounts to balance (class indicators and a size column); default size only.
        seed: order among equal-sized groups.

    Example:

    ```python
    part = assign_groups(["a", "a", "b", "c"], (0.5, 0.5), seed=0)  # e.g. [0, 0, 1, 1]
    ```
    """
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or len(fractions) < 2 or np.any(fractions < 0) or abs(fractions.sum() - 1) > 1e-6:
        raise ValueError(f"fractions must be two or more non-negative shares summing to 1, got {fractions.tolist()}")
    keys = np.asarray([str(g) for g in groups], dtype=object)
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    counts = np.ones((n, 1)) if counts is None else np.asarray(counts, np.float64)
    group_counts = np.zeros((len(unique), counts.shape[1]))
    np.add.at(group_counts, inverse, counts)
    totals = group_counts.sum(axis=0)
    weights = 1.0 / np.maximum(totals, 1.0) ** 2  # each class (and size) weighs the same, whatever its frequency
    targets = fractions[:, None] * totals[None, :]
    assigned = np.zeros_like(targets)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    sizes = group_counts[order, -1]
    order = order[np.argsort(-sizes, kind="stable")]
    part_of_group = np.empty(len(unique), np.int64)
    for remaining, g in zip(range(len(order), 0, -1), order, strict=True):
        amount = group_counts[g]
        # Increase of the weighted squared distance to the targets if this group joins each part.
        cost = ((assigned + amount - targets) ** 2 - (assigned - targets) ** 2) @ weights
        cost[fractions == 0] = np.inf
        empty = (fractions > 0) & (assigned[:, -1] == 0)
        if empty.sum() >= remaining:  # no group to spare: fill the parts that are still empty
            cost[~empty] = np.inf
        part = int(np.argmin(cost))
        part_of_group[g] = part
        assigned[part] += amount
    return part_of_group[inverse]


def _groups(records: Records, duplicates: str) -> np.ndarray:
    """Patient per example, with patients sharing identical files merged (``duplicates="merge"``)."""
    if duplicates not in DUPLICATE_MODES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_MODES}, got {duplicates!r}")
    groups = np.asarray([str(p) for p in records.patients], dtype=object)
    if duplicates == "ignore":
        return groups
    duplicate_sets = report_duplicates(records)
    if duplicates == "report" or not duplicate_sets:
        return groups
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    for members in duplicate_sets:
        roots = sorted({find(groups[i]) for i in members})
        for other in roots[1:]:
            parent[other] = roots[0]
    return np.asarray([find(g) for g in groups], dtype=object)


def split_indices(
    groups: Sequence,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    counts: np.ndarray | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Positions of each part (sorted), from :func:`assign_groups`.

    Example:

    ```python
    train_idx, val_idx, test_idx = split_indices(patients, (0.7, 0.15, 0.15), seed=0)
    ```
    """
    part = assign_groups(groups, fractions, counts, seed)
    return [np.flatnonzero(part == k) for k in range(len(fractions))]


def split_by_patient(
    records: Records,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    names: Sequence[str] = ("train", "val", "test"),
    seed: int = 0,
    stratify: bool = True,
    duplicates: str = "merge",
) -> dict[str, Records]:
    """Train/val/test (or any named parts) by patient.

    Args:
        records: the source (labeled or not).
        fractions: share of examples per part, summing to 1.
        names: part names.
        seed: the split's seed; equal seeds give equal splits.
        stratify: balance class counts across parts (else only sizes).
        duplicates: ``"merge"`` patients sharing byte-identical files, ``"report"`` them only (notes), or
            ``"ignore"`` (no hashing).

    Returns:
        ``{name: Records}``; every patient is in exactly one part.

    Raises:
        ValueError: a part with a positive fraction would be empty (too few patients).

    Example:

    ```python
    parts = split_by_patient(from_class_folders("chest_xray/train"), (0.8, 0.1, 0.1), seed=1)
    ```
    """
    if len(names) != len(fractions):
        raise ValueError(f"{len(names)} names for {len(fractions)} fractions")
    groups = _groups(records, duplicates)
    counts = _count_matrix(records) if stratify else None
    parts = split_indices(groups, fractions, counts, seed)
    for name, fraction, rows in zip(names, fractions, parts, strict=True):
        if fraction > 0 and len(rows) == 0:
            raise ValueError(f"split {name!r} is empty: {len(set(groups.tolist()))} patients are too few for "
                             f"fractions {tuple(fractions)}")
    return {name: records.subset(rows) for name, rows in zip(names, parts, strict=True)}


def kfold_by_patient(
    records: Records,
    k: int = 5,
    seed: int = 0,
    stratify: bool = True,
    duplicates: str = "merge",
) -> list[tuple[Records, Records]]:
    """``k`` folds by patient: a list of ``(train, test)``; each example is in exactly one test fold.

    Example:

    ```python
    for train, test in kfold_by_patient(records, k=5, seed=0):
        inner = split_by_patient(train, (0.9, 0.1), ("train", "val"), seed=0)
    ```
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    groups = _groups(records, duplicates)
    if len(set(groups.tolist())) < k:
        raise ValueError(f"{len(set(groups.tolist()))} patients are too few for {k} folds")
    counts = _count_matrix(records) if stratify else None
    part = assign_groups(groups, [1.0 / k] * k, counts, seed)
    return [(records.subset(part != f), records.subset(part == f)) for f in range(k)]


def shared_patients(*parts: Records) -> set[str]:
    """Patients that appear in more than one of ``parts`` (empty for a leak-free split).

    Example:

    ```python
    assert not shared_patients(*split_by_patient(records).values())
    ```
    """
    seen: dict[str, int] = {}
    shared: set[str] = set()
    for k, part in enumerate(parts):
        for patient in set(part.patients.tolist()):
            if seen.setdefault(patient, k) != k:
                shared.add(patient)
    return shared


def by_given_split(records: Records) -> dict[str, Records]:
    """The dataset's own split (``train/``, ``test/`` folders or a split column) as ``{name: Records}``.

    Example:

    ```python
    parts = by_given_split(from_class_folders("OCT2017"))  # {"test": ..., "train": ...}
    shared_patients(*parts.values())  # check the dataset's own split for patient overlap
    ```
    """
    if records.given_split is None:
        raise ValueError("these records carry no given split (no train/val/test folders or split column)")
    return {name: records.subset(records.given_split == name) for name in sorted(set(records.given_split.tolist()))}
