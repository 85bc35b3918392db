"""Data sources: the layouts public datasets ship in, resolved to a :class:`~kd_keras.data.records.Records` table.

Labeled sources:

- :func:`from_class_folders`: one folder per class (OCT2017 ``CNV/DME/DRUSEN/NORMAL``, chest X-ray
  ``NORMAL/PNEUMONIA``), optionally under ``train/``, ``val/``, ``test/`` subfolders (kept as ``given_split``).
  Class folders may nest subfolders.
- :func:`from_csv`: a manifest with a file (or id) column, one label column or several (multi-label), and
  optional patient and split columns. Presets: :func:`eyepacs` (``trainLabels.csv``: ``image,level``),
  :func:`messidor` (Messidor's ``Image name, Retinopathy grade`` sheets exported to CSV, or Messidor-2's
  ``image_id, adjudicated_dr_grade``), :func:`chexpert` (14 observations, uncertain ``-1`` labels mapped by a
  policy: ``"zeros"`` (U-zero, the default, as study 004), ``"ones"`` (U-ones) or ``"ignore"`` (kept as -1 for a
  masking loss)).
- :func:`from_npz`: MedMNIST-style arrays ``<split>_images`` / ``<split>_labels``.

Unlabeled sources (the pool): :func:`from_folder` (any folder tree, recursive) and :func:`from_list_file` (one path
per line).

Every source checks paths as it resolves them: files that are missing, empty, not regular files, or outside the
data root (``../``, absolute paths, symlinks) are skipped and reported in ``records.report`` (or refused with
``on_bad_file="raise"``); hidden files, ``__MACOSX`` and non-image files are noted and not used. A source that
resolves to nothing, an empty class folder or a table without the named columns is refused with one line (see
:mod:`kd_keras.data.validate`). Pixels are only checked by :func:`kd_keras.data.validate.check_files` and, at the
latest, by the pipeline.

Example:

```python
from kd_keras.data import sources, tasks

cxr = sources.from_class_folders("chest_xray/train")                # NORMAL 1,341, PNEUMONIA 3,875
oct_binary = tasks.normal_vs_abnormal(sources.from_class_folders("OCT2017/train"))
dr = tasks.referable_dr(sources.eyepacs("trainLabels.csv", "train/"))
pool = sources.from_folder("OCT2017_unlabeled/")                     # unlabeled, recursive
```
"""

from __future__ import annotations

import csv
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from kd_keras.data.patients import patient_ids
from kd_keras.data.records import Records
from kd_keras.data.validate import DataError, DataReport

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
IGNORED_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")
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


class _Policy:
    """Applies ``on_bad_file`` to per-file problems: skip and report, or refuse at the first one."""

    def __init__(self, report: DataReport, on_bad_file: str):
        if on_bad_file not in ("skip", "raise"):
            raise ValueError(f"on_bad_file must be 'skip' or 'raise', got {on_bad_file!r}")
        self.report = report
        self.on_bad_file = on_bad_file

    def bad(self, kind: str, path: str | os.PathLike, detail: str | None = None) -> None:
        if self.on_bad_file == "raise":
            raise self.report.refuse(kind, path, detail)
        self.report.skip(kind, path, detail)


