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
from kd_keras.studies.oct_config import HELDOUT_TEST, SYNTHETIC_TEST, OCTStudyConfig, StudyError

__all__ = ["StudyData", "prepare_data"]

@dataclass
class StudyData:
    """The resolved data of a run.

    Attributes:
        train: labeled training records (binary: normal 0, abnormal 1).
        validation: labeled validation records (patient-disjoint from ``train``).
        pool: unlabeled pool records.
        tests: test set name -> records.
        class_names: ``(normal, abnormal)``.
        source: what the data is (a path, or the synthetic dataset's folder).
        cluster_unit: ``"volume"`` or ``"patient"``.
        pool_truth: the pool's true binary labels where known (synthetic truth file, or the labels of the
            patients moved to the pool by ``labeled_fraction``), -1 elsewhere: used only to score the
            pseudo-labels, never for training.
        skipped: every file left out, with its problem.
    """

    train: Records
    validation: Records
    pool: Records
    tests: dict[str, Records]
    class_names: tuple[str, str]
    source: str
    cluster_unit: str
    pool_truth: np.ndarray
    volumes: dict[str, str] = field(default_factory=dict)
    reports: list = field(default_factory=list)

    def clusters(self, records: Records) -> np.ndarray:
        """Cluster id per row of ``records`` (volume for the synthetic data, else patient)."""
        if self.cluster_unit == "volume" and records.paths is not None:
            return np.asarray([self.volumes.get(os.path.normpath(p), str(pid))
                               for p, pid in zip(records.paths, records.patients, strict=True)], dtype=object)
        return np.asarray(records.patients, dtype=object)

    def skipped_files(self) -> list[dict[str, str]]:
        seen, out = set(), []
        for report in self.reports:
            for problem in report.entries("skipped"):
                if problem.path not in seen:
                    seen.add(problem.path)
                    out.append({"path": problem.path, "kind": problem.kind, "detail": problem.detail})
        return out

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
        }


def _as_unlabeled(records: Records) -> Records:
    return dataclasses.replace(records, labels=np.full(len(records), -1, np.int64), class_names=(),
                               task="unlabeled", labeled=np.zeros(len(records), bool))


def _binary(records: Records, normal_class: str, where: str) -> Records:
    from kd_keras.data import tasks

    if normal_class not in records.class_names:
        raise StudyError(f"{where}: no class folder named {normal_class!r} (found {list(records.class_names)}); "
                         "pass --normal-class with the folder of the normal images")
    positive = [c for c in records.class_names if c != normal_class]
    name = positive[0] if len(positive) == 1 else "ABNORMAL"
    binary = tasks.normal_vs_abnormal(records, negative=normal_class, positive_name=name)
    counts = binary.class_counts()
    empty = [k for k, v in counts.items() if v == 0]
    if empty:
        raise StudyError(f"{where}: no {' or '.join(empty)} images (class counts {counts}); normal vs abnormal "
                         "needs both")
    return binary


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def prepare_data(config: OCTStudyConfig, say: Callable[[str], None] = print) -> StudyData:
    """Resolve, binarise and split the data of ``config`` (see :class:`OCTStudyConfig`).

    Raises:
        DataError: a folder is missing or holds no usable image (one line).
        StudyError: no normal class, too few patients for the splits.
    """
    from kd_keras.data import sources, splits

    volumes: dict[str, str] = {}
    truth_by_path: dict[str, int] = {}
    if config.data_dir is None:
        from kd_keras.data.synthetic_oct import NORMAL, SyntheticOCTConfig, generate_synthetic_oct

        synthetic = SyntheticOCTConfig(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in config.synthetic.items()})
        root = generate_synthetic_oct(config=synthetic, progress=False)
        say(f"data: embedded synthetic OCT at {root}")
        labeled_dirs, unlabeled_dirs = [root / "labeled"], [root / "unlabeled"]
        test_dirs = {SYNTHETIC_TEST: root / "test"}
        for row in _read_csv(root / "index.csv"):
            volumes[os.path.normpath(str(root / row["file"]))] = row["volume"]
        for row in _read_csv(root / "unlabeled_truth.csv"):
            truth_by_path[os.path.normpath(str(root / row["file"]))] = int(row["label"] != NORMAL)
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
    reports = []
    # An empty disease folder is fine for normal vs abnormal (checked after binarising).
    labeled = sources.from_class_folders(labeled_dirs[0], allow_empty_classes=True)
    reports.append(labeled.report)
    labeled = _binary(labeled, config.normal_class, str(labeled_dirs[0]))
    tests = {}
    if labeled.given_split is not None and config.data_dir is not None:
        given = labeled.given_split
        if "test" in set(given.tolist()) and not test_dirs:
            tests["test"] = labeled.subset(given == "test")
        labeled = labeled.subset(np.isin(given, ["train", "val"]))
    for name, directory in test_dirs.items():
        records = sources.from_class_folders(directory, allow_empty_classes=True)
        reports.append(records.report)
        tests[name] = _binary(records, config.normal_class, str(directory))
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
        moved = None
        if config.labeled_fraction < 1.0:
            kept = splits.split_by_patient(train, (config.labeled_fraction, 1 - config.labeled_fraction),
                                           ("labeled", "moved"), seed=config.seed)
            train, moved = kept["labeled"], kept["moved"]
    except ValueError as error:
        raise StudyError(f"{source}: {error}") from None
    pools, truth = [], []
    for directory in unlabeled_dirs:
        pool = sources.from_folder(directory)
        reports.append(pool.report)
        pools.append(pool)
        truth.append(np.asarray([truth_by_path.get(os.path.normpath(p), -1) for p in pool.paths], np.int64))
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
                     pool_truth=np.concatenate(truth), volumes=volumes, reports=reports)
    return data
