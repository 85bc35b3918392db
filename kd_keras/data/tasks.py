"""Tasks: how a source's labels become the labels a model learns.

- :func:`multiclass`: the classes as given (OCT2017's 4 classes, chest X-ray's 2).
- :func:`normal_vs_abnormal`: binary, every pathology class vs the negative class (study 002: CNV, DME and
  DRUSEN are "abnormal"; which class is negative is configurable).
- :func:`referable_dr`: binary referable diabetic retinopathy, grades 0-1 vs 2-4 (study 003).
- :func:`dr_grades`: the 5 ICDR grades (or Messidor's 4) as classes.
- :func:`multilabel`: the label columns of a multi-label source (CheXpert's 14 observations).

Each returns a new :class:`~kd_keras.data.records.Records` (same rows, same report) with remapped labels,
``class_names`` and ``task``. Binary tasks use int labels 0/1 with two class names (negative first); the pipeline
can emit them as float 0/1 for a one-logit head.

Example:

```python
from kd_keras.data import sources, tasks

records = tasks.normal_vs_abnormal(sources.from_class_folders("OCT2017/train"))
records.class_names  # ("NORMAL", "ABNORMAL")
records = tasks.apply_task(sources.eyepacs("trainLabels.csv", "train"), "referable_dr")
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from kd_keras.data.records import Records


def _require(records: Records, task: str, what: str) -> None:
    if records.task != task:
        raise ValueError(f"{what} needs a {task} source, got a {records.task} one (classes {records.class_names})")


def multiclass(records: Records) -> Records:
    """The classes as the source gives them (a no-op check that the source is single-label).

    Example:

    ```python
    multiclass(from_class_folders("OCT2017/train")).class_names  # ("CNV", "DME", "DRUSEN", "NORMAL")
    ```
    """
    if records.task == "binary":
        return records
    _require(records, "multiclass", "multiclass")
    return records


def normal_vs_abnormal(records: Records, negative: str = "NORMAL", positive_name: str = "ABNORMAL") -> Records:
    """Binary: ``negative`` is 0, every other class is 1 (study 002's normal vs CNV + DME + DRUSEN).

    Args:
        records: a multi-class source.
        negative: the class that is negative (case-sensitive class name).
        positive_name: name of the merged positive class.

    Returns:
        Records with ``task="binary"`` and ``class_names=(negative, positive_name)``.

    Example:

    ```python
    normal_vs_abnormal(oct_records).class_counts()  # {"NORMAL": 26315, "ABNORMAL": 57169}
    normal_vs_abnormal(cxr_records, negative="NORMAL", positive_name="PNEUMONIA")
    ```
    """
    _require(records, "multiclass", "normal_vs_abnormal")
    if negative not in records.class_names:
        raise ValueError(f"negative class {negative!r} is not one of {records.class_names}")
    if len(records.class_names) < 2:
        raise ValueError(f"normal_vs_abnormal needs at least two classes, got {records.class_names}")
    negative_index = records.class_names.index(negative)
    labels = (records.labels != negative_index).astype(np.int64)
    labels[~records.labeled] = 0
    return dataclasses.replace(records, labels=labels, class_names=(negative, positive_name), task="binary")


def _grades(records: Records, what: str) -> np.ndarray:
    _require(records, "multiclass", what)
    try:
        grade_of_class = np.asarray([int(name) for name in records.class_names], np.int64)
    except ValueError:
        raise ValueError(f"{what} needs classes named by integer grades, got {records.class_names}") from None
    return grade_of_class[records.labels]


def referable_dr(records: Records, referable_from: int = 2) -> Records:
    """Binary referable diabetic retinopathy: grade >= ``referable_from`` is 1 (study 003: grades 0-1 vs 2-4).

    Args:
        records: a source whose classes are integer grades (``eyepacs``, ``messidor``).
        referable_from: the lowest referable grade.

    Returns:
        Records with ``task="binary"``, ``class_names=("non-referable", "referable")``.

    Example:

    ```python
    referable_dr(eyepacs("trainLabels.csv", "train")).class_counts()
    ```
    """
    grades = _grades(records, "referable_dr")
    labels = (grades >= referable_from).astype(np.int64)
    return dataclasses.replace(records, labels=labels, class_names=("non-referable", "referable"), task="binary")


def dr_grades(records: Records, n_grades: int = 5) -> Records:
    """DR grading as ``n_grades`` classes ``"0"``..``str(n_grades - 1)`` (ICDR 5 grades; Messidor has 4).

    Raises:
        ValueError: a grade outside ``0..n_grades-1``.

    Example:

    ```python
    dr_grades(eyepacs("trainLabels.csv", "train")).class_names  # ("0", "1", "2", "3", "4")
    ```
    """
    grades = _grades(records, "dr_grades")
    if grades.size and (grades.min() < 0 or grades.max() >= n_grades):
        raise ValueError(f"grades must be in 0..{n_grades - 1}, found {grades.min()}..{grades.max()}")
    return dataclasses.replace(records, labels=grades.astype(np.int64),
                               class_names=tuple(str(k) for k in range(n_grades)), task="multiclass")


def multilabel(records: Records, columns: tuple[str, ...] | None = None) -> Records:
    """The label columns of a multi-label source, optionally a subset in a chosen order.

    Example:

    ```python
    multilabel(chexpert_records, ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"))
    ```
    """
    _require(records, "multilabel", "multilabel")
    if columns is None:
        return records
    missing = [c for c in columns if c not in records.class_names]
    if missing:
        raise ValueError(f"label columns {missing} are not in {records.class_names}")
    order = [records.class_names.index(c) for c in columns]
    return dataclasses.replace(records, labels=records.labels[:, order], class_names=tuple(columns))


TASKS: dict[str, Callable[..., Records]] = {
    "multiclass": multiclass,
    "normal_vs_abnormal": normal_vs_abnormal,
    "referable_dr": referable_dr,
    "dr_grades": dr_grades,
    "multilabel": multilabel,
}


def apply_task(records: Records, name: str, **kwargs) -> Records:
    """The task ``name`` (a key of ``TASKS``) applied to ``records``.

    Example:

    ```python
    apply_task(records, "normal_vs_abnormal", negative="NORMAL")
    ```
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](records, **kwargs)


