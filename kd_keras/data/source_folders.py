"""Folder layouts: a class-per-folder tree (:func:`from_class_folders`) and an unlabeled pool folder
(:func:`from_folder`). Re-exported by :mod:`kd_keras.data.sources`.

Example:

```python
from kd_keras.data.source_folders import from_class_folders, from_folder

train = from_class_folders("chest_xray/train")   # NORMAL / PNEUMONIA
pool = from_folder("OCT2017_unlabeled/")          # unlabeled, recursive
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from kd_keras.data.patients import patient_ids
from kd_keras.data.records import Records
from kd_keras.data.report import DataError, DataReport
from kd_keras.data.source_files import (
    IMAGE_SUFFIXES,
    SPLIT_FOLDERS,
    BadFilePolicy,
    is_ignored_name,
    real_dir,
    scan_images,
    unlabeled_records,
)


def _split_layout(root: str) -> dict[str, str]:
    """``{"train": path, ...}`` when ``root`` holds train/val/test folders that hold folders, else ``{}``."""
    splits = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        name = SPLIT_FOLDERS.get(entry.name.lower())
        if name and entry.is_dir(follow_symlinks=False):
            if any(sub.is_dir() and not is_ignored_name(sub.name) for sub in os.scandir(entry.path)):
                if name in splits:
                    raise DataError(entry.path, f"two folders map to the {name!r} split")
                splits[name] = entry.path
    return splits


def from_class_folders(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    patient_rule: str = "auto",
    allow_empty_classes: bool = False,
    on_bad_file: str = "skip",
    allow_outside_root: bool = False,
) -> Records:
    """A class-per-folder tree: ``root/<CLASS>/**/image`` or ``root/<split>/<CLASS>/**/image``.

    Args:
        root: the data root.
        classes: class names in label order; default all class folders, sorted (``CNV, DME, DRUSEN, NORMAL``).
            Class folders not listed are noted and not used.
        split: with ``train/``, ``val/``, ``test/`` subfolders (also ``validation``, ``valid``, ``dev``,
            ``testing``), which of them to read (a name or a list); ``None`` reads all of them. The folder each
            file came from is kept in ``records.given_split``.
        patient_rule: a rule of :mod:`kd_keras.data.patients` or ``"auto"``.
        allow_empty_classes: keep a class whose folder holds no images (noted) instead of refusing.
        on_bad_file: ``"skip"`` (report and leave out) or ``"raise"`` (refuse) for missing, empty, escaping files.
        allow_outside_root: accept symlinks that leave ``root``.

    Returns:
        Multi-class :class:`Records`.

    Raises:
        DataError: ``root`` missing, a class folder empty or missing, no images at all, or (``"raise"``) a bad file.

    Example:

    ```python
    records = from_class_folders("OCT2017", split="train")
    records.class_counts()  # {"CNV": 37205, "DME": 11348, "DRUSEN": 8616, "NORMAL": 26315}
    ```
    """
    root, real_root = real_dir(root)
    report = DataReport()
    policy = BadFilePolicy(report, on_bad_file)
    layout = _split_layout(root)
    if layout:
        wanted = [split] if isinstance(split, str) else list(split) if split is not None else list(layout)
        for name in wanted:
            if name not in layout:
                raise report.refuse("bad_table", root, f"no {name!r} split folder (found {sorted(layout)})")
        parts = [(name, layout[name]) for name in wanted]
        for entry in os.scandir(root):
            if entry.path not in layout.values() and not is_ignored_name(entry.name):
                report.note("ignored_file", entry.path, "not a split folder; not used")
    else:
        if split is not None:
            raise report.refuse("bad_table", root, f"split={split!r} asked, but there are no train/val/test folders")
        parts = [(None, root)]

    seen_classes: set[str] = set()
    for _, folder in parts:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if is_ignored_name(entry.name):
                report.note("ignored_file", entry.path, "hidden or system entry; not used")
            elif entry.is_dir(follow_symlinks=False) or (entry.is_symlink() and os.path.isdir(entry.path)):
                # A class folder that is a symlink in the data root is the user's explicit choice: read it.
                seen_classes.add(entry.name)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                policy.bad("no_class_folder", entry.path, "image is not inside a class folder; its class is unknown")
            else:
                report.note("ignored_file", entry.path, "no image suffix; not used")
    class_names = tuple(classes) if classes is not None else tuple(sorted(seen_classes))
    if not class_names:
        raise report.refuse("no_images", root, "no class folders found (expected root/<CLASS>/image files)")
    for name in sorted(seen_classes - set(class_names)):
        report.note("ignored_file", os.path.join(parts[0][1], name), "class folder not in classes=; not used")

    paths: list[str] = []
    labels: list[int] = []
    given: list[str] = []
    for split_name, folder in parts:
        for label, name in enumerate(class_names):
            class_dir = os.path.join(folder, name)
            if os.path.isdir(class_dir):
                # Through a symlinked class folder, paths are checked against the folder it leads to.
                inside = os.path.realpath(class_dir) if os.path.islink(class_dir) else real_root
                found = scan_images(class_dir, report, inside, True, on_bad_file, allow_outside_root)
                problem = "class folder holds no images"
            else:
                found, problem = [], "class folder is missing"
            if not found:
                if not allow_empty_classes:
                    raise report.refuse("empty_class", class_dir,
                                        f"{problem} (pass allow_empty_classes=True to keep the class anyway)")
                report.note("empty_class", class_dir, problem)
            paths.extend(found)
            labels.extend([label] * len(found))
            given.extend([split_name or ""] * len(found))
    if not paths:
        raise report.refuse("no_images", root, "no usable images in any class folder")
    path_array = np.asarray(paths, dtype=object)
    relative = [os.path.relpath(p, root) for p in paths]
    patients, rule = patient_ids(relative, patient_rule, report)
    return Records(
        paths=path_array, labels=np.asarray(labels, np.int64), patients=patients, class_names=class_names,
        task="multiclass", given_split=np.asarray(given, dtype=object) if layout else None, root=root,
        patient_rule=rule, report=report,
    )


def from_folder(
    root: str | os.PathLike,
    recursive: bool = True,
    patient_rule: str = "auto",
    on_bad_file: str = "skip",
    allow_outside_root: bool = False,
) -> Records:
    """An unlabeled pool: every image file under ``root`` (recursive by default).

    Args:
        root: the pool folder (a flat folder, or any tree: class folders, if any, are ignored as labels).
        recursive: descend into subfolders.
        patient_rule: for patient-level splits of the pool (``"auto"``).
        on_bad_file: ``"skip"`` or ``"raise"``.
        allow_outside_root: accept symlinks that leave ``root``.

    Raises:
        DataError: ``root`` missing or holding no usable image.

    Example:

    ```python
    pool = from_folder("OCT_unlabeled/")  # 478,588 paths, nothing decoded
    ```
    """
    root, real_root = real_dir(root)
    report = DataReport()
    paths = scan_images(root, report, real_root, recursive, on_bad_file, allow_outside_root)
    if not paths:
        raise report.refuse("no_images", root, "folder holds no usable image files "
                            f"({', '.join(IMAGE_SUFFIXES)})")
    return unlabeled_records(paths, root, patient_rule, report)


