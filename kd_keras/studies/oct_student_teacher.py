"""Study 002 end to end: a ResNet50 teacher, lightweight students trained on labeled B-scans (baseline) and on
labeled + teacher-pseudo-labeled unlabeled B-scans (the student-teacher framework), evaluated with clinical
metrics, exported for the edge and timed per volume against the teacher.

The recipe (study "002" in ``../shared/papers/``, the student-teacher framework with unlabeled OCT B-scans):

1. **Teacher** (section 2.2): ResNet50 with dropout before the classifier, trained on the labeled images
   (rotation, horizontal flip and vertical shift augmentation; SGD with momentum 0.9, batch 64, a learning-rate
   grid; the best validation epoch kept). ImageNet initialisation when ``teacher_weights="imagenet"`` (needs the
   Keras weights file; offline this fails with one line), a weights file, or a finished ``.keras`` teacher that
   is used as is.
2. **Baselines** (2.3): each student on the labeled images only; Adam, batch 64, 20 epochs, a learning-rate
   grid from 1e-1 to 1e-6 and repeated runs; the maximum validation accuracy over epochs, rates and runs.
3. **Pseudo-labels** (2.4): the teacher labels the unlabeled pool once (argmax of its softmax), cached on disk
   (:func:`kd_keras.engine.training.pseudo_label_pool`) and reused by every student and fraction.
4. **Student-teacher** (2.4): each student on the labeled images pooled with 25/50/75/100% of the pseudo-labeled
   pool (nested selections), same hyper-parameters as the baseline.
5. **Soft targets** (2.5, ``method="soft"|"both"``): ``CE + alpha T^2 KL`` on labeled and unlabeled images; a
   ``(T, alpha)`` grid on the labeled images, then the best pair with the largest fraction of the pool.
6. **Evaluation** (2.6): teacher, baselines and each student's best student-teacher model on the validation set
   and every test set: sensitivity, specificity, AUC and accuracy with 95% clustered-bootstrap CIs (cluster:
   the OCT volume for the synthetic data, the patient otherwise).
7. **Edge**: each student's deployed model (its best student-teacher model or its baseline, whichever has the
   better validation score) exported to
   TFLite fp32 + int8 and ONNX with parity checked on validation images; the teacher and the students timed on
   whole volumes (128 images) in LiteRT and ONNX Runtime.

Everything lands under ``out/``: ``results.json`` (every number, the configuration, seed and package versions),
``report.md`` with the plots, ``models/*.keras``, ``export/*.tflite|*.onnx`` (+ sidecars), ``tensorboard/``,
and ``stages/`` (one JSON per finished stage: ``resume=True`` skips them, and a killed training resumes from
its checkpoint under ``runs/``).

Presets: ``"paper"`` is the study's protocol (224 px, grids, 5 runs; days on a CPU); ``"quick"`` (the default)
is sized to finish within about 15 minutes on a 2-core CPU on the embedded synthetic OCT data; ``"smoke"`` is
for CI (seconds of training at 32 px).

Example:

```python
from kd_keras.studies.oct_student_teacher import OCTStudyConfig, run_study

config = OCTStudyConfig.from_preset("quick", students=("squeezenet_v1_1",), fractions=(0.0, 1.0))
results = run_study(config, "runs/oct")
print(results["students"]["squeezenet_v1_1"]["student_teacher"]["eval"]["synthetic_test"]["auc"])
```
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.data.records import Records

METHODS = ("pseudo", "soft", "both")
PRESETS = ("quick", "paper", "smoke")
SYNTHETIC_TEST = "synthetic_test"
HELDOUT_TEST = "heldout_test"


class StudyError(RuntimeError):
    """A problem the user can fix (bad option, data, missing weights); ``str(error)`` is one line."""


# ------------------------------------------------------------------------------------------------ config


@dataclass
class OCTStudyConfig:
    """Everything a run depends on (recorded in ``results.json``; ``resume`` refuses a different one).

    Data:
        data_dir: labeled images, class folders (OCT2017 ``train/`` layout or any class-per-folder binary set);
            ``None`` generates the embedded synthetic OCT data (``synthetic``).
        unlabeled_dirs: folders of unlabeled images (the pool), read recursively.
        test_dirs: class-folder hold-out test sets (study 002 had two). With none (and no ``test/`` split in
            ``data_dir``), ``test_fraction`` of the labeled patients is held out as ``heldout_test``.
        labeled_fraction: keep the labels of this fraction of the training *patients*; the others' images join
            the unlabeled pool without their labels (their true labels only score the pseudo-labels).
        normal_class: the class folder that is negative; every other class is "abnormal" (002's task).
        validation_fraction, test_fraction: patient-level shares of the labeled data.
        synthetic: :class:`~kd_keras.data.synthetic_oct.SyntheticOCTConfig` fields of the embedded data.

    Models:
        teacher: zoo name of the teacher; ``teacher_weights``: ``"none"``, ``"imagenet"``, a weights file, or a
            ``.keras`` teacher used as is (no training).
        students: zoo names; ``student_channels``: 1 (grey B-scans) or 3.
        teacher_dropout: dropout before the teacher's classifier (002: "inverted drop-out").

    Training (teacher_* and student_*): optimizer (``"sgd"`` = momentum 0.9, ``"adam"``), learning-rate grid,
        runs per rate, epochs, batch size, ``*_steps_per_epoch`` (``None``: one pass over the training images,
        as the paper; a number: that many batches per epoch whatever the data size, so every student run gets
        the same number of updates), ``monitor`` (``"accuracy"`` as 002, or ``"auc"``).

    Transfer: ``fractions`` of the pool (0 = baseline), ``method``, ``soft_grid`` of ``(temperature, alpha)``.

    Evaluation and edge: ``threshold`` (operating point on the abnormal probability), ``n_boot`` clustered
        bootstrap replicates, ``export_variants``, ``latency_runtimes``, ``images_per_volume`` (002: 128),
        ``latency_repeats``, ``latency_threads``.
    """

    preset: str = "quick"
    data_dir: str | None = None
    unlabeled_dirs: tuple[str, ...] = ()
    test_dirs: tuple[str, ...] = ()
    labeled_fraction: float = 1.0
    normal_class: str = "NORMAL"
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    synthetic: dict = field(default_factory=dict)
    image_size: int = 64
    student_channels: int = 1
    teacher: str = "resnet50"
    teacher_weights: str = "none"
    teacher_dropout: float = 0.2
    teacher_options: dict = field(default_factory=dict)
    teacher_optimizer: str = "adam"
    teacher_learning_rates: tuple[float, ...] = (1e-3,)
    teacher_runs: int = 1
    teacher_epochs: int = 12
    teacher_batch_size: int = 32
    teacher_steps_per_epoch: int | None = None
    students: tuple[str, ...] = ("squeezenet_v1_1", "squeezeresnet_v1_1", "mobilenet_wd2")
    student_optimizer: str = "adam"
    student_learning_rates: tuple[float, ...] = (1e-3,)
    student_runs: int = 1
    student_epochs: int = 8
    student_batch_size: int = 32
    student_steps_per_epoch: int | None = None
    fractions: tuple[float, ...] = (0.0, 0.5, 1.0)
    method: str = "pseudo"
    soft_grid: tuple[tuple[float, float], ...] = ((3.0, 1.5), (2.0, 0.5))
    monitor: str = "auc"
    augment: bool = True
    rotation_degrees: float = 10.0
    vertical_shift: float = 0.1
    threshold: float = 0.5
    n_boot: int = 500
    export_variants: tuple[str, ...] = ("tflite_fp32", "tflite_int8", "onnx")
    parity_images: int = 256
    latency_runtimes: tuple[str, ...] = ("litert", "onnxruntime")
    images_per_volume: int = 128
    latency_repeats: int = 3
    latency_threads: int = 2
    latency_batch_size: int = 16
    deterministic: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise StudyError(f"--preset must be one of {PRESETS}, got {self.preset!r}")
        if self.method not in METHODS:
            raise StudyError(f"--method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise StudyError(f"--labeled-fraction must be in (0, 1], got {self.labeled_fraction}")
        bad = [f for f in self.fractions if not 0.0 <= f <= 1.0]
        if bad or not self.fractions:
            raise StudyError(f"--fractions must be numbers in [0, 1], got {list(self.fractions)}")
        if self.image_size < 32:
            raise StudyError(f"--image-size must be at least 32 (model contract), got {self.image_size}")
        if self.monitor not in ("accuracy", "auc"):
            raise StudyError(f"monitor must be 'accuracy' or 'auc', got {self.monitor!r}")
        if not self.students:
            raise StudyError("--students: give at least one student")
        self.fractions = tuple(sorted({float(f) for f in self.fractions}))
        if 0.0 not in self.fractions:  # the baseline is always trained: it is what the framework is judged by
            self.fractions = (0.0, *self.fractions)

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any) -> OCTStudyConfig:
        """The preset's settings with ``overrides`` (``None`` values are ignored).

        Example:
            >>> OCTStudyConfig.from_preset("paper").image_size
            224
        """
        if preset not in PRESETS:
            raise StudyError(f"--preset must be one of {PRESETS}, got {preset!r}")
        preset_values = dict(_PRESET_VALUES[preset])
        given = {k: v for k, v in overrides.items() if v is not None}
        if "teacher" in given and given["teacher"] != preset_values.get("teacher", cls.teacher):
            preset_values.pop("teacher_options", None)  # builder options of the preset's own teacher
        return cls(preset=preset, **{**preset_values, **given})

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


_PRESET_VALUES: dict[str, dict[str, Any]] = {
    # Measured on the 2-core CI machine; see docs/oct_student_teacher.md for the run and its timing.
    "quick": dict(
        # Few labeled eyes (20 patients: 256 training, 64 validation B-scans) and lesions of medium difficulty,
        # so that labels are scarce and the teacher's pseudo-labels (about 91% right) carry real information.
        synthetic={"labeled_patients": 20, "difficulty": 0.5}, teacher="vgg16_d4",
        teacher_options={"batch_norm": True}, teacher_learning_rates=(2e-3,), teacher_epochs=10,
        teacher_steps_per_epoch=20, teacher_dropout=0.2,
        # sqnxt23_w1 took 660 of 1,526 s in an earlier run (docs/oct_student_teacher.md): too slow on a CPU here.
        # The same 1,200 steps for every run (fixed steps, not epochs): the pool runs win by seeing more images,
        # not by training longer. 120 steps were too few for these students to learn anything at 64 px.
        students=("mobilenet_wd2", "shufflenetv2_wd2"), student_learning_rates=(2e-3,),
        student_epochs=12, student_steps_per_epoch=100, fractions=(0.0, 1.0),
    ),
    # Study 002 as published: 224 px RGB ResNet50 teacher (SGD, momentum 0.9, batch 64, 1e-2..1e-6, 31 epochs),
    # students with Adam, batch 64, 20 epochs, learning rates 1e-1..1e-6, five runs, max validation accuracy.
    "paper": dict(
        image_size=224, student_channels=3, teacher_dropout=0.5, teacher_optimizer="sgd",
        teacher_learning_rates=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6), teacher_epochs=31, teacher_batch_size=64,
        student_learning_rates=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6), student_runs=5, student_epochs=20,
        student_batch_size=64, fractions=(0.0, 0.25, 0.5, 0.75, 1.0), monitor="accuracy",
        soft_grid=((1.0, 0.5), (2.0, 0.5), (3.0, 0.5), (3.0, 1.0), (3.0, 1.5), (5.0, 1.5)),
        rotation_degrees=15.0, n_boot=1000, latency_repeats=5, synthetic={"image_size": [224, 224]},
    ),
    # CI smoke test: everything runs, nothing is learned.
    "smoke": dict(
        image_size=32, teacher="mobilenet_wd2", students=("mobilenet_wd4",), fractions=(0.0, 1.0),
        teacher_epochs=1, student_epochs=1, teacher_steps_per_epoch=2, student_steps_per_epoch=2,
        teacher_batch_size=8, student_batch_size=8, soft_grid=((2.0, 0.5),), n_boot=20,
        export_variants=("tflite_fp32", "onnx"), parity_images=16, latency_runtimes=("litert",),
        images_per_volume=4, latency_repeats=1, latency_batch_size=4,
        synthetic=dict(image_size=[32, 32], bscans_sampled_per_volume=4, labeled_patients=12,
                       unlabeled_patients=4, test_patients=6, disease_mix=[0.3, 0.3, 0.3, 0.1]),
    ),
}


# ------------------------------------------------------------------------------------------------ data


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


# ------------------------------------------------------------------------------------------- stage store


class _Stages:
    """One JSON file per finished stage under ``out/stages``; what ``resume`` skips."""

    def __init__(self, out: Path, config: OCTStudyConfig, resume: bool):
        self.dir = out / "stages"
        saved = self.dir / "config.json"
        current = config.to_dict()
        if resume and saved.is_file():
            before = json.loads(saved.read_text())
            changed = sorted(k for k in set(before) | set(current) if before.get(k) != current.get(k))
            if changed:
                detail = ", ".join(f"{k}: {before.get(k)!r} -> {current.get(k)!r}" for k in changed[:3])
                raise StudyError(f"--resume: {out} was run with a different configuration ({detail}); "
                                 "use another --out or run without --resume")
        elif not resume:
            # A fresh run: forget finished stages and training checkpoints of an earlier run in this folder.
            for name in ("stages", "runs"):
                shutil.rmtree(out / name, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(current, indent=1))
        self.skipped: list[str] = []

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def get(self, name: str) -> dict | None:
        path = self._path(name)
        if path.is_file():
            self.skipped.append(name)
            return json.loads(path.read_text())
        return None

    def put(self, name: str, value: dict) -> dict:
        from kd_keras.evaluation.report import write_json

        temporary = self._path(name).with_suffix(".partial")
        write_json(temporary, value)
        os.replace(temporary, self._path(name))
        return json.loads(self._path(name).read_text())


# ------------------------------------------------------------------------------------------------ training


def _progress_callback(total_steps: int, description: str, enabled: bool):
    import keras

    class _Bar(keras.callbacks.Callback):
        """A tqdm bar over a run's steps with the validation scores as they come."""

        def __init__(self):
            super().__init__()
            self.bar = None

        def on_train_begin(self, logs=None):
            if enabled and self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, desc=description, unit="step", leave=False, file=sys.stderr,
                                dynamic_ncols=True)

        def on_train_batch_end(self, batch, logs=None):
            if self.bar is not None:
                self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if self.bar is not None and logs:
                self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()
                                      if k in ("loss", "val_accuracy", "val_auc") and v is not None})

        def on_train_end(self, logs=None):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _Bar()


