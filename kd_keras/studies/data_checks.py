"""The data checks every study runs before any training (issue 16): one implementation for ``kd-keras run oct``,
``dr``, ``simclr`` and ``attention``.

A :class:`DataChecks` object is created by a study's data preparation and records what it did (``checks``, shown
on screen, written to ``results.json`` under ``data.checks`` and to ``report.md`` by :func:`data_checks_section`):

- **every file** of the labeled set, the pool and each test set is checked (:func:`kd_keras.data.validate.
  check_files`, ``file_check``: ``header`` or ``decode``); bad files are left out and listed, and a set with no
  usable file is refused;
- **class folders mean what they say** (:meth:`DataChecks.classes`): for normal vs abnormal, a folder that is
  neither the normal class nor a known abnormal class is refused by name unless mapped (``abnormal_classes``) or
  left out (``ignored_classes``);
- **one image under two labels** (:meth:`DataChecks.two_labels`, ``duplicate_labels``): refused, kept or dropped;
- **no held-out image is trained on** (:meth:`DataChecks.held_out`, ``held_out_overlap``): a test image that is
  also a training image is refused; a pool image that is also a labeled, validation or test image is refused or
  dropped from the pool (same path, symlink, hard link or identical bytes: :mod:`kd_keras.data.overlap`).

Example:

```python
from kd_keras.studies.data_checks import DataChecks

checks = DataChecks(file_check="header", held_out_overlap="refuse", duplicate_labels="refuse")
labeled = checks.two_labels(checks.files(labeled), "data/")
pool = pool.subset(checks.held_out({"pool": pool, "train": labeled}, tests=()))
checks.finish()  # "data checks: 120 files checked (header) in 0.01 s, ...; 0 files left out"
results["data"] = {**summary, **checks.summary()}
```
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.records import Records
from kd_keras.runner import RunError

__all__ = ["DUPLICATE_LABEL_POLICIES", "FILE_CHECKS", "HELD_OUT_OVERLAP_POLICIES", "KNOWN_ABNORMAL_CLASSES",
           "DataChecks", "check_data_settings", "check_policies", "checked_labeled", "data_checks_section",
           "labeled_task", "nested_folders", "refuse_missing_folder", "skipped_files"]

# Class folders counted as abnormal with no option: OCT2017 (CNV, DME, DRUSEN), the Kermany chest X-rays
# (PNEUMONIA) and a folder already named for the task. Any other folder is refused by name, never merged silently.
KNOWN_ABNORMAL_CLASSES = ("CNV", "DME", "DRUSEN", "PNEUMONIA", "ABNORMAL")
HELD_OUT_OVERLAP_POLICIES = ("refuse", "drop")
DUPLICATE_LABEL_POLICIES = ("refuse", "keep", "drop")
FILE_CHECKS = ("header", "decode")
_TEST_FIX = "remove the copies from the labeled folder or from the test folder"


def check_policies(held_out_overlap: str, duplicate_labels: str, file_check: str,
                   error: type[Exception] = RunError) -> None:
    """Refuses an unknown value of the three data-check settings (one line naming the option).

    Example:
        >>> check_policies("refuse", "keep", "header")
    """
    for option, value, allowed in (("--held-out-overlap", held_out_overlap, HELD_OUT_OVERLAP_POLICIES),
                                   ("--duplicate-labels", duplicate_labels, DUPLICATE_LABEL_POLICIES),
                                   ("--file-check", file_check, FILE_CHECKS)):
        if value not in allowed:
            raise error(f"{option} must be one of {', '.join(allowed)}, got {value!r}")


def check_data_settings(config: Any, error: type[Exception] = RunError) -> None:
    """The data-check settings of a study's ``config`` checked (one line naming the option) and normalised:
    ``duplicate_labels``, ``file_check``, and where the study has them ``held_out_overlap`` (a study without a
    pool has none), ``abnormal_classes`` and ``ignored_classes`` (tuples; neither may name ``normal_class``,
    default ``NORMAL``, nor both one class).

    Example:
        >>> check_data_settings(OCTStudyConfig(), StudyError)
    """
    check_policies(getattr(config, "held_out_overlap", "refuse"), config.duplicate_labels, config.file_check, error)
    normal = getattr(config, "normal_class", "NORMAL")
    named = {}
    for option, field in (("--abnormal-classes", "abnormal_classes"), ("--ignored-classes", "ignored_classes")):
        if hasattr(config, field):
            names = tuple(getattr(config, field) or ())
            setattr(config, field, names)
            named[option] = names
            if normal in names:
                raise error(f"{option}: {normal!r} is the --normal-class; it cannot be "
                            f"{'abnormal' if 'abnormal' in option else 'ignored'} too")
    both = sorted(set(named.get("--abnormal-classes", ())) & set(named.get("--ignored-classes", ())))
    if both:
        raise error(f"--abnormal-classes and --ignored-classes both name {', '.join(both)}; choose one")


def nested_folders(first: str | os.PathLike, second: str | os.PathLike) -> str | None:
    """How folder ``first`` relates to ``second`` (real paths): ``"is"``, ``"contains"``, ``"is inside"`` or
    ``None``.

    Example:
        >>> nested_folders("/data", "/data/train")
        'contains'
    """
    a, b = os.path.realpath(first), os.path.realpath(second)
    if a == b:
        return "is"
    if b.startswith(a.rstrip(os.sep) + os.sep):
        return "contains"
    if a.startswith(b.rstrip(os.sep) + os.sep):
        return "is inside"
    return None


class DataChecks:
    """What the checks before training did, and the checks themselves (see the module docstring).

    Args:
        file_check: ``"header"`` or ``"decode"`` (:func:`kd_keras.data.validate.check_file`).
        held_out_overlap: ``"refuse"`` or ``"drop"`` pool images that are also held-out images.
        duplicate_labels: ``"refuse"``, ``"keep"`` or ``"drop"`` images under two labels.
        say: where the one-line messages go.
        error: the study's one-line error class (a :class:`~kd_keras.runner.RunError`).

    Attributes:
        checks: JSON-ready record: ``file_check``, ``files_checked``, ``file_check_seconds``,
            ``same_image_seconds``, ``ignored_classes``, ``images_under_two_labels``, and after :meth:`finish`
            ``left_out`` and ``left_out_by_kind`` (``held_out_dropped_from_pool`` when pool images were dropped).
        reports: the :class:`~kd_keras.data.report.DataReport` of every checked source (what was left out).
    """

    def __init__(self, *, file_check: str = "header", held_out_overlap: str = "refuse",
                 duplicate_labels: str = "refuse", say: Callable[[str], None] = print,
                 error: type[Exception] = RunError):
        check_policies(held_out_overlap, duplicate_labels, file_check, error)
        self.file_check, self.held_out_overlap, self.duplicate_labels = file_check, held_out_overlap, duplicate_labels
        self.say, self.error = say, error
        self.checks: dict[str, Any] = {"file_check": file_check, "files_checked": 0, "file_check_seconds": 0.0,
                                       "same_image_seconds": 0.0, "ignored_classes": {},
                                       "images_under_two_labels": []}
        self.reports: list = []

    @classmethod
    def of(cls, config: Any, say: Callable[[str], None] = print, error: type[Exception] = RunError) -> DataChecks:
        """The checks a study's settings ask for (``file_check``, ``held_out_overlap``, ``duplicate_labels``)."""
        return cls(file_check=config.file_check, held_out_overlap=getattr(config, "held_out_overlap", "refuse"),
                   duplicate_labels=config.duplicate_labels, say=say, error=error)

    def track(self, records: Records) -> Records:
        """Keeps ``records``' report among :attr:`reports` (what was left out of it is then shown)."""
        if not any(report is records.report for report in self.reports):
            self.reports.append(records.report)
        return records

    def files(self, records: Records) -> Records:
        """Every file of ``records`` checked (``file_check``); bad ones left out and reported.

        Raises:
            DataError: none of the files is usable (one line).
        """
        from kd_keras.data.validate import check_files

        self.track(records)
        if records.paths is None:
            return records
        start = time.perf_counter()
        self.checks["files_checked"] += len(records)
        records = check_files(records, mode=self.file_check)
        self.checks["file_check_seconds"] = round(self.checks["file_check_seconds"] + time.perf_counter() - start, 3)
        return records

    def classes(self, records: Records, where: str, *, normal_class: str, abnormal_classes: Sequence[str],
                ignored_classes: Sequence[str] = ()) -> Records:
        """Class folders of a normal-vs-abnormal source mean exactly what they say: ``normal_class``, a known
        abnormal class, or a folder the user left out (``ignored_classes``); any other is refused by name."""
        names = records.class_names
        if normal_class not in names:
            raise self.error(f"{where}: no class folder named {normal_class!r} (found {list(names)}); "
                             "pass --normal-class with the folder of the normal images")
        unknown = [c for c in names if c != normal_class and c not in abnormal_classes and c not in ignored_classes]
        if unknown:
            mapped = " ".join([*abnormal_classes, *unknown])
            raise self.error(f"{os.path.join(where, unknown[0])}: class folder {unknown[0]!r} is neither the normal "
                             f"class ({normal_class}) nor a known abnormal class ({', '.join(abnormal_classes)}); "
                             f"pass --abnormal-classes {mapped} to count it as abnormal, or --ignored-classes "
                             f"{' '.join(unknown)} to leave it out")
        return self.ignore_classes(records, where, ignored_classes)

    def ignore_classes(self, records: Records, where: str, ignored_classes: Sequence[str]) -> Records:
        """The classes named in ``ignored_classes`` left out (noted, counted on screen and in the report)."""
        names = records.class_names
        ignored = [c for c in names if c in ignored_classes]
        if not ignored or records.task == "multilabel":
            return records
        for name in ignored:
            count = int((records.labels == names.index(name)).sum())
            records.report.note("ignored_class", os.path.join(where, name),
                                f"class folder left out (--ignored-classes): {count} images")
            self.checks["ignored_classes"][os.path.join(where, name)] = count
        kept = records.subset(~np.isin(records.labels, [names.index(c) for c in ignored]))
        # The other classes renumbered: no head output for a class that is gone.
        kept_names = tuple(c for c in names if c not in ignored)
        new_index = {names.index(c): i for i, c in enumerate(kept_names)}
        labels = np.asarray([new_index.get(int(v), -1) for v in kept.labels], np.int64)
        return dataclasses.replace(kept, labels=labels, class_names=kept_names)

    def two_labels(self, records: Records, where: str) -> Records:
        """One image under two classes: refused, kept (noted) or dropped, as ``duplicate_labels`` says."""
        from kd_keras.data.overlap import example_pairs, images_under_two_labels

        if records.task == "multilabel" or records.paths is None:
            return records
        start = time.perf_counter()
        groups = images_under_two_labels(records)
        self.checks["same_image_seconds"] = round(self.checks["same_image_seconds"] + time.perf_counter() - start, 3)
        if not groups:
            return records
        policy = self.duplicate_labels
        if policy == "refuse":
            raise self.error(f"{where}: {len(groups)} images are in two class folders at once, e.g. "
                             f"{example_pairs(groups)}; remove the wrong copy, or pass --duplicate-labels keep (each "
                             "copy with its folder's label) or --duplicate-labels drop (leave every copy out)")
        rows = sorted({row for g in groups for _, row, _ in g.members})
        for group in groups:
            labels = " and ".join(sorted(group.sets()))
            for _, _, path in group.members:
                detail = f"the same image is under {labels} ({group.how}; --duplicate-labels {policy})"
                if policy == "drop":
                    records.report.skip("conflicting_labels", path, detail)
                else:
                    records.report.note("conflicting_labels", path, detail)
        self.checks["images_under_two_labels"].append({
            "where": where, "images": len(groups), "files": len(rows), "action": policy,
            "examples": [g.paths() for g in groups[:5]]})
        self.say(f"data checks: {where}: {len(groups)} images are under two labels ({policy}), e.g. "
                 f"{example_pairs(groups)}")
        if policy == "drop":
            keep = np.ones(len(records), bool)
            keep[rows] = False
            return records.subset(keep)
        return records

    def held_out(self, sets: Mapping[str, Records | None], *, pool: str | None = "pool",
                 tests: Sequence[str] = (), test_fix: str = _TEST_FIX,
                 pool_option: str = "--unlabeled-dir") -> np.ndarray | None:
        """No held-out image is trained on.

        Args:
            sets: name -> records, in the order messages name them (e.g. ``pool``, ``train``, ``validation``,
                ``test set 'x'``); ``None`` or array sources are left out.
            pool: the name of the unlabeled pool in ``sets`` (``None``: no pool).
            tests: the names of the test sets; every other name but the pool is a training set.
            test_fix: what the user should do about a test image that is a training image.
            pool_option: the option that names the pool folder (in the message of a pool left empty).

        Returns:
            The rows of the pool to keep (all, or without the shared images with ``held_out_overlap="drop"``);
            ``None`` without a pool.

        Raises:
            The study's error: a test image that is also a training image; with ``"refuse"``, a pool image that
            is also a labeled, validation or test image; with ``"drop"``, a pool made only of such images.
        """
        from kd_keras.data.overlap import example_pairs, find_same_images
        from kd_keras.data.report import DataReport

        paths = {name: r.paths for name, r in sets.items() if r is not None and r.paths is not None}
        start = time.perf_counter()
        groups = [g for g in find_same_images(paths) if len(g.sets()) > 1]
        self.checks["same_image_seconds"] = round(self.checks["same_image_seconds"] + time.perf_counter() - start, 3)
        training = [name for name in paths if name != pool and name not in tests]
        for name in tests:
            leaked = [g for g in groups if name in g.sets() and g.sets() & set(training)]
            if leaked:
                where = ", ".join(f"{s} {n}" for s in training if (n := sum(s in g.sets() for g in leaked)))
                raise self.error(f"{name}: {len(leaked)} images are also training or validation images ({where}), "
                                 f"e.g. {example_pairs(leaked)}; a test image must never be trained on: {test_fix}")
        if pool is None or sets.get(pool) is None:
            return None
        size = len(sets[pool])
        shared = [g for g in groups if pool in g.sets()]
        if not shared:
            return np.ones(size, bool)
        counts = {s: sum(s in g.sets() for g in shared) for s in paths if s != pool}
        where = ", ".join(f"{s} {n}" for s, n in counts.items() if n)
        if self.held_out_overlap == "refuse":
            raise self.error(f"unlabeled pool: {len(shared)} images are also labeled, validation or test images "
                             f"({where}), e.g. {example_pairs(shared)}; the students would train on them: remove "
                             "them from the pool folder, or pass --held-out-overlap drop to leave them out of the "
                             "pool")
        rows = sorted({row for g in shared for row in g.rows(pool)})
        keep = np.ones(size, bool)
        keep[rows] = False
        if not keep.any():
            raise self.error(f"unlabeled pool: all {size} images are also labeled, validation or test images "
                             f"({where}); pass a {pool_option} folder of other images")
        report = DataReport()
        for group in shared:
            others = ", ".join(sorted(group.sets() - {pool}))
            for row in group.rows(pool):
                report.skip("held_out_overlap", paths[pool][row], f"also in {others} ({group.how}); dropped "
                            "from the pool (--held-out-overlap drop)")
        self.reports.append(report)
        self.checks["held_out_dropped_from_pool"] = {"files": len(rows), "shared_with": counts,
                                                     "examples": [g.paths() for g in shared[:5]]}
        self.say(f"data checks: dropped {len(rows)} pool images that are also {where} (--held-out-overlap drop), "
                 f"e.g. {example_pairs(shared)}")
        return keep

    def skipped_files(self) -> list[dict[str, str]]:
        """Every file left out (path, kind, detail), once each."""
        return skipped_files(self.reports)

    def finish(self, shown: int = 10) -> dict[str, Any]:
        """Counts what was left out and says it: one line, then the first ``shown`` files left out."""
        checks, skipped = self.checks, self.skipped_files()
        checks["left_out"] = len(skipped)
        checks["left_out_by_kind"] = dict(sorted(Counter(entry["kind"] for entry in skipped).items()))
        line = (f"data checks: {checks['files_checked']} files checked ({checks['file_check']}) in "
                f"{checks['file_check_seconds']:.2f} s, same-image search {checks['same_image_seconds']:.2f} s; "
                f"{len(skipped)} files left out")
        if skipped:
            line += " (" + ", ".join(f"{n} {k}" for k, n in checks["left_out_by_kind"].items()) + ")"
        self.say(line)
        for entry in skipped[:shown]:
            self.say(f"  left out {entry['path']}: {entry['detail']}")
        for folder, count in checks["ignored_classes"].items():
            self.say(f"  left out class folder {folder} (--ignored-classes): {count} images")
        if len(skipped) > shown:
            self.say(f"  ... {len(skipped) - shown} more in results.json (data.skipped_files)")
        return checks

    def summary(self) -> dict[str, Any]:
        """``{"checks": ..., "skipped_files": [...]}``: the part of ``results.json``'s ``data`` that
        :func:`data_checks_section` reads."""
        return {"checks": self.checks, "skipped_files": self.skipped_files()}


