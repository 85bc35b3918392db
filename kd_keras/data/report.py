"""The record of bad input: :class:`DataReport` (what was skipped, refused or noted), :class:`DataError` (a
refusal, one line naming the file) and the wording of each kind of problem (``PROBLEMS``).

Which problem is skipped, refused or noted is described in :mod:`kd_keras.data.validate`, which checks files
and re-exports these names. They live here, apart from the checks, because
:class:`~kd_keras.data.records.Records` holds a report and the checks take ``Records``: keeping the report in
its own module lets both import it without importing each other.

Example:

```python
from kd_keras.data.report import DataReport

report = DataReport()
report.skip("truncated", "scan-1.jpeg", "truncated JPEG (no end-of-image marker)")
print(report.format_summary())  # "skipped 1 files (1 truncated)"
```
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("kd_keras.data")

PROBLEMS = {
    "missing_file": "file does not exist",
    "empty_file": "empty file (0 bytes)",
    "not_a_file": "not a regular file",
    "unreadable": "cannot read file",
    "not_image": "not an image",
    "truncated": "truncated or corrupt image data",
    "bad_image": "image cannot be used",
    "outside_root": "path escapes the data root",
    "unknown_label": "label is not one of the classes",
    "missing_label": "no label",
    "duplicate_row": "file listed more than once",
    "conflicting_labels": "file listed with different labels",
    "no_class_folder": "image is not inside a class folder",
    "empty_class": "class folder holds no images",
    "bad_table": "table cannot be used",
    "no_images": "no usable images",
    "ignored_file": "not an image file; not used",
    "own_patient": "no patient rule matched; the file is its own patient",
    "duplicate_content": "byte-identical to another file",
    "held_out_overlap": "also a labeled, validation or test image",
    "ignored_class": "class folder left out",
}
ACTIONS = ("skipped", "refused", "note")
_LOGGED_KINDS_AS_INFO = ("ignored_file", "own_patient", "duplicate_content")


class DataError(ValueError):
    """Input refused before training; ``str(error)`` is one line naming the file (or folder) and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Problem:
    """One entry of a :class:`DataReport`."""

    action: str  # "skipped", "refused" or "note"
    kind: str  # a key of PROBLEMS
    path: str
    detail: str  # one line, specific to this file

    def line(self) -> str:
        return f"{self.path}: {self.detail}"


class DataReport:
    """What was skipped, refused or noted while resolving, checking and streaming a source. Thread-safe (the
    tf.data pipeline adds to it from parallel decode calls); an entry is kept once per (path, kind), so a bad file
    met in every epoch is reported once.

    Example:

    ```python
    report = records.report
    print(report.format_summary())          # "skipped 2 files (1 truncated, 1 empty_file); notes: ..."
    report.write_json("runs/x/data_report.json")
    ```
    """

    def __init__(self):
        self._entries: dict[tuple[str, str], Problem] = {}
        self._lock = threading.Lock()

    def _add(self, action: str, kind: str, path: str | os.PathLike, detail: str | None) -> Problem:
        if action not in ACTIONS or kind not in PROBLEMS:
            raise ValueError(f"unknown report action/kind {action!r}/{kind!r}")
        detail = " ".join((detail or PROBLEMS[kind]).split())  # always one line
        problem = Problem(action, kind, os.fspath(path), detail)
        with self._lock:
            key = (problem.path, kind)
            is_new = key not in self._entries
            if is_new or action == "refused":
                self._entries[key] = problem
        if is_new and action == "skipped":
            log = logger.info if kind in _LOGGED_KINDS_AS_INFO else logger.warning
            log("skipped %s", problem.line())
        return problem

    def skip(self, kind: str, path: str | os.PathLike, detail: str | None = None) -> None:
        """Records that ``path`` is left out because of ``kind`` (``detail``: one line on this file)."""
        self._add("skipped", kind, path, detail)

    def note(self, kind: str, path: str | os.PathLike, detail: str | None = None) -> None:
        """Records something worth knowing about a file that is still used."""
        self._add("note", kind, path, detail)

    def refuse(self, kind: str, path: str | os.PathLike, detail: str | None = None) -> DataError:
        """Records a refusal and returns the :class:`DataError` to raise (``raise report.refuse(...)``)."""
        problem = self._add("refused", kind, path, detail)
        return DataError(problem.path, problem.detail)

    def merge(self, other: DataReport) -> None:
        """Adds ``other``'s entries to this report (no-op when it is this report)."""
        if other is self:
            return
        for problem in other.entries():
            with self._lock:
                self._entries.setdefault((problem.path, problem.kind), problem)

    def entries(self, action: str | None = None, kind: str | None = None) -> list[Problem]:
        """Entries in insertion order, optionally only one action and/or kind."""
        with self._lock:
            items = list(self._entries.values())
        return [p for p in items if (action is None or p.action == action) and (kind is None or p.kind == kind)]

    def skipped_paths(self) -> list[str]:
        """Every path that was left out (unique, in the order met)."""
        return list(dict.fromkeys(p.path for p in self.entries("skipped")))

    def counts(self) -> dict:
        """``{"skipped": files, "refused": n, "notes": n, "skipped_by_kind": {...}, "notes_by_kind": {...}}``."""
        entries = self.entries()
        skipped = [p for p in entries if p.action == "skipped"]
        notes = [p for p in entries if p.action == "note"]
        return {
            "skipped": len({p.path for p in skipped}),
            "refused": sum(p.action == "refused" for p in entries),
            "notes": len(notes),
            "skipped_by_kind": dict(sorted(Counter(p.kind for p in skipped).items())),
            "notes_by_kind": dict(sorted(Counter(p.kind for p in notes).items())),
        }

    def format_summary(self) -> str:
        """One line for a log: what was skipped and noted, by kind."""
        counts = self.counts()

        def by_kind(mapping):
            return ", ".join(f"{n} {kind}" for kind, n in mapping.items())

        parts = [f"skipped {counts['skipped']} files" + (f" ({by_kind(counts['skipped_by_kind'])})"
                                                         if counts["skipped"] else "")]
        if counts["notes"]:
            parts.append(f"notes: {by_kind(counts['notes_by_kind'])}")
        if counts["refused"]:
            parts.append(f"refused: {counts['refused']}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready: the counts and every entry (action, kind, path, detail)."""
        return {**self.counts(), "entries": [asdict(p) for p in self.entries()]}

    def write_json(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`to_dict` as JSON (the run's data summary) and returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def __repr__(self) -> str:
        return f"DataReport({self.format_summary()})"
