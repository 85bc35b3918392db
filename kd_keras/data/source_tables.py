"""Tables and lists: a CSV manifest (:func:`from_csv`) and its presets (:func:`eyepacs`, :func:`messidor`,
:func:`chexpert`), and an unlabeled pool listed in a text file (:func:`from_list_file`). Re-exported by
:mod:`kd_keras.data.sources`.

Example:

```python
from kd_keras.data.source_tables import eyepacs, from_csv

dr = eyepacs("trainLabels.csv", "train/")
records = from_csv("labels.csv", "images/", file_column="file", label_column="diagnosis")
```
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from kd_keras.data.patients import patient_ids
from kd_keras.data.records import Records
from kd_keras.data.report import DataError, DataReport
from kd_keras.data.source_files import (
    SPLIT_FOLDERS,
    BadFilePolicy,
    PathResolver,
    real_dir,
    unlabeled_records,
)

FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_name", "image name", "image_id", "id", "path",
                "filepath", "file_path")
LABEL_COLUMNS = ("label", "level", "class", "diagnosis", "grade", "retinopathy grade", "adjudicated_dr_grade")
UNCERTAIN_POLICIES = {"zeros": 0.0, "u-zero": 0.0, "u-zeros": 0.0, "ones": 1.0, "u-one": 1.0, "u-ones": 1.0,
                      "ignore": -1.0, "u-ignore": -1.0}
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
DR_GRADES = ("0", "1", "2", "3", "4")  # ICDR: none, mild, moderate, severe non-proliferative, proliferative
MESSIDOR_GRADES = ("0", "1", "2", "3")  # Messidor(-1): R0-R3


_INTEGER_LIKE = re.compile(r"^[+-]?\d+(?:\.0*)?$")


def _normalise_label(value: str) -> str:
    """``" 2.0 "`` -> ``"2"``: spreadsheets write integer grades as floats."""
    value = value.strip()
    if _INTEGER_LIKE.match(value):
        return str(int(float(value)))
    return value


def _sorted_classes(names: Iterable[str]) -> tuple[str, ...]:
    names = set(names)
    if all(_INTEGER_LIKE.match(name) for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _find_column(header: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, table: str,
                 required: bool = True) -> str | None:
    lower = {name.strip().lower(): name for name in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if wanted.strip().lower() in lower:
            return lower[wanted.strip().lower()]
        raise DataError(table, f"no {what} column {wanted!r} (columns: {', '.join(header)})")
    for candidate in candidates:
        if candidate in lower:
            return lower[candidate]
    if required:
        raise DataError(table, f"no {what} column found; name it (columns: {', '.join(header)})")
    return None


def _read_table(csv_path: str, delimiter: str | None) -> tuple[list[str], list[dict[str, str]]]:
    suffix = os.path.splitext(csv_path)[1].lower()
    if suffix in (".xls", ".xlsx", ".ods"):
        raise DataError(csv_path, "spreadsheets are not read; export the sheet to CSV (one header row)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise DataError(csv_path, "table does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(csv_path, f"cannot read table ({error})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(csv_path, "table is empty (no header row)")
    if delimiter is None:
        first = lines[0]
        delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.DictReader(lines, delimiter=delimiter)
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = list(reader)
    if not rows:
        raise DataError(csv_path, "table has a header but no rows")
    return header, rows


def from_csv(
    csv_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    file_column: str | None = None,
    label_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    patient_column: str | None = None,
    split_column: str | None = None,
    classes: Sequence[str] | None = None,
    extension: str | None = None,
    patient_rule: str = "auto",
    uncertain: str = "zeros",
    row_filter: Callable[[dict[str, str]], bool] | None = None,
    delimiter: str | None = None,
    on_bad_file: str = "skip",
    allow_outside_root: bool = False,
) -> Records:
    """A CSV manifest: one row per image.

    Args:
        csv_path: the table (comma, semicolon or tab separated, one header row; a UTF-8 BOM is fine).
        image_root: folder the file column is relative to (default: the table's folder). Paths leading out of it
            are skipped and reported. A path starting with the root's own folder name (CheXpert's
            ``CheXpert-v1.0-small/train/...``) is read relative to the root.
        file_column: the file or id column; default the first of ``FILE_COLUMNS`` present. Values without an
            image suffix (EyePACS ``10_left``) get ``extension``, or the image file of that name in its folder.
        label_column: single-label column (default: first of ``LABEL_COLUMNS``). Integer-like values are
            normalised (``"2.0"`` -> ``"2"``).
        label_columns: several 0/1 columns instead: a multi-label source. Blank is 0 (not mentioned), ``-1``
            (uncertain) is mapped by ``uncertain``.
        patient_column: patient id column; default: ``patient_rule`` applied to the file column.
        split_column: a column holding the dataset's own split (``records.given_split``).
        classes: class names in label order; rows with another label are skipped (``unknown_label``). Default:
            the labels found, sorted (numerically when all are integers).
        extension: suffix for file values without one (``".jpeg"``).
        patient_rule: see :mod:`kd_keras.data.patients`.
        uncertain: multi-label policy for -1: ``"zeros"`` (U-zero, default), ``"ones"`` (U-ones), ``"ignore"``
            (kept as -1; the loss must mask labels below 0).
        row_filter: keep only rows for which it returns True (a selection, not a problem: not reported per row).
        delimiter: force a delimiter.
        on_bad_file: ``"skip"`` or ``"raise"`` for rows naming bad files or bad labels.
        allow_outside_root: accept paths leading out of ``image_root``.

    Returns:
        Multi-class or multi-label :class:`Records`.

    Raises:
        DataError: unreadable table, missing columns, bad policy, no usable row, or (``"raise"``) a bad row.

    Example:

    ```python
    records = from_csv("labels.csv", "images/", file_column="file", label_column="diagnosis",
                       patient_column="patient_id")
    ```
    """
    csv_path = os.path.abspath(os.fspath(csv_path))
    report = DataReport()
    policy = BadFilePolicy(report, on_bad_file)
    header, rows = _read_table(csv_path, delimiter)
    table = os.path.basename(csv_path)
    root, real_root = real_dir(image_root if image_root is not None else os.path.dirname(csv_path), "image root")
    file_column = _find_column(header, file_column, FILE_COLUMNS, "file", csv_path)
    multilabel = label_columns is not None
    if multilabel:
        if label_column is not None:
            raise ValueError("give label_column (one label) or label_columns (multi-label), not both")
        label_columns = [_find_column(header, name, (), "label", csv_path) for name in label_columns]
        if not label_columns:
            raise DataError(csv_path, "label_columns is empty")
        key = uncertain.strip().lower()
        if key not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of 'zeros', 'ones', 'ignore' (or U-zero/U-ones/U-ignore), "
                             f"got {uncertain!r}")
        uncertain_value = UNCERTAIN_POLICIES[key]
    else:
        label_column = _find_column(header, label_column, LABEL_COLUMNS, "label", csv_path)
    if patient_column is not None:
        patient_column = _find_column(header, patient_column, (), "patient", csv_path)
    if split_column is not None:
        split_column = _find_column(header, split_column, (), "split", csv_path)
    resolver = PathResolver(root, real_root, policy, extension, allow_outside_root)
    class_set = None if classes is None else {str(name) for name in classes}

    kept: dict[str, dict] = {}  # resolved path -> row data (first occurrence)
    conflicting: set[str] = set()
    filtered = 0
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        if row_filter is not None and not row_filter(row):
            filtered += 1
            continue
        where = f"row {number} of {table}"
        value = (row.get(file_column) or "").strip()
        if not value:
            policy.bad("missing_file", f"{csv_path}:{number}", f"empty {file_column!r} cell ({where})")
            continue
        if multilabel:
            vector = []
            for column in label_columns:
                cell = (row.get(column) or "").strip()
                number_value = {"": 0.0, "0": 0.0, "1": 1.0, "-1": uncertain_value}.get(
                    _normalise_label(cell) if cell else "")
                if number_value is None:
                    break
                vector.append(number_value)
            if len(vector) != len(label_columns):
                policy.bad("unknown_label", os.path.join(root, value),
                           f"label {column!r} = {cell!r} is not 1, 0, -1 or blank ({where})")
                continue
            label = tuple(vector)
        else:
            raw = row.get(label_column)
            label = _normalise_label(raw or "")
            if not label:
                policy.bad("missing_label", os.path.join(root, value), f"no {label_column!r} value ({where})")
                continue
            if class_set is not None and label not in class_set:
                policy.bad("unknown_label", os.path.join(root, value),
                           f"label {label!r} is not one of {sorted(class_set)} ({where})")
                continue
        path = resolver.resolve(value, where)
        if path is None:
            continue
        if path in kept:
            if kept[path]["label"] == label:
                report.skip("duplicate_row", path, f"listed again with the same label ({where}); kept once")
            else:
                conflicting.add(path)
                report.skip("conflicting_labels", path,
                            f"listed with labels {kept[path]['label']!r} and {label!r} ({where}); not used")
            continue
        kept[path] = {
            "label": label,
            "patient": (row.get(patient_column) or "").strip() if patient_column else None,
            "split": (row.get(split_column) or "").strip().lower() if split_column else None,
            "value": value,
            "where": where,
        }
    if filtered:
        report.note("ignored_file", csv_path, f"{filtered} rows left out by row_filter")
    for path in conflicting:
        kept.pop(path, None)
    if not kept:
        raise report.refuse("no_images", csv_path, f"no usable rows ({report.format_summary()})")

    paths = list(kept)
    items = list(kept.values())
    if multilabel:
        labels = np.asarray([item["label"] for item in items], np.float32)
        class_names = tuple(label_columns)
        task = "multilabel"
    else:
        class_names = tuple(str(c) for c in classes) if classes is not None else _sorted_classes(
            item["label"] for item in items)
        index = {name: k for k, name in enumerate(class_names)}
        labels = np.asarray([index[item["label"]] for item in items], np.int64)
        task = "multiclass"
    if patient_column:
        patients = np.empty(len(items), dtype=object)
        for i, item in enumerate(items):
            if item["patient"]:
                patients[i] = item["patient"]
            else:
                patients[i] = f"file:{item['value']}"
                report.note("own_patient", paths[i], f"blank {patient_column!r} ({item['where']}); its own patient")
        rule = f"column:{patient_column}"
    else:
        # The rule reads the path as written in the table (a CheXpert path holds the patient folder).
        patients, rule = patient_ids([os.path.relpath(p, root) for p in paths], patient_rule, report)
    given = np.asarray([SPLIT_FOLDERS.get(item["split"], item["split"]) for item in items], dtype=object) \
        if split_column else None
    return Records(paths=np.asarray(paths, dtype=object), labels=labels, patients=patients,
                   class_names=class_names, task=task, given_split=given, root=root, patient_rule=rule,
                   report=report)


def eyepacs(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None, **kwargs) -> Records:
    """EyePACS / Kaggle diabetic retinopathy: ``trainLabels.csv`` (``image,level``) and ``train/10_left.jpeg``.

    Labels are the 5 ICDR grades ``"0"``..``"4"``; patients by the ``eyepacs`` rule (``10_left`` -> ``10``, so
    both eyes of a patient stay in one split). Keyword arguments go to :func:`from_csv`.

    Example:

    ```python
    records = tasks.referable_dr(eyepacs("trainLabels.csv", "train"))
    ```
    """
    options = {"file_column": "image", "label_column": "level", "classes": DR_GRADES, "patient_rule": "eyepacs"}
    options.update(kwargs)
    return from_csv(csv_path, image_dir, **options)


def messidor(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    grade_column: str | None = None,
    **kwargs,
) -> Records:
    """Messidor sheets exported to CSV: ``Image name`` + ``Retinopathy grade`` (Messidor, grades R0-R3) or
    Messidor-2's ``image_id`` + ``adjudicated_dr_grade`` (ICDR 0-4; ungradable images have a blank grade and
    are skipped as ``missing_label``). Neither names patients: each image is its own patient unless
    ``patient_column=`` is given. Keyword arguments go to :func:`from_csv`.

    Example:

    ```python
    records = tasks.referable_dr(messidor("Annotation_Base11.csv", "Base11"))
    ```
    """
    header, _ = _read_table(os.path.abspath(os.fspath(csv_path)), kwargs.get("delimiter"))
    lower = {name.lower(): name for name in header}
    if grade_column is None:
        grade_column = next((lower[c] for c in ("retinopathy grade", "adjudicated_dr_grade", "dr_grade", "grade")
                             if c in lower), None)
        if grade_column is None:
            raise DataError(csv_path, f"no retinopathy grade column found (columns: {', '.join(header)})")
    file_column = kwargs.pop("file_column", None) or next(
        (lower[c] for c in ("image name", "image_id", "image", "file") if c in lower), None)
    grades = DR_GRADES if "adjudicated" in grade_column.lower() else MESSIDOR_GRADES
    options = {"file_column": file_column, "label_column": grade_column, "classes": grades,
               "patient_rule": "stem"}
    options.update(kwargs)
    return from_csv(csv_path, image_dir, **options)


def chexpert(
    csv_path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    observations: Sequence[str] = CHEXPERT_OBSERVATIONS,
    uncertain: str = "zeros",
    frontal_only: bool = False,
    **kwargs,
) -> Records:
    """CheXpert-style multi-label table: ``Path`` plus one column per observation (1, 0, -1 uncertain, blank).

    Args:
        csv_path: ``train.csv`` / ``valid.csv``.
        image_root: the folder the paths are relative to (default: the table's folder; a leading
            ``CheXpert-v1.0-small/`` matching the root's name is handled).
        observations: label columns, in order.
        uncertain: ``"zeros"`` (U-zero, study 004's choice), ``"ones"`` (U-ones) or ``"ignore"`` (-1 kept).
        frontal_only: keep only ``Frontal/Lateral == Frontal`` rows (the dropped count is noted).
        **kwargs: passed to :func:`from_csv`.

    Patients come from the ``patient<id>`` folder in each path.

    Example:

    ```python
    records = chexpert("CheXpert-v1.0-small/train.csv", uncertain="ones", frontal_only=True)
    ```
    """
    row_filter = None
    if frontal_only:
        def row_filter(row):
            return (row.get("Frontal/Lateral") or "").strip().lower() == "frontal"
    options = {"file_column": "Path", "label_columns": list(observations), "uncertain": uncertain,
               "patient_rule": "chexpert", "row_filter": row_filter}
    options.update(kwargs)
    return from_csv(csv_path, image_root, **options)


def from_list_file(
    list_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    patient_rule: str = "auto",
    on_bad_file: str = "skip",
    allow_outside_root: bool = False,
) -> Records:
    """An unlabeled pool listed in a text file: one path per line (relative to ``root``, default the list's
    folder); blank lines and lines starting with ``#`` are ignored; a path listed twice is used once.

    Raises:
        DataError: the list is missing or names no usable file.

    Example:

    ```python
    pool = from_list_file("pool.txt", root="/data/oct")
    ```
    """
    list_path = os.path.abspath(os.fspath(list_path))
    report = DataReport()
    policy = BadFilePolicy(report, on_bad_file)
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise DataError(list_path, f"cannot read list file ({error.strerror or error})") from None
    root, real_root = real_dir(root if root is not None else os.path.dirname(list_path), "image root")
    resolver = PathResolver(root, real_root, policy, None, allow_outside_root)
    paths: dict[str, None] = {}
    name = os.path.basename(list_path)
    for number, line in enumerate(lines, start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        path = resolver.resolve(value, f"line {number} of {name}")
        if path is None:
            continue
        if path in paths:
            report.skip("duplicate_row", path, f"listed again (line {number} of {name}); used once")
            continue
        paths[path] = None
    if not paths:
        raise report.refuse("no_images", list_path, f"list names no usable image file ({report.format_summary()})")
    return unlabeled_records(list(paths), root, patient_rule, report)