def _augmenter(config: OCTStudyConfig, seed: int):
    if not config.augment:
        return None
    from kd_keras.data.augment import build_augmenter

    # OCT: horizontal flips only (an upside-down retina never occurs); 002's rotation and vertical shift.
    return build_augmenter(flip="horizontal", rotation_degrees=config.rotation_degrees,
                           vertical_shift=config.vertical_shift, brightness=0.0, contrast=0.0, seed=seed)


def _cache_images(records_count: int, preprocess, limit_bytes: float = 1.5e9) -> bool:
    """Keep decoded images in memory when they fit (small sets); stream from disk otherwise."""
    height, width = preprocess.image_size
    return records_count * height * width * preprocess.channels * 4 < limit_bytes


def _steps(count: int, batch_size: int, fixed: int | None) -> int:
    return int(fixed) if fixed else max(1, math.ceil(count / batch_size))


def _grid_summary(grid) -> dict[str, Any]:
    summary = grid.summary()
    histories = [h for run in grid.runs for h in run.history if "val_accuracy" in h]
    summary["best_val_accuracy"] = max((h["val_accuracy"] for h in histories if h["val_accuracy"] is not None),
                                       default=None)
    summary["best_val_auc"] = max((h["val_auc"] for h in histories if h.get("val_auc") is not None), default=None)
    best_epoch = grid.best.best_epoch
    chosen = next((h for h in grid.best.history if h.get("epoch") == best_epoch), {})
    summary["chosen_val_accuracy"] = chosen.get("val_accuracy")
    summary["chosen_val_auc"] = chosen.get("val_auc")
    return summary


