"""The data of study 002: labeled B-scans, an unlabeled pool and hold-out tests, binarised and split by patient.

With no ``data_dir`` the embedded synthetic OCT data is generated (:mod:`kd_keras.data.synthetic_oct`): labeled,
unlabeled and test volumes, with the pool's true labels kept aside to score the pseudo-labels (never trained on).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.records import Records
from kd_keras.studies.data_checks import DataChecks, nested_folders, skipped_files
from kd_keras.studies.oct_config import HELDOUT_TEST, SYNTHETIC_TEST, OCTStudyConfig, StudyError

__all__ = ["StudyData", "check_folders", "prepare_data"]

@dataclass
class StudyData:
    """The resolved data of a run.

    Attributes:
        train: labeled training records (``task`` binary: normal 0, abnormal 1; multiclass: one class per
            folder, in the folders' sorted order).
        validation: labeled validation records (patient-disjoint from ``train``).
        pool: unlabeled pool records.
        tests: test set name -> records.
        class_names: ``(normal, abnormal)`` (binary) or the class folders (multiclass).
        source: what the data is (a path, or the synthetic dataset's folder).
        cluster_unit: ``"volume"`` or ``"patient"``.
        pool_truth: the pool's true binary labels where known (synthetic truth file, or the labels of the
            patients moved to the pool by ``labeled_fraction``), -1 elsewhere: used only to score the
            pseudo-labels, never for training.
        reports: the sources' :class:`~kd_keras.data.report.DataReport` objects (every file left out).
        checks: what the checks before training did (:func:`prepare_data`): file check mode, files checked,
            seconds, files left out by kind, ignored class folders, images under two labels, pool images
            dropped as held-out.
    """

    train: Records
    validation: Records
    pool: Records
    tests: dict[str, Records]
    class_names: tuple[str, ...]
    source: str
    cluster_unit: str
    pool_truth: np.ndarray
    volumes: dict[str, str] = field(default_factory=dict)
    reports: list = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    def clusters(self, records: Records) -> np.ndarray:
        """Cluster id per row of ``records`` (volume for the synthetic data, else patient)."""
        if self.cluster_unit == "volume" and records.paths is not None:
            return np.asarray([self.volumes.get(os.path.normpath(p), str(pid))
                               for p, pid in zip(records.paths, records.patients, strict=True)], dtype=object)
        return np.asarray(records.patients, dtype=object)

    def skipped_files(self) -> list[dict[str, str]]:
        return skipped_files(self.reports)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "class_names": list(self.class_names),
            "labeled_train": len(self.train),
            "validation": len(self.validation),
            "unlabeled": len(self.pool),
            "train_class_counts": self.train.class_counts(),
            "validation_class_counts": self.validation.class_counts(),
            "train_patients": len(set(self.train.patients.tolist())),
            "validation_patients": len(set(self.validation.patients.tolist())),
            "test_sets": list(self.tests),
            "test_sizes": {k: len(v) for k, v in self.tests.items()},
            "test_class_counts": {k: v.class_counts() for k, v in self.tests.items()},
            "cluster_unit": self.cluster_unit,
            "pool_truth_known": int((self.pool_truth >= 0).sum()),
            "skipped_files": self.skipped_files(),
            "checks": self.checks,
        }


def _as_unlabeled(records: Records) -> Records:
    return dataclasses.replace(records, labels=np.full(len(records), -1, np.int64), class_names=(),
                               task="unlabeled", labeled=np.zeros(len(records), bool))


def _binary(records: Records, normal_class: str, where: str, ignored: tuple[str, ...] = (),
            every_class: bool = True) -> Records:
    from kd_keras.data import tasks

    positive = [c for c in records.class_names if c != normal_class and c not in ignored]
    if not positive:
        raise StudyError(f"{where}: no usable ABNORMAL images (only the class folder {normal_class!r}); normal vs "
                         "abnormal needs an abnormal class folder too (e.g. CNV, PNEUMONIA)")
    name = positive[0] if len(positive) == 1 else "ABNORMAL"
    binary = tasks.normal_vs_abnormal(records, negative=normal_class, positive_name=name)
    counts = binary.class_counts()
    empty = [k for k, v in counts.items() if v == 0]
    if empty and every_class:
        left_out = records.report.counts()["skipped_by_kind"]
        why = f"; left out: {', '.join(f'{n} {k}' for k, n in left_out.items())}" if left_out else ""
        raise StudyError(f"{where}: no usable {' or '.join(empty)} images (class counts {counts}{why}); normal "
                         "vs abnormal needs both: add images to the empty class folder")
    return binary


def _multiclass(records: Records, where: str, ignored: tuple[str, ...] = (), every_class: bool = True) -> Records:
    """One class per class folder (OCT2017: CNV, DME, DRUSEN, NORMAL), ``ignored`` folders removed."""
    from kd_keras.data import tasks

    records = tasks.multiclass(records)
    names = tuple(c for c in records.class_names if c not in ignored)
    if names != records.class_names:  # the ignored folders' rows are gone already; renumber the others
        old = {records.class_names.index(c): i for i, c in enumerate(names)}
        labels = np.asarray([old.get(int(v), -1) for v in records.labels], np.int64)
        records = dataclasses.replace(records, labels=labels, class_names=names)
    counts = records.class_counts()
    if sum(v > 0 for v in counts.values()) < 2 and every_class:
        raise StudyError(f"{where}: the multi-class task needs images in at least two class folders (class counts "
                         f"{counts}); add images, or use --task binary")
    return records


def _same_classes(name: str, records: Records, labeled: Records) -> None:
    if tuple(records.class_names) != tuple(labeled.class_names):
        raise StudyError(f"test set {name!r}: class folders {list(records.class_names)} differ from the labeled "
                         f"data's {list(labeled.class_names)}; a multi-class test set needs the same class folders "
                         "(an empty folder is fine), or use --ignored-classes")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _refuse_shared_folders(config: OCTStudyConfig, labeled: Path, unlabeled: list[Path],
                           tests: dict[str, Path]) -> None:
    """Folders that would put held-out images into training, refused by name before anything is read."""
    for test in tests.values():
        how = nested_folders(test, labeled)
        if how:
            raise StudyError(f"--test-dir {test} {how} the --data-dir {labeled}: its images would be trained on; "
                             "pass a test folder of other images")
    if config.held_out_overlap != "refuse":
        return  # "drop": the images the folders share are dropped from the pool, image by image
    for folder in unlabeled:
        for option, other in (("--data-dir", labeled), *(("--test-dir", t) for t in tests.values())):
            how = nested_folders(folder, other)
            if how and how != "is inside":  # a pool folder inside the data root is an unknown class folder
                raise StudyError(f"--unlabeled-dir {folder} {how} the {option} {other}: its labeled, validation "
                                 "and test images would be pseudo-labeled and trained on; pass a folder of other "
                                 "images, or --held-out-overlap drop to leave the shared images out of the pool")


def check_folders(config: OCTStudyConfig) -> None:
    """The data folders of ``config``, checked before anything is written or read: each exists and is a folder,
    and none puts held-out images into training (a pool or test folder that is, holds or lies in the labeled
    folder). Fast (no file is read); :func:`prepare_data` checks the files.

    Raises:
        DataError: a folder is missing or is not a folder (one line naming it).
        StudyError: folders that share images (one line naming both options).

    Example:

    ```python
    check_folders(OCTStudyConfig.from_preset("smoke", data_dir="OCT2017/train", unlabeled_dirs=("OCT2017/train",)))
    # StudyError: --unlabeled-dir OCT2017/train is the --data-dir OCT2017/train: ...
    ```
    """
    from kd_keras.data.source_files import real_dir

    if config.data_dir is None:
        return
    real_dir(config.data_dir)
    for option, folders in (("--unlabeled-dir", config.unlabeled_dirs), ("--test-dir", config.test_dirs)):
        for folder in folders:
            real_dir(folder, f"{option} folder")
    tests = {str(i): Path(d) for i, d in enumerate(config.test_dirs)}
    _refuse_shared_folders(config, Path(config.data_dir), [Path(d) for d in config.unlabeled_dirs], tests)


def _held_out_overlap(data: StudyData, checks: DataChecks) -> None:
    """No held-out image is ever trained on: a test image in the training data is refused; a pool image that
    is also labeled, validation or test is refused or (``held_out_overlap="drop"``) dropped from the pool."""
    sets = {"pool": data.pool, "train": data.train, "validation": data.validation,
            **{f"test set {name!r}": records for name, records in data.tests.items()}}
    keep = checks.held_out(sets, tests=[f"test set {name!r}" for name in data.tests])
    if keep is not None and not keep.all():
        data.pool, data.pool_truth = data.pool.subset(keep), data.pool_truth[keep]


def prepare_data(config: OCTStudyConfig, say: Callable[[str], None] = print) -> StudyData:
    """Resolve, check, binarise and split the data of ``config`` (see :class:`OCTStudyConfig`).

    Before any training, every file of the labeled set, the pool and each test set is checked
    (``config.file_check``): unusable files are left out and reported (on screen, ``results.json`` and
    ``report.md``). Refused with one line: a class folder that is neither normal nor a known abnormal class, a
    class with no usable image, an image under two labels (``duplicate_labels``), a test image that is also a
    training image, a pool image that is also a labeled, validation or test image (``held_out_overlap``), no pool.

    Raises:
        DataError: a folder is missing or holds no usable image (one line).
        StudyError: the refusals above, no normal class, too few patients for the splits.
    """
    from kd_keras.data import sources, splits

    data_checks = DataChecks.of(config, say, StudyError)
    checks, reports = data_checks.checks, data_checks.reports
    volumes: dict[str, str] = {}
    truth_by_path: dict[str, int] = {}
    if config.data_dir is None:
        from kd_keras.data.synthetic_oct import SyntheticOCTConfig, generate_synthetic_oct

        synthetic = SyntheticOCTConfig(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in config.synthetic.items()})
        root = generate_synthetic_oct(config=synthetic, progress=False)
        say(f"data: embedded synthetic OCT at {root}")
        labeled_dirs, unlabeled_dirs = [root / "labeled"], [root / "unlabeled"]
        test_dirs = {SYNTHETIC_TEST: root / "test"}
        # Patients generated for validation only (synthetic validation_patients): inference, never trained on.
        extra_validation = root / "validation" if (root / "validation").is_dir() else None
        for row in _read_csv(root / "index.csv"):
            volumes[os.path.normpath(str(root / row["file"]))] = row["volume"]
        for row in _read_csv(root / "unlabeled_truth.csv"):
            truth_by_path[os.path.normpath(str(root / row["file"]))] = row["label"]
        source, cluster_unit = f"synthetic OCT ({root})", "volume"
    else:
        labeled_dirs = [Path(config.data_dir)]
        unlabeled_dirs = [Path(d) for d in config.unlabeled_dirs]
        test_dirs = {}
        for directory in config.test_dirs:
            name = Path(directory).name or str(directory)
            if name in test_dirs or name == "validation":
                name = f"{Path(directory).parent.name}_{name}"
            test_dirs[name] = Path(directory)
        source, cluster_unit = str(config.data_dir), "patient"
        extra_validation = None
        _refuse_shared_folders(config, labeled_dirs[0], unlabeled_dirs, test_dirs)

    def labeled_source(directory: Path, every_class: bool = True) -> Records:
        # An empty disease folder is fine for normal vs abnormal (checked after binarising).
        records = data_checks.track(sources.from_class_folders(directory, allow_empty_classes=True))
        records = data_checks.classes(records, str(directory), normal_class=config.normal_class,
                                      abnormal_classes=config.abnormal_classes,
                                      ignored_classes=config.ignored_classes)
        records = data_checks.files(records)
        records = data_checks.two_labels(records, str(directory))
        if config.task == "multiclass":
            return _multiclass(records, str(directory), config.ignored_classes, every_class)
        return _binary(records, config.normal_class, str(directory), config.ignored_classes, every_class)

    labeled = labeled_source(labeled_dirs[0])
    tests = {}
    if labeled.given_split is not None and config.data_dir is not None:
        given = labeled.given_split
        if "test" in set(given.tolist()) and not test_dirs:
            tests["test"] = labeled.subset(given == "test")
        labeled = labeled.subset(np.isin(given, ["train", "val"]))
    for name, directory in test_dirs.items():
        tests[name] = labeled_source(directory)
        if config.task == "multiclass":
            _same_classes(name, tests[name], labeled)
    try:
        if tests:
            parts = splits.split_by_patient(labeled, (1 - config.validation_fraction, config.validation_fraction),
                                            ("train", "validation"), seed=config.seed)
        else:
            rest = 1 - config.validation_fraction - config.test_fraction
            parts = splits.split_by_patient(labeled, (rest, config.validation_fraction, config.test_fraction),
                                            ("train", "validation", "test"), seed=config.seed)
            tests[HELDOUT_TEST] = parts["test"]
        train, validation = parts["train"], parts["validation"]
        if extra_validation is not None:
            validation = Records.concat(validation, labeled_source(extra_validation, every_class=False))
        moved = None
        if config.labeled_fraction < 1.0:
            kept = splits.split_by_patient(train, (config.labeled_fraction, 1 - config.labeled_fraction),
                                           ("labeled", "moved"), seed=config.seed)
            train, moved = kept["labeled"], kept["moved"]
    except ValueError as error:
        raise StudyError(f"{source}: {error}") from None
    pools, truth = [], []

    def true_label(path: str) -> int:  # the synthetic pool's class name -> the task's label (-1: unknown)
        name = truth_by_path.get(os.path.normpath(path))
        if name is None:
            return -1
        if config.task == "multiclass":
            return labeled.class_names.index(name) if name in labeled.class_names else -1
        return int(name != config.normal_class)

    for directory in unlabeled_dirs:
        pool = data_checks.files(sources.from_folder(directory))
        pools.append(pool)
        truth.append(np.asarray([true_label(p) for p in pool.paths], np.int64))
    if moved is not None and len(moved):
        pools.append(_as_unlabeled(moved))
        truth.append(moved.labels.astype(np.int64))
    if not pools:
        raise StudyError("no unlabeled images: pass --unlabeled-dir, or --labeled-fraction below 1 to move "
                         "the labels of some training patients out")
    pool = pools[0]
    for more in pools[1:]:
        pool = Records.concat(pool, more)
    data = StudyData(train=train, validation=validation, pool=pool, tests=tests,
                     class_names=tuple(labeled.class_names), source=source, cluster_unit=cluster_unit,
                     pool_truth=np.concatenate(truth), volumes=volumes, reports=reports, checks=checks)
    _held_out_overlap(data, data_checks)
    data_checks.finish()
    return data