def labeled_task(records: Records, layout: str, task: str) -> Records:
    """The task ``task`` applied to a labeled source read with ``task=None`` (after its checks), as
    :func:`kd_keras.data.sources.load_labeled` applies it: ``"auto"`` is DR grades for eyepacs/messidor and the
    classes as given otherwise.

    Raises:
        KeyError, ValueError: an unknown task, or one the source cannot have.
    """
    from kd_keras.data import tasks

    if task != "auto":
        return tasks.apply_task(records, task)
    if layout in ("eyepacs", "messidor"):
        return tasks.dr_grades(records, n_grades=max(int(records.labels.max()) + 1, 2))
    return records


def checked_labeled(records: Records, checks: DataChecks, where: str, *, layout: str, task: str,
                    abnormal_classes: Sequence[str], ignored_classes: Sequence[str]) -> Records:
    """A labeled source read with ``task=None``, checked before its task is applied: class folders (with
    ``task="normal_vs_abnormal"`` each is NORMAL, one of ``abnormal_classes`` or one of ``ignored_classes``;
    otherwise the ``ignored_classes`` are left out), every file, images under two labels."""
    checks.track(records)
    if layout == "folders" and task == "normal_vs_abnormal":
        records = checks.classes(records, where, normal_class="NORMAL", abnormal_classes=abnormal_classes,
                                 ignored_classes=ignored_classes)
    else:
        records = checks.ignore_classes(records, where, ignored_classes)
    return checks.two_labels(checks.files(records), where)