def _real_dir(root: str | os.PathLike, what: str = "data folder") -> tuple[str, str]:
    """``(absolute root, real root)``; refuses a missing folder."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(root, f"{what} does not exist or is not a folder")
    return root, os.path.realpath(root)


def _inside(real_path: str, real_root: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def _is_ignored_name(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def _file_problem(path: str, real_root: str, allow_outside_root: bool) -> tuple[str, str] | None:
    """Problems knowable without reading the file: outside the root, missing, dangling, not a file, empty."""
    if not allow_outside_root:
        real = os.path.realpath(path)
        if not _inside(real, real_root):
            via = " via a symlink" if os.path.islink(path) or real != os.path.normpath(path) else ""
            return "outside_root", f"path escapes the data root {real_root}{via} (resolves to {real})"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "unreadable", f"dangling symlink to {os.readlink(path)}"
        return "missing_file", "file does not exist"
    except OSError as error:
        return "unreadable", f"cannot read file ({error.strerror or error})"
    if not os.path.isfile(path):
        return "not_a_file", "not a regular file (a folder or special file)"
    if info.st_size == 0:
        return "empty_file", "empty file (0 bytes)"
    return None


def _entry_problem(entry: os.DirEntry) -> tuple[str, str] | None:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as error:
        return "unreadable", f"cannot read file ({error.strerror or error})"
    if not stat.S_ISREG(info.st_mode):
        return "not_a_file", "not a regular file (a folder or special file)"
    if info.st_size == 0:
        return "empty_file", "empty file (0 bytes)"
    return None


def scan_images(
    folder: str | os.PathLike,
    report: DataReport,
    real_root: str | None = None,
    recursive: bool = True,
    on_bad_file: str = "skip",
    allow_outside_root: bool = False,
) -> list[str]:
    """Image files under ``folder`` (sorted absolute paths), checking each as :mod:`kd_keras.data.sources` says.

    Hidden entries, ``__MACOSX``, files without an image suffix and symlinked folders (never followed: they
    could leave the root or list files twice) are noted as ``ignored_file``; bad files are skipped or refused.

    Args:
        folder: where to look.
        report: collects what is left out.
        real_root: the data root paths must stay inside (default: ``folder``).
        recursive: descend into subfolders.
        on_bad_file: ``"skip"`` or ``"raise"``.
        allow_outside_root: accept symlinked files that lead out of the root.

    Example:

    ```python
    paths = scan_images("OCT2017/train/CNV", DataReport())
    ```
    """
    folder = os.path.abspath(os.fspath(folder))
    real_root = real_root or os.path.realpath(folder)
    policy = _Policy(report, on_bad_file)
    found: list[str] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            policy.bad("unreadable", current, f"cannot list folder ({error.strerror or error})")
            continue
        subfolders = []
        for entry in entries:
            if _is_ignored_name(entry.name):
                report.note("ignored_file", entry.path, "hidden or system entry; not used")
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    subfolders.append(entry.path)
                continue
            if entry.is_symlink() and os.path.isdir(entry.path):
                report.note("ignored_file", entry.path, "symlinked folder; not followed")
                continue
            if os.path.splitext(entry.name)[1].lower() not in IMAGE_SUFFIXES:
                report.note("ignored_file", entry.path, "no image suffix; not used")
                continue
            if entry.is_symlink():
                problem = _file_problem(entry.path, real_root, allow_outside_root)
            else:
                # The walk never follows symlinked folders, so a plain file here is inside the root: one
                # (cached) stat instead of resolving every path component, which matters for 500k-file pools.
                problem = _entry_problem(entry)
            if problem is not None:
                policy.bad(problem[0], entry.path, problem[1])
                continue
            found.append(entry.path)
        stack.extend(reversed(subfolders))
    return sorted(found)


def _split_layout(root: str) -> dict[str, str]:
    """``{"train": path, ...}`` when ``root`` holds train/val/test folders that hold folders, else ``{}``."""
    splits = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        name = SPLIT_FOLDERS.get(entry.name.lower())
        if name and entry.is_dir(follow_symlinks=False):
            if any(sub.is_dir() and not _is_ignored_name(sub.name) for sub in os.scandir(entry.path)):
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
    root, real_root = _real_dir(root)
    report = DataReport()
    policy = _Policy(report, on_bad_file)
    layout = _split_layout(root)
    if layout:
        wanted = [split] if isinstance(split, str) else list(split) if split is not None else list(layout)
        for name in wanted:
            if name not in layout:
                raise report.refuse("bad_table", root, f"no {name!r} split folder (found {sorted(layout)})")
        parts = [(name, layout[name]) for name in wanted]
        for entry in os.scandir(root):
            if entry.path not in layout.values() and not _is_ignored_name(entry.name):
                report.note("ignored_file", entry.path, "not a split folder; not used")
    else:
        if split is not None:
            raise report.refuse("bad_table", root, f"split={split!r} asked, but there are no train/val/test folders")
        parts = [(None, root)]

    seen_classes: set[str] = set()
    for _, folder in parts:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if _is_ignored_name(entry.name):
                report.note("ignored_file", entry.path, "hidden or system entry; not used")
            elif entry.is_dir(follow_symlinks=False):
                seen_classes.add(entry.name)
            elif entry.is_symlink() and os.path.isdir(entry.path):
                report.note("ignored_file", entry.path, "symlinked folder; not followed")
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
            if os.path.islink(class_dir):
                found, problem = [], "class folder is a symlink (not followed)"
            elif os.path.isdir(class_dir):
                found = scan_images(class_dir, report, real_root, True, on_bad_file, allow_outside_root)
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
    root, real_root = _real_dir(root)
    report = DataReport()
    paths = scan_images(root, report, real_root, recursive, on_bad_file, allow_outside_root)
    if not paths:
        raise report.refuse("no_images", root, "folder holds no usable image files "
                            f"({', '.join(IMAGE_SUFFIXES)})")
    return _unlabeled(paths, root, patient_rule, report)


def _unlabeled(paths: list[str], root: str, patient_rule: str, report: DataReport) -> Records:
    patients, rule = patient_ids([os.path.relpath(p, root) for p in paths], patient_rule, report)
    return Records(paths=np.asarray(paths, dtype=object), labels=np.full(len(paths), -1, np.int64),
                   patients=patients, class_names=(), task="unlabeled", root=root, patient_rule=rule,
                   report=report)


class _Resolver:
    """Turns a path written in a table or list into a checked absolute path under the data root."""

    def __init__(self, root: str, real_root: str, policy: _Policy, extension: str | None,
                 allow_outside_root: bool):
        self.root, self.real_root, self.policy = root, real_root, policy
        self.extension = extension
        self.allow_outside_root = allow_outside_root
        self._stems: dict[str, dict[str, str]] = {}  # folder -> {stem: file name}, listed once per folder

    def _by_stem(self, folder: str, stem: str) -> str | None:
        if folder not in self._stems:
            index: dict[str, str] = {}
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            for name in names:
                base, suffix = os.path.splitext(name)
                if suffix.lower() in IMAGE_SUFFIXES:
                    # .jpeg before .jpg before .png ...: a stable choice when two files share a stem
                    if base not in index or IMAGE_SUFFIXES.index(suffix.lower()) < IMAGE_SUFFIXES.index(
                            os.path.splitext(index[base])[1].lower()):
                        index[base] = name
            self._stems[folder] = index
        name = self._stems[folder].get(stem)
        return os.path.join(folder, name) if name else None

    def resolve(self, value: str, where: str) -> str | None:
        """Absolute path, or ``None`` after reporting the problem (``where``: e.g. "row 12 of labels.csv")."""
        value = value.strip()
        written = value.replace("\\", "/")
        candidate = os.path.normpath(os.path.join(self.root, written))
        real_candidate = os.path.realpath(candidate)
        if not self.allow_outside_root and not _inside(real_candidate, self.real_root):
            self.policy.bad("outside_root", candidate,
                            f"path {value!r} escapes the data root {self.real_root} ({where})")
            return None
        has_suffix = os.path.splitext(written)[1].lower() in IMAGE_SUFFIXES
        if not os.path.lexists(candidate):
            # A table written relative to the root's parent (CheXpert: "CheXpert-v1.0-small/train/...").
            first, _, rest = written.partition("/")
            if rest and first == os.path.basename(self.root):
                stripped = os.path.normpath(os.path.join(self.root, rest))
                if os.path.lexists(stripped) or not has_suffix:
                    candidate = stripped
        if not has_suffix and not os.path.lexists(candidate):
            if self.extension is not None:
                candidate = candidate + self.extension
            else:
                found = self._by_stem(os.path.dirname(candidate), os.path.basename(candidate))
                if found is None:
                    suffixes = "|".join(suffix[1:] for suffix in IMAGE_SUFFIXES)
                    self.policy.bad("missing_file", candidate,
                                    f"no image file named {os.path.basename(candidate)}.<{suffixes}> ({where})")
                    return None
                candidate = found
        problem = _file_problem(candidate, self.real_root, self.allow_outside_root)
        if problem is not None:
            self.policy.bad(problem[0], candidate, f"{problem[1]} ({where})")
            return None
        return candidate


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
    policy = _Policy(report, on_bad_file)
    header, rows = _read_table(csv_path, delimiter)
    table = os.path.basename(csv_path)
    root, real_root = _real_dir(image_root if image_root is not None else os.path.dirname(csv_path), "image root")
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
    resolver = _Resolver(root, real_root, policy, extension, allow_outside_root)
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
    policy = _Policy(report, on_bad_file)
    try:
        with open(list_path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise DataError(list_path, f"cannot read list file ({error.strerror or error})") from None
    root, real_root = _real_dir(root if root is not None else os.path.dirname(list_path), "image root")
    resolver = _Resolver(root, real_root, policy, None, allow_outside_root)
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
    return _unlabeled(list(paths), root, patient_rule, report)


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
