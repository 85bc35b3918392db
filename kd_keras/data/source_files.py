"""What every data source shares: finding image files, checking paths against the data root, and the
``on_bad_file`` policy (skip and report, or refuse).

Used by :mod:`kd_keras.data.source_folders`, :mod:`kd_keras.data.source_tables` and through them
:mod:`kd_keras.data.sources` (the public entry point, which describes what each check does).

Example:

```python
from kd_keras.data.report import DataReport
from kd_keras.data.source_files import scan_images

report = DataReport()
paths = scan_images("OCT2017/train/CNV", report)  # sorted absolute paths; hidden and bad files reported
```
"""

from __future__ import annotations

import os
import stat

import numpy as np

from kd_keras.data.patients import patient_ids
from kd_keras.data.records import Records
from kd_keras.data.report import DataError, DataReport

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
IGNORED_NAMES = ("__MACOSX", "Thumbs.db", "desktop.ini")


class BadFilePolicy:
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


def real_dir(root: str | os.PathLike, what: str = "data folder") -> tuple[str, str]:
    """``(absolute root, real root)``; refuses a missing folder."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(root, f"{what} does not exist or is not a folder")
    return root, os.path.realpath(root)


def _inside(real_path: str, real_root: str) -> bool:
    return real_path == real_root or real_path.startswith(real_root.rstrip(os.sep) + os.sep)


def is_ignored_name(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def file_problem(path: str, real_root: str, allow_outside_root: bool) -> tuple[str, str] | None:
    """Problems knowable without reading the file: outside the root, missing, dangling, not a file, empty."""
    if not allow_outside_root:
        real = os.path.realpath(path)
        if not _inside(real, real_root):
            via = " via a symlink" if os.path.islink(path) or real != os.path.normpath(path) else ""
            return "outside_root", f"path escapes the data root {real_root}{via} (resolves to {real})"
    return stat_problem(path)


def stat_problem(path: str) -> tuple[str, str] | None:
    """``(kind, detail)`` for a path that is missing, a dangling link, unreadable, not a regular file or empty;
    ``None`` for a non-empty regular file (nothing is read)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "unreadable", f"dangling symlink to {os.readlink(path)}"
        return "missing_file", "file does not exist"
    except OSError as error:
        return "unreadable", f"cannot read file ({error.strerror or error})"
    return _kind_problem(info)


def _entry_problem(entry: os.DirEntry) -> tuple[str, str] | None:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as error:
        return "unreadable", f"cannot read file ({error.strerror or error})"
    return _kind_problem(info)


def _kind_problem(info: os.stat_result) -> tuple[str, str] | None:
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
    policy = BadFilePolicy(report, on_bad_file)
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
            if is_ignored_name(entry.name):
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
                problem = file_problem(entry.path, real_root, allow_outside_root)
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


def unlabeled_records(paths: list[str], root: str, patient_rule: str, report: DataReport) -> Records:
    patients, rule = patient_ids([os.path.relpath(p, root) for p in paths], patient_rule, report)
    return Records(paths=np.asarray(paths, dtype=object), labels=np.full(len(paths), -1, np.int64),
                   patients=patients, class_names=(), task="unlabeled", root=root, patient_rule=rule,
                   report=report)


class PathResolver:
    """Turns a path written in a table or list into a checked absolute path under the data root."""

    def __init__(self, root: str, real_root: str, policy: BadFilePolicy, extension: str | None,
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
        problem = file_problem(candidate, self.real_root, self.allow_outside_root)
        if problem is not None:
            self.policy.bad(problem[0], candidate, f"{problem[1]} ({where})")
            return None
        return candidate