def evaluation_task(num_outputs: int, multilabel: bool = False) -> str:
    """The evaluation task of a head with ``num_outputs`` logits: ``"multilabel"``, ``"binary"`` (one sigmoid
    logit or two softmax logits) or ``"multiclass"``: the one rule behind :class:`HeadSpec` and
    :func:`kd_keras.engine.infer_task`.

    Example:

    ```python
    evaluation_task(2)  # "binary"
    ```
    """
    if multilabel:
        return "multilabel"
    return "binary" if num_outputs <= 2 else "multiclass"


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """What a model head for a records table looks like, resolved once.

    Attributes:
        size: logits of the head: one per class (two for a binary task: a softmax head) or one per label.
        loss_task: the :mod:`kd_keras.engine.losses` task: ``"multilabel"`` (sigmoid per label) or
            ``"multiclass"`` (softmax, binary tasks included).
        eval_task: the :func:`kd_keras.evaluation.evaluate_predictions` task: ``"binary"``, ``"multiclass"`` or
            ``"multilabel"``.

    Example:

    ```python
    head = HeadSpec.of(records)
    model = build_model("mobilenet_v2", (224, 224, 3), head.size)
    objective = {"name": "hard_label", "task": head.loss_task}
    ```
    """

    size: int
    loss_task: str
    eval_task: str

    @classmethod
    def of(cls, records: Records) -> HeadSpec:
        """The head of ``records`` (from its ``task`` and ``class_names``)."""
        multilabel = records.task == "multilabel"
        size = len(records.class_names)
        return cls(size=size, loss_task="multilabel" if multilabel else "multiclass",
                   eval_task=evaluation_task(size, multilabel))