# ------------------------------------------------------------------------------------------------ the study


class _Study:
    def __init__(self, config: OCTStudyConfig, out: str | os.PathLike, resume: bool, progress: bool,
                 say: Callable[[str], None]):
        self.config = config
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self.progress = progress
        self.say = say
        self.timing: dict[str, float] = {}

    # -- helpers
    def _seed(self) -> None:
        """One seed for everything, and deterministic ops (a resumed training then ends as an uninterrupted
        one); called once the options are known to be usable, so a refused run leaves the process as it was."""
        if not getattr(self, "_seeded", False):
            from kd_keras.engine.callbacks import seed_everything

            seed_everything(self.config.seed, deterministic=self.config.deterministic)
            self._seeded = True

    def _timed(self, name: str, start: float) -> None:
        self.timing[name] = round(self.timing.get(name, 0.0) + time.perf_counter() - start, 2)

    def _tensorboard(self, *parts: str):
        from kd_keras.engine.training import EpochSummaries

        return EpochSummaries(self.out.joinpath("tensorboard", *parts))

    # -- stages
    def run(self) -> dict[str, Any]:
        from kd_keras.data.preprocess import PreprocessConfig

        config = self.config
        started = time.perf_counter()
        self.stages = _Stages(self.out, config, self.resume)
        t = time.perf_counter()
        self.data = prepare_data(config, self.say)
        self._timed("data", t)
        data = self.data
        self.say(f"data: {len(data.train)} labeled training, {len(data.validation)} validation, {len(data.pool)} "
                 f"unlabeled; tests: " + ", ".join(f"{k} ({len(v)})" for k, v in data.tests.items()))
        size = (config.image_size, config.image_size)
        self.student_pre = PreprocessConfig(size, channels=config.student_channels)
        teacher_path = self.teacher_stage(size)
        self._seed()
        pseudo = self.pseudo_label_stage(teacher_path)
        students = {name: self.student_stage(name) for name in config.students}
        evaluation = self.evaluation_stage(teacher_path, students)
        exports = self.export_stage(students)
        latency = self.latency_stage(teacher_path, students)
        self.timing["total"] = round(time.perf_counter() - started, 2)
        return self.results(evaluation, pseudo, students, exports, latency)

    def teacher_stage(self, size) -> Path:
        import keras

        from kd_keras.data import pipeline
        from kd_keras.data.preprocess import PreprocessConfig
        from kd_keras.engine.training import train_lr_grid
        from kd_keras.models import build_model, get_spec, load_model

        config, data = self.config, self.data
        models_dir = self.out / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        done = self.stages.get("teacher")
        if done is not None and Path(done["path"]).is_file():
            self.teacher_info = done
            self.teacher_pre = PreprocessConfig(tuple(done["input_shape"][:2]), channels=done["input_shape"][2])
            self.say(f"teacher: finished earlier ({done['path']})")
            return Path(done["path"])
        t = time.perf_counter()
        weights = config.teacher_weights
        # Under models/teacher/ so its file name (the name the latency table uses) is the zoo name even when a
        # student has the same architecture.
        path = models_dir / "teacher" / f"{config.teacher}.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        if weights.endswith(".keras"):
            if not Path(weights).is_file():
                raise StudyError(f"--teacher-weights {weights}: no such file")
            teacher = load_model(weights)
            shape = tuple(int(d) for d in teacher.input_shape[1:])
            teacher.save(path)
            info = {"source": "loaded", "file": weights}
            self.say(f"teacher: loaded {weights} (input {shape}), not retrained")
        else:
            try:
                spec = get_spec(config.teacher)
            except (KeyError, ValueError) as error:
                raise StudyError(f"--teacher {config.teacher!r}: {error}") from None
            channels = 3 if spec.role == "teacher" else config.student_channels
            shape = (*size, channels)
            init = None if weights == "none" else weights
            # Build once now, so a missing ImageNet file fails before any training.
            build_model(config.teacher, shape, 2, weights=init, dropout=config.teacher_dropout,
                        **config.teacher_options)
            self._seed()
            pre = PreprocessConfig(size, channels=channels)
            cache = _cache_images(len(data.train), pre)
            augmenter = _augmenter(config, config.seed)

            def make_stream():
                return pipeline.make_dataset(data.train, pre, config.teacher_batch_size, repeat=True,
                                             seed=config.seed, augmenter=augmenter, cache=cache)

            validation = pipeline.make_dataset(data.validation, pre, 64, shuffle=False, cache=cache)
            steps = _steps(len(data.train), config.teacher_batch_size, config.teacher_steps_per_epoch)
            self.say(f"teacher: training {config.teacher} (weights: {weights}) on {len(data.train)} labeled images, "
                     f"{config.teacher_epochs} epochs x {steps} steps, learning rates "
                     f"{list(config.teacher_learning_rates)}")
            grid = train_lr_grid(
                lambda: build_model(config.teacher, shape, 2, weights=init, dropout=config.teacher_dropout,
                                    **config.teacher_options),
                make_stream, learning_rates=config.teacher_learning_rates, runs=config.teacher_runs,
                seed=config.seed, directory=self.out / "runs" / "teacher", steps_per_epoch=steps,
                validation=validation, epochs=config.teacher_epochs, optimizer=config.teacher_optimizer,
                monitor=config.monitor,
                make_callbacks=lambda lr, run: [self._tensorboard("teacher", f"lr{lr:g}_run{run}"),
                                                _progress_callback(steps * config.teacher_epochs,
                                                                   f"teacher lr={lr:g} run {run}", self.progress)])
            grid.best.model.save(path)
            info = {"source": "trained", "grid": _grid_summary(grid)}
            keras.backend.clear_session(free_memory=True)
        self._timed("teacher", t)
        from kd_keras.models.profile import count_macs, count_params

        teacher = load_model(path)
        info.update(path=str(path), name=config.teacher, input_shape=list(shape), weights=weights,
                    params=count_params(teacher), macs=count_macs(teacher), seconds=self.timing["teacher"])
        self.teacher_info = self.stages.put("teacher", info)
        self.teacher_pre = PreprocessConfig(tuple(shape[:2]), channels=shape[2])
        return path

    def pseudo_label_stage(self, teacher_path: Path) -> dict[str, Any]:
        from kd_keras.engine.teacher_cache import TeacherCache
        from kd_keras.engine.training import pseudo_label_pool

        done = self.stages.get("pseudo_labels")
        if done is not None and Path(done["cache"]).is_dir():
            self.cache = TeacherCache.open(done["cache"])
            self.say(f"pseudo-labels: finished earlier ({done['cache']})")
            return done
        t = time.perf_counter()
        data = self.data
        self.say(f"pseudo-labels: teacher over {len(data.train)} labeled + {len(data.pool)} unlabeled images "
                 "(once, cached)")
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(desc="teacher cache shards", unit="shard", leave=False, file=sys.stderr)
        labels = pseudo_label_pool(teacher_path, data.train, data.pool, self.teacher_pre, self.out / "teacher_cache",
                                   batch_size=64, shard_size=1024,
                                   on_shard_done=(lambda _s: bar.update(1)) if bar is not None else None)
        if bar is not None:
            bar.close()
        self.cache = labels.cache
        summary = labels.summary(self.data.class_names)
        known = data.pool_truth >= 0
        if known.any():
            truth = data.pool_truth[known]
            predicted = labels.pool_labels[known]
            summary["truth_check"] = {
                "examples": int(known.sum()),
                "pseudo_label_accuracy": float(np.mean(predicted == truth)),
                "pseudo_label_sensitivity": float(np.mean(predicted[truth == 1] == 1)) if (truth == 1).any() else None,
                "pseudo_label_specificity": float(np.mean(predicted[truth == 0] == 0)) if (truth == 0).any() else None,
                "note": "analysis only: the pool's true labels are never used for training",
            }
            self.say(f"pseudo-labels: {100 * summary['truth_check']['pseudo_label_accuracy']:.1f}% agree with the "
                     f"pool's true labels ({int(known.sum())} images; analysis only)")
        self._timed("pseudo_labels", t)
        summary["seconds"] = self.timing["pseudo_labels"]
        return self.stages.put("pseudo_labels", summary)

    def _student_runs(self) -> list[dict[str, Any]]:
        config = self.config
        runs = [{"method": "baseline", "fraction": 0.0, "objective": {"name": "hard_label"}}]
        if config.method in ("pseudo", "both"):
            runs += [{"method": "pseudo", "fraction": f, "objective": {"name": "pseudo_label"}}
                     for f in config.fractions if f > 0]
        return runs

    @staticmethod
    def _run_key(run: dict[str, Any]) -> str:
        key = f"{run['method']}_{int(round(100 * run['fraction']))}"
        objective = run["objective"]
        if "temperature" in objective:
            key += f"_T{objective['temperature']:g}_a{objective['alpha']:g}"
        return key

    def _train_student(self, name: str, run: dict[str, Any]) -> dict[str, Any]:
        import keras

        from kd_keras.data import pipeline
        from kd_keras.engine.training import predict, train_lr_grid
        from kd_keras.models import build_model

        config, data = self.config, self.data
        key = self._run_key(run)
        stage = f"student-{name}-{key}"
        done = self.stages.get(stage)
        if done is not None and Path(done["path"]).is_file():
            return done
        t = time.perf_counter()
        pre = self.student_pre
        fraction = run["fraction"]
        used = len(data.train) + int(round(fraction * len(data.pool)))
        cache = _cache_images(len(data.train) + len(data.pool), pre)
        augmenter = _augmenter(config, config.seed)
        logits = self.cache.logits if run["method"] != "baseline" else None

        def make_stream():
            return pipeline.make_mixed_dataset(data.train, data.pool, pre, config.student_batch_size,
                                               unlabeled_fraction=fraction, seed=config.seed,
                                               teacher_logits=logits, augmenter=augmenter, repeat=True,
                                               cache=cache)

        if not hasattr(self, "_student_validation"):
            self._student_validation = pipeline.make_dataset(data.validation, pre, 64, shuffle=False,
                                                             cache=_cache_images(len(data.validation), pre))
        steps = _steps(used, config.student_batch_size, config.student_steps_per_epoch)
        shape = (config.image_size, config.image_size, config.student_channels)
        label = f"{name} {run['method']} {int(round(100 * fraction))}%"
        grid = train_lr_grid(
            lambda: build_model(name, shape, 2), make_stream, learning_rates=config.student_learning_rates,
            runs=config.student_runs, seed=config.seed, directory=self.out / "runs" / name / key,
            steps_per_epoch=steps, validation=self._student_validation, epochs=config.student_epochs,
            optimizer=config.student_optimizer, objective=run["objective"], monitor=config.monitor,
            make_callbacks=lambda lr, r: [self._tensorboard(name, key, f"lr{lr:g}_run{r}"),
                                          _progress_callback(steps * config.student_epochs,
                                                             f"{label} lr={lr:g} run {r}", self.progress)])
        path = self.out / "models" / name / f"{key}.keras"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.best.model.save(path)
        # Test-set AUC of every run (point estimates) shows the whole fraction curve on held-out data.
        test_auc = {test: predict(grid.best.model, records, pre).score("auc") for test, records in data.tests.items()}
        keras.backend.clear_session(free_memory=True)
        self._timed(f"student {name}", t)
        summary = {**run, "key": key, "path": str(path), "examples_per_epoch": used, "steps_per_epoch": steps,
                   **_grid_summary(grid), "test_auc": test_auc, "seconds": round(time.perf_counter() - t, 2)}
        self.say(f"  {label}: best validation {config.monitor} {grid.best.best_score:.3f} (epoch "
                 f"{grid.best.best_epoch}, lr {grid.best.learning_rate:g}); test AUC "
                 + ", ".join(f"{k} {v:.3f}" for k, v in test_auc.items()))
        return self.stages.put(stage, summary)

    def student_stage(self, name: str) -> dict[str, Any]:
        from kd_keras.models import get_spec

        config = self.config
        try:
            family = get_spec(name).family
        except (KeyError, ValueError) as error:
            raise StudyError(f"--students: {error}") from None
        self.say(f"student {name}:")
        runs = [self._train_student(name, run) for run in self._student_runs()]
        if config.method in ("soft", "both"):
            # 002 section 2.5: choose (T, alpha) on the labeled images, then train with the largest pool fraction.
            grid_runs = [self._train_student(name, {"method": "soft", "fraction": 0.0, "objective": {
                "name": "soft_target_student_teacher", "temperature": float(temperature), "alpha": float(alpha)}})
                for temperature, alpha in config.soft_grid]
            runs += grid_runs
            best = max(grid_runs, key=lambda r: r["best"]["best_score"] or -1)
            largest = max(config.fractions)
            if largest > 0:
                runs.append(self._train_student(name, {"method": "soft", "fraction": largest,
                                                       "objective": best["objective"]}))
        baseline = runs[0]
        transfer = [r for r in runs if r["method"] != "baseline" and r["fraction"] > 0]
        chosen = max(transfer, key=lambda r: r["best"]["best_score"] or -1) if transfer else None
        # Deploy whichever validates better: the unlabeled images do not always help (ties keep the baseline).
        deployed = baseline
        if chosen is not None and (chosen["best"]["best_score"] or -1) > (baseline["best"]["best_score"] or -1):
            deployed = chosen
        return {"family": family, "runs": runs, "baseline_key": baseline["key"],
                "student_teacher_key": chosen["key"] if chosen else None, "deployed_key": deployed["key"]}

    def evaluation_stage(self, teacher_path: Path, students: dict[str, dict]) -> dict[str, Any]:
        import keras

        from kd_keras.engine.training import predict
        from kd_keras.evaluation import evaluate_predictions
        from kd_keras.models import load_model

        done = self.stages.get("evaluation")
        if done is not None:
            return done
        t = time.perf_counter()
        config, data = self.config, self.data
        sets = {"validation": data.validation, **data.tests}
        predictions_dir = self.out / "predictions"
        predictions_dir.mkdir(parents=True, exist_ok=True)

        def evaluate(label: str, model_path: str, pre) -> dict[str, Any]:
            model = load_model(model_path)
            out = {}
            for set_name, records in sets.items():
                predictions = predict(model, records, pre, batch_size=64)
                probabilities = predictions.probabilities()[:, 1]
                clusters = data.clusters(records)[predictions.indices]
                out[set_name] = evaluate_predictions(predictions.labels, probabilities, clusters, "binary",
                                                     config.threshold, config.n_boot, config.seed)
                np.savez_compressed(predictions_dir / f"{label}__{set_name}.npz", labels=predictions.labels,
                                    scores=probabilities, indices=predictions.indices)
            keras.backend.clear_session(free_memory=True)
            return out

        self.say("evaluation: teacher and students on " + ", ".join(sets) + f" ({config.n_boot} clustered-bootstrap "
                 f"replicates, cluster = {data.cluster_unit})")
        result = {"teacher": evaluate(config.teacher, str(teacher_path), self.teacher_pre), "students": {}}
        for name, info in students.items():
            by_key = {r["key"]: r for r in info["runs"]}
            entry = {"baseline": evaluate(f"{name}__baseline", by_key[info["baseline_key"]]["path"],
                                          self.student_pre)}
            if info["student_teacher_key"]:
                entry["student_teacher"] = evaluate(f"{name}__student_teacher",
                                                    by_key[info["student_teacher_key"]]["path"], self.student_pre)
            result["students"][name] = entry
        self._timed("evaluation", t)
        return self.stages.put("evaluation", result)

    def _images(self, records: Records, count: int, pre) -> tuple[np.ndarray, np.ndarray]:
        from kd_keras.data import pipeline

        rows = np.random.default_rng(self.config.seed).permutation(len(records))[:count]
        images, labels = [], []
        for batch in pipeline.make_dataset(records, pre, 64, indices=np.sort(rows), shuffle=False):
            images.append(batch["image"].numpy())
            labels.append(batch["label"].numpy())
        return np.concatenate(images), np.concatenate(labels)

    def _deployed(self, name: str, info: dict) -> dict:
        key = info.get("deployed_key") or info["student_teacher_key"] or info["baseline_key"]
        return next(r for r in info["runs"] if r["key"] == key)

    def export_stage(self, students: dict[str, dict]) -> dict[str, Any]:
        from kd_keras.export import export_model
        from kd_keras.export.exporter import variant_file
        from kd_keras.export.parity import ExportParityError

        done = self.stages.get("export")
        if done is not None:
            return done
        t = time.perf_counter()
        config, data = self.config, self.data
        export_dir = self.out / "export"
        # Parity on the validation images, topped up with training images that int8 calibration does not see:
        # a 99% agreement gate on ~100 images would fail on one or two borderline flips.
        train_rows = np.random.default_rng(config.seed).permutation(len(data.train))
        calibrate = min(100, math.ceil(len(train_rows) / 2))
        calibration, spare = np.sort(train_rows[:calibrate]), train_rows[calibrate:]
        parity_records = data.validation
        missing = config.parity_images - len(data.validation)
        if missing > 0 and len(spare):
            parity_records = Records.concat(data.validation, data.train.subset(np.sort(spare[:missing])))
        parity_images, parity_labels = self._images(parity_records, config.parity_images, self.student_pre)
        representative, _ = self._images(data.train.subset(calibration), calibrate, self.student_pre)
        result = {}
        names = list(students)
        iterator = names
        if self.progress:
            from tqdm import tqdm

            iterator = tqdm(names, desc="export", unit="model", leave=False, file=sys.stderr)
        for name in iterator:
            deployed = self._deployed(name, students[name])
            # The deployed student under its zoo name: models/<student>.keras is what the export and timing use.
            keras_path = self.out / "models" / f"{name}.keras"
            shutil.copyfile(deployed["path"], keras_path)
            entry = {"keras": str(keras_path), "from_run": deployed["key"], "files": []}
            try:
                files = export_model(keras_path, export_dir, variants=config.export_variants,
                                     parity_images=parity_images, parity_labels=parity_labels,
                                     representative_images=representative, class_names=list(data.class_names),
                                     threshold=config.threshold, stem=name)
                reports = [(f.path, f.variant, f.format, f.parity) for f in files]
            except ExportParityError as error:  # some variant missed its gate: recorded, the others kept
                entry["error"] = str(error)
                reports = []
                # Every variant was tried, in order; a file that missed its gate was renamed <file>.failed.
                for variant, parity in zip(config.export_variants, error.reports, strict=True):
                    path, fmt, precision = variant_file(export_dir, name, variant)
                    if not path.exists():
                        path = path.with_name(path.name + ".failed")
                    reports.append((path, precision, fmt, parity))
            for path, variant, fmt, parity in reports:
                item = {"path": str(path), "variant": variant, "format": fmt}
                if parity is not None:
                    item["parity"] = parity.to_dict()
                entry["files"].append(item)
            result[name] = entry
            self.say(f"export {name}: " + ", ".join(Path(f["path"]).name for f in entry["files"])
                     + (f" (FAILED: {entry['error']})" if "error" in entry else ""))
        self._timed("export", t)
        return self.stages.put("export", result)

    def latency_stage(self, teacher_path: Path, students: dict[str, dict]) -> dict[str, Any]:
        from kd_keras.export.latency import benchmark, conditions

        done = self.stages.get("latency")
        if done is not None:
            return done
        t = time.perf_counter()
        config = self.config
        targets = [str(self.out / "models" / f"{name}.keras") for name in students]
        self.say(f"latency: {config.images_per_volume} images per volume, runtimes {list(config.latency_runtimes)}, "
                 f"{config.latency_threads} threads, median of {config.latency_repeats}")
        measured = benchmark(targets, teacher=str(teacher_path), runtimes=config.latency_runtimes,
                             num_images=config.images_per_volume, batch_size=config.latency_batch_size,
                             threads=config.latency_threads, warmup=1, repeats=config.latency_repeats,
                             work_dir=self.out / "latency", progress=(lambda line: self.say("  " + line)))
        models: dict[str, dict] = {}
        for r in measured:
            entry = models.setdefault(r.model, {"params": r.params, "macs": r.macs, "seconds_per_volume": {},
                                                "speedup": {}, "spread": {}, "errors": {}})
            if r.error:
                entry["errors"][r.runtime] = r.error
                continue
            entry["seconds_per_volume"][r.runtime] = r.median_s
            entry["spread"][r.runtime] = {"min": r.min_s, "max": r.max_s, "iqr": r.iqr_s, "times": r.times_s}
            if r.speedup:
                entry["speedup"][r.runtime] = r.speedup
        primary = next((rt for rt in config.latency_runtimes
                        if all(rt in m["seconds_per_volume"] for m in models.values())), None)
        self._timed("latency", t)
        return self.stages.put("latency", {
            "images_per_volume": config.images_per_volume, "batch_size": config.latency_batch_size,
            "threads": config.latency_threads, "repeats": config.latency_repeats, "primary_runtime": primary,
            "teacher": Path(teacher_path).stem, "models": models, "conditions": conditions(),
        })

    def results(self, evaluation, pseudo, students, exports, latency) -> dict[str, Any]:
        from kd_keras.evaluation.report import environment

        config = self.config
        out_students = {}
        for name, info in students.items():
            by_key = {r["key"]: r for r in info["runs"]}
            runs = [{"key": r["key"], "method": r["method"], "fraction": r["fraction"],
                     "objective": r["objective"], "best_val_accuracy": r["best_val_accuracy"],
                     "best_val_auc": r["best_val_auc"], "chosen_val_accuracy": r["chosen_val_accuracy"],
                     "chosen_val_auc": r["chosen_val_auc"], "learning_rate": r["best"]["learning_rate"],
                     "best_epoch": r["best"]["best_epoch"], "test_auc": r["test_auc"], "path": r["path"],
                     "examples_per_epoch": r["examples_per_epoch"], "steps_per_epoch": r["steps_per_epoch"],
                     "seconds": r["seconds"], "grid": r["runs"]} for r in info["runs"]]
            entry = {"family": info["family"], "runs": runs,
                     "baseline": {"method": "baseline", "fraction": 0.0, "key": info["baseline_key"],
                                  "eval": evaluation["students"][name]["baseline"]}}
            if info["student_teacher_key"]:
                chosen = by_key[info["student_teacher_key"]]
                entry["student_teacher"] = {"method": chosen["method"], "fraction": chosen["fraction"],
                                            "key": chosen["key"], "objective": chosen["objective"],
                                            "eval": evaluation["students"][name]["student_teacher"]}
            deployed_key = info.get("deployed_key") or info["student_teacher_key"] or info["baseline_key"]
            entry["deployed"] = "baseline" if deployed_key == info["baseline_key"] else "student_teacher"
            entry["export"] = exports.get(name)
            out_students[name] = entry
        return {
            "study": "002 OCT student-teacher",
            "config": config.to_dict(),
            "seed": config.seed,
            "environment": environment(),
            "data": self.data.summary(),
            "teacher": {**self.teacher_info, "eval": evaluation["teacher"]},
            "pseudo_labels": pseudo,
            "students": out_students,
            "latency": latency,
            "timing_seconds": self.timing,
            "resumed_stages": list(self.stages.skipped),
        }