def skipped_files(reports: Sequence) -> list[dict[str, str]]:
    """Every file the :class:`~kd_keras.data.report.DataReport` objects ``reports`` left out (path, kind,
    detail), once each, in order."""
    seen, out = set(), []
    for report in reports:
        for problem in report.entries("skipped"):
            if problem.path not in seen:
                seen.add(problem.path)
                out.append({"path": problem.path, "kind": problem.kind, "detail": problem.detail})
    return out


def data_checks_section(results: Mapping[str, Any], shown: int = 50) -> str:
    """``## Data checks`` of ``report.md``: what was checked before training, every file left out (the first
    ``shown``; all of them are in ``results.json``), ignored class folders, images under two labels, pool images
    dropped as held-out. Reads ``results["data"]["checks"]`` and ``["skipped_files"]``.

    Example:
        >>> data_checks_section({"data": {"checks": {}, "skipped_files": []}}).splitlines()[0]
        '## Data checks'
    """
    from kd_keras.evaluation.report import markdown_table

    d = results.get("data", {})
    checks, skipped = d.get("checks") or {}, d.get("skipped_files") or []
    lines = ["## Data checks", ""]
    if checks:
        lines.append(f"Before training, {checks.get('files_checked', 0)} labeled, pool and test files were checked "
                     f"(`file_check: {checks.get('file_check')}`, {checks.get('file_check_seconds', 0):.2f} s) and "
                     f"searched for the same image in two places (same path, symlink, hard link or identical "
                     f"bytes; {checks.get('same_image_seconds', 0):.2f} s): no test image is a training image, "
                     "and no pool image is a labeled, validation or test image.")
    by_kind = ", ".join(f"{n} {k}" for k, n in (checks.get("left_out_by_kind") or {}).items())
    lines += ["", f"{len(skipped)} files left out" + (f" ({by_kind})" if by_kind else "") + "."]
    if skipped:
        lines += ["", markdown_table(["file", "kind", "problem"],
                                     [[f"`{e['path']}`", e["kind"], e["detail"]] for e in skipped[:shown]])]
        if len(skipped) > shown:
            lines.append(f"... and {len(skipped) - shown} more (`data.skipped_files` in results.json).")
    for folder, count in (checks.get("ignored_classes") or {}).items():
        lines.append(f"- Class folder `{folder}` left out (`ignored_classes`): {count} images.")
    for entry in checks.get("images_under_two_labels") or []:
        example = " = ".join(f"`{p}`" for p in entry["examples"][0][:2]) if entry["examples"] else ""
        lines.append(f"- {entry['where']}: {entry['images']} images are under two labels "
                     f"(`duplicate_labels: {entry['action']}`), e.g. {example}.")
    dropped = checks.get("held_out_dropped_from_pool")
    if dropped:
        shared = ", ".join(f"{k} {n}" for k, n in dropped["shared_with"].items() if n)
        lines.append(f"- {dropped['files']} pool images were also {shared} images and were dropped from the pool "
                     "(`held_out_overlap: drop`).")
    return "\n".join(lines)


def refuse_missing_folder(path: str | os.PathLike | None, option: str, error: type[Exception] = RunError) -> None:
    """A data path given by ``option`` that does not exist, refused before anything is written."""
    if path is not None and not Path(path).exists():
        raise error(f"{option} {path}: no such file or folder")
