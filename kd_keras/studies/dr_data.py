"""The data of study 000: the labeled retina images (a layout on disk, or the embedded synthetic fundus
photographs), the pool of unlabeled random images, and the patient-level folds.

Everything here is derived from the settings (:class:`~kd_keras.studies.dr_config.DRKDConfig`) and written under
``<out>/data/`` (kept when ``--overwrite`` moves a run aside), so a replay of ``config.yaml`` sees the same data.

Example:

```python
data = prepare_data(config, Path("runs/dr_kd"))
for k, (train, test) in enumerate(data.folds):
    ...
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_keras.data.records import Records
from kd_keras.studies.dr_config import DRError, DRKDConfig

if TYPE_CHECKING:
    from kd_keras.studies.data_checks import DataChecks

__all__ = ["DRData", "check_paths", "load_labeled", "prepare_data"]


@dataclass
class DRData:
    """The resolved data of a run.

    Attributes:
        labeled: the labeled images with their task applied (after ``limit``).
        pool: the unlabeled random images.
        pool_dir: the pool's folder.
        folds: ``(train, test)`` per fold that is run (patient-level, the first ``max_folds``); with generated
            data and ``synthetic_test_patients``, every test set also holds the same test-only patients.
        checks: what the checks before training did (:class:`~kd_keras.studies.data_checks.DataChecks`).
        holdout: with ``holdout_fraction``, the hold-out test set: patients in no fold (neither trained nor
            tested on by the cross-validation), on which every fold's models are also evaluated; else ``None``.
    """

    labeled: Records
    pool: Records
    pool_dir: Path
    folds: list[tuple[Records, Records]] = field(default_factory=list)
    checks: DataChecks | None = None
    holdout: Records | None = None

    def summary(self) -> dict[str, Any]:
        out = {"labeled": self.labeled.summary(), "pool": {"root": str(self.pool_dir), "images": len(self.pool)},
               "folds": [{"train": len(train), "test": len(test)} for train, test in self.folds]}
        if self.holdout is not None:
            out["holdout"] = {"images": len(self.holdout), "patients": len(set(self.holdout.patients.tolist())),
                              "class_counts": self.holdout.class_counts()}
        return out | (self.checks.summary() if self.checks is not None else {})


def load_labeled(layout: str, path: str, *, image_dir: str | None = None, task: str = "auto") -> Records:
    """A labeled source in a layout on disk, with its task applied.

    Args:
        layout: ``folders`` (one folder per class), ``eyepacs`` (``trainLabels.csv``), ``messidor`` (the sheet as
            CSV), ``chexpert`` (``train.csv``), ``csv`` (a generic manifest) or ``npz`` (MedMNIST-style arrays).
        path: the folder, CSV or ``.npz`` file.
        image_dir: where a CSV's images are (default: next to the CSV).
        task: ``auto`` (DR grades for eyepacs/messidor, the classes as given otherwise) or a task name of
            :func:`kd_keras.data.tasks.apply_task`.

    Example:
        >>> records = load_labeled("eyepacs", "trainLabels.csv", image_dir="train", task="referable_dr")
    """
    from kd_keras.data import sources

    if layout not in sources.LAYOUTS:
        raise DRError(f"--layout {layout!r}: not a data layout on disk ({', '.join(sources.LAYOUTS)})")
    try:
        return sources.load_labeled(layout, path, image_dir=image_dir, task=task)
    except (KeyError, ValueError) as error:
        raise DRError(f"--task {task}: {str(error).strip(chr(39))}") from None


def _synthetic(config: DRKDConfig, out: Path, test_only: bool = False) -> Records:
    """The generated fundus photographs with the task applied; ``test_only``: the ``synthetic_test_patients``
    test-only patients (:func:`kd_keras.data.synthetic_fundus.test_only_fundus`)."""
    from kd_keras.data import sources, tasks
    from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus, test_only_fundus

    generator = SyntheticFundusConfig(
        patients=config.synthetic_test_patients if test_only else config.synthetic_patients,
        image_size=max(64, config.image_size), seed=config.seed, difficulty=config.synthetic_difficulty)
    if test_only:
        records = test_only_fundus(out / "data" / "fundus_test", generator)
    else:
        root = generate_synthetic_fundus(out / "data" / "fundus", generator)
        records = sources.eyepacs(root / "trainLabels.csv", root / "train")
    if config.task in ("auto", "referable_dr"):
        return tasks.referable_dr(records)
    return tasks.apply_task(records, config.task)


def check_paths(config: DRKDConfig) -> None:
    """The labeled data and the pool folder of ``config``, checked before anything is written: each exists, and
    the pool folder neither is, holds nor lies in the labeled data's folder (its images would be distilled on).

    Raises:
        DRError: one line naming the option.
    """
    from kd_keras.studies.data_checks import nested_folders, refuse_missing_folder

    if config.layout != "synthetic":
        refuse_missing_folder(config.data, "--data", DRError)
        refuse_missing_folder(config.image_dir, "--image-dir", DRError)
    if config.pool is None:
        return
    if not Path(config.pool).is_dir():
        raise DRError(f"--pool {config.pool}: no such folder (a folder of unlabeled random images)")
    labeled = config.image_dir or config.data
    if config.layout != "synthetic" and labeled and Path(labeled).is_dir() and config.held_out_overlap == "refuse":
        how = nested_folders(config.pool, labeled)
        if how:
            raise DRError(f"--pool {config.pool} {how} the labeled images' folder {labeled}: the students would "
                          "distil on labeled and test images; pass a folder of other images, or --held-out-overlap "
                          "drop to leave the shared images out of the pool")


def _checked_labeled(config: DRKDConfig, checks: DataChecks) -> Records:
    """The labeled source as on disk, checked (class folders, every file, images under two labels), then its
    task applied."""
    from kd_keras.data import sources
    from kd_keras.studies.data_checks import checked_labeled, labeled_task

    if config.layout not in sources.LAYOUTS:
        raise DRError(f"--layout {config.layout!r}: not a data layout on disk ({', '.join(sources.LAYOUTS)})")
    records = sources.load_labeled(config.layout, config.data, image_dir=config.image_dir, task=None)
    records = checked_labeled(records, checks, str(config.data), layout=config.layout, task=config.task,
                              abnormal_classes=config.abnormal_classes, ignored_classes=config.ignored_classes)
    try:
        return labeled_task(records, config.layout, config.task)
    except (KeyError, ValueError) as error:
        raise DRError(f"--task {config.task}: {str(error).strip(chr(39))}") from None


def prepare_data(config: DRKDConfig, out: Path, say: Callable[[str], None] = print) -> DRData:
    """The labeled images, the random-image pool and the folds of ``config``, checked before any training
    (:mod:`kd_keras.studies.data_checks`): every labeled and pool file (``file_check``; bad files left out and
    reported), class folders, images under two labels (``duplicate_labels``), pool images that are also labeled
    images (``held_out_overlap``).

    Raises:
        DRError: no ``data`` for a layout on disk, a missing pool folder, too few patients for the folds, and the
            refusals of the data checks.
        DataError: a folder or sheet without usable images (one line).
    """
    from kd_keras.data import sources
    from kd_keras.data.natural_images import natural_image_pool
    from kd_keras.data.splits import kfold_by_patient, split_by_patient
    from kd_keras.studies.data_checks import DataChecks

    out = Path(out)
    checks = DataChecks.of(config, say, DRError)
    if config.layout == "synthetic":
        labeled = checks.two_labels(checks.files(_synthetic(config, out)), "synthetic fundus")
        pool_size = max(64, config.image_size)
        pool_out = out / "data" / "natural"
    else:
        if not config.data:
            raise DRError(f"--layout {config.layout}: give --data (the labeled images), or run --demo")
        labeled = _checked_labeled(config, checks)
        pool_size = config.image_size
        pool_out = out / "data" / f"natural_{config.pool_size}_{config.image_size}"
    try:
        pool_dir = natural_image_pool(config.pool, out_dir=pool_out, n_images=config.pool_size,
                                      image_size=pool_size, seed=config.seed)
    except FileNotFoundError as error:
        raise DRError(f"--pool {config.pool}: {error}") from None
    pool = checks.files(sources.from_folder(pool_dir))
    keep = checks.held_out({"pool": pool, "labeled": labeled}, pool_option="--pool")
    if keep is not None and not keep.all():
        pool = pool.subset(keep)
    if config.limit and config.limit < len(labeled):
        keep = np.sort(np.random.default_rng(config.seed).choice(len(labeled), config.limit, replace=False))
        labeled = labeled.subset(keep)
    holdout, in_folds = None, labeled
    if config.holdout_fraction:  # other patients, in no fold: one test set shared by every fold's models
        try:
            parts = split_by_patient(labeled, (1.0 - config.holdout_fraction, config.holdout_fraction),
                                     ("folds", "holdout"), seed=config.seed)
        except ValueError as error:
            raise DRError(f"--holdout-fraction {config.holdout_fraction}: {error}") from None
        in_folds, holdout = parts["folds"], parts["holdout"]
    try:
        folds = kfold_by_patient(in_folds, k=config.folds, seed=config.seed)[: config.fold_count]
    except ValueError as error:
        raise DRError(f"--folds {config.folds}: {error}") from None
    if config.layout == "synthetic" and config.synthetic_test_patients:  # more test images, no training label
        test_only = checks.files(_synthetic(config, out, test_only=True))
        folds = [(train, Records.concat(test, test_only)) for train, test in folds]
    checks.finish()
    return DRData(labeled=labeled, pool=pool, pool_dir=Path(pool_dir), folds=folds, checks=checks, holdout=holdout)