def run_study(config: OCTStudyConfig, out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole study and write every output under ``out``; returns the ``results.json`` content.

    Args:
        config: the run's :class:`OCTStudyConfig`.
        out: output folder.
        resume: skip the stages a previous run with the same configuration finished, and resume a killed
            training from its checkpoint; without it, earlier stages and checkpoints in ``out`` are discarded.
        progress: tqdm progress bars on the long steps (stderr).
        say: where the one-line progress messages go.

    Raises:
        StudyError, DataError, ImageReadError, WeightsUnavailableError, CacheError, NonFiniteLossError: each
            with a one-line message (the command line prints it and exits with status 2).
    """
    from kd_keras.evaluation.report import write_json
    from kd_keras.studies import oct_report

    study = _Study(config, out, resume, progress, say)
    results = study.run()
    out = Path(out)
    write_json(out / "results.json", results)
    oct_report.write_report(results, out)
    return json.loads((out / "results.json").read_text())


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The one-screen summary printed at the end of a run."""
    from kd_keras.studies import oct_report

    return oct_report.summary_lines(results)


__all__ = ["OCTStudyConfig", "StudyData", "StudyError", "prepare_data", "run_study", "summary_lines"]


def _sorted_fractions(values: Sequence[float]) -> list[float]:
    return sorted({float(v) for v in values})
