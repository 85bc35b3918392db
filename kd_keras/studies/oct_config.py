"""Settings of study 002 (the main job): one dataclass, its presets and the command's own options.

Presets: ``"quick"`` (the default) takes about 9.5 minutes on a quiet 2-core CPU on the embedded synthetic OCT
data (563 s, docs/quick_default.md); ``"paper"`` is the study's protocol (224 px, grids, 5 runs; days on a CPU);
``"smoke"`` is for CI (seconds of training at 32 px). Every setting is also a ``kd-keras run oct`` option, a
config-file key and a ``--set`` key (:mod:`kd_keras.config`).

Example:

```python
config = OCTStudyConfig.from_preset("quick", students=("squeezenet_v1_1",), fractions=(0.0, 1.0))
```
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from kd_keras.config import ScaleSettings, config_to_dict
from kd_keras.runner import Flag, RunError
from kd_keras.studies.data_checks import (
    DUPLICATE_LABEL_POLICIES,
    FILE_CHECKS,
    HELD_OUT_OVERLAP_POLICIES,
    KNOWN_ABNORMAL_CLASSES,
    check_data_settings,
)

__all__ = ["DUPLICATE_LABEL_POLICIES", "FILE_CHECKS", "FLAGS", "HELDOUT_TEST", "HELD_OUT_OVERLAP_POLICIES",
           "KNOWN_ABNORMAL_CLASSES", "METHODS", "OCTStudyConfig", "PAPER_STUDENTS", "PRESETS", "SOFT_TARGET_FORMS",
           "SYNTHETIC_TEST", "StudyError", "TASKS", "TEACHER_PRETRAINING", "adjust_settings"]

METHODS = ("pseudo", "soft", "both")
TASKS = ("binary", "multiclass")
TEACHER_PRETRAINING = ("none", "simclr")
GEOMETRIES = ("resize", "center_crop", "pad")  # kd_keras.data.preprocess.GEOMETRIES (not imported: no cv2 here)
SOFT_TARGET_FORMS = ("hard_plus_alpha_soft", "convex")
# Study 002's student families as named in section 2.3 (SqueezeNet, SqueezeResNet, SqueezeNext, MobileNet, Fast
# MobileNet, ShuffleNet): the paper trained 27 of them, listed in its Supplementary Table 1, which we do not have;
# the paper preset runs the zoo's 29 variants of these families (a superset of any 27 of them).
PAPER_STUDENTS = (
    "squeezenet_v1_0", "squeezenet_v1_1", "squeezeresnet_v1_0", "squeezeresnet_v1_1",
    "sqnxt23_w1", "sqnxt23_w3d2", "sqnxt23_w2", "sqnxt23v5_w1", "sqnxt23v5_w3d2", "sqnxt23v5_w2",
    "mobilenet_w1", "mobilenet_w3d4", "mobilenet_wd2", "mobilenet_wd4",
    "fdmobilenet_w1", "fdmobilenet_w3d4", "fdmobilenet_wd2", "fdmobilenet_wd4",
    "shufflenet_g1_w1", "shufflenet_g2_w1", "shufflenet_g3_w1", "shufflenet_g4_w1", "shufflenet_g8_w1",
    "shufflenet_g1_w3d4", "shufflenet_g3_w3d4", "shufflenet_g1_wd2", "shufflenet_g3_wd2", "shufflenet_g1_wd4",
    "shufflenet_g3_wd4",
)
SYNTHETIC_TEST = "synthetic_test"
HELDOUT_TEST = "heldout_test"


class StudyError(RunError):
    """A problem the user can fix (bad option, data, missing weights); ``str(error)`` is one line."""


# ------------------------------------------------------------------------------------------------ config


@dataclass
class OCTStudyConfig(ScaleSettings):
    """Everything a run depends on (recorded in ``results.json``; ``resume`` refuses a different one).

    Data:
        data_dir: labeled images, class folders (OCT2017 ``train/`` layout or any class-per-folder binary set);
            ``None`` generates the embedded synthetic OCT data (``synthetic``).
        unlabeled_dirs: folders of unlabeled images (the pool), read recursively.
        test_dirs: class-folder hold-out test sets (study 002 had two). With none (and no ``test/`` split in
            ``data_dir``), ``test_fraction`` of the labeled patients is held out as ``heldout_test``.
        labeled_fraction: keep the labels of this fraction of the training *patients*; the others' images join
            the unlabeled pool without their labels (their true labels only score the pseudo-labels).
        normal_class: the class folder that is negative (002's task: normal vs abnormal).
        abnormal_classes: the class folders that are "abnormal" (default: CNV, DME, DRUSEN, PNEUMONIA,
            ABNORMAL); a folder that is neither these nor ``normal_class`` is refused by name, never merged.
        ignored_classes: class folders to leave out (e.g. ``misc``), reported.
        held_out_overlap: an unlabeled-pool image that is also a labeled, validation or test image (same path,
            symlink, hard link or identical bytes): ``"refuse"`` the run (default) or ``"drop"`` it from the
            pool (reported). A test image that is also a training or validation image is always refused.
        duplicate_labels: one image (identical bytes) in two class folders: ``"refuse"`` (default), ``"keep"``
            every copy with its folder's label, or ``"drop"`` every copy; shown on screen and in the report.
        file_check: how every labeled, pool and test file is checked before training: ``"header"`` (signature
            and the JPEG/PNG end structure: catches empty, non-image and truncated files, and PNGs cut and given
            a new end; ~0.1 s per 1,000 B-scans) or ``"decode"`` (decodes each image too: also corrupt data inside
            a complete file, and JPEGs cut mid-scan and given a new end marker; ~5 s per 1,000 496x512 B-scans on
            2 cores). Bad files are left out and reported.
        task: ``"binary"`` (002: normal vs abnormal, every abnormal class folder merged) or ``"multiclass"`` (one
            class per folder: OCT2017's CNV, DME, DRUSEN, NORMAL; per-class sensitivity and specificity, macro
            AUC and the confusion matrix in the report).
        geometry: how a B-scan that is not square becomes the model's square input (recorded in the exported
            files' sidecars, so ``kd-keras predict`` does the same): ``"center_crop"`` (default: full height,
            central columns; validated best on the real Kermany B-scans, 0.850 AUC against 0.816 for
            ``"resize"`` and 0.769 for ``"pad"``, docs/oct_real.md), ``"resize"`` (stretch; the paper preset, as
            002 "resized to 224 x 224") or ``"pad"`` (black bands above and below). Square images are unchanged.
        validation_fraction, test_fraction: patient-level shares of the labeled data.
        synthetic: :class:`~kd_keras.data.synthetic_oct.SyntheticOCTConfig` fields of the embedded data.

    Models:
        teacher: zoo name of the teacher; ``teacher_weights``: ``"none"``, ``"imagenet"``, a weights file, or a
            ``.keras`` teacher used as is (no training).
        students: zoo names; ``student_channels``: 1 (grey B-scans) or 3.
        teacher_dropout: dropout before the teacher's classifier (002: "inverted drop-out").
        teacher_pretraining: ``"none"`` (the teacher starts from ``teacher_weights``) or ``"simclr"``: before its
            supervised training, the teacher learns from the labeled and the unlabeled images together (labels
            unused) with the SimCLR objective of study 003 (two augmented views of each image, NT-Xent at
            ``simclr_temperature``), ``simclr_epochs`` x ``simclr_steps_per_epoch`` steps of ``simclr_batch_size``
            at ``simclr_learning_rate`` (Adam); each teacher run then starts from those weights. Offline there
            are no ImageNet weights: this is the way to a better-than-random start.
        simclr_epochs, simclr_steps_per_epoch, simclr_batch_size, simclr_learning_rate, simclr_temperature: the
            SimCLR pretraining of the teacher (``teacher_pretraining: simclr``).

    Training (teacher_* and student_*): optimizer (``"sgd"`` = momentum 0.9, ``"adam"``), learning-rate grid,
        runs per rate, epochs, batch size, ``*_steps_per_epoch`` (``None``: one pass over the training images,
        as the paper; a number: that many batches per epoch whatever the data size, so every student run gets
        the same number of updates), ``monitor`` (``"accuracy"`` as 002, or ``"auc"``).

    Transfer: ``fractions`` of the pool (0 = baseline), ``method``, ``soft_grid`` of ``(temperature, alpha)``,
        ``student_objectives``: the objectives of the student-teacher runs (``method`` pseudo or both), each a
        registered name with its settings (``{name: hinton, alpha: 0.1, temperature: 4}``;
        ``kd_keras.engine.list_objectives()``); one run per objective and pool fraction. Objectives that need
        teacher features (``attention_transfer``, ``fitnets``) run the teacher live; the others read its
        cached logits. A second view (``simclr``, ``fixmatch``) is a second draw of the same augmentation.

    Soft targets: ``soft_target_form``: how section 2.5's ``alpha`` weighs the soft term. ``"hard_plus_alpha_soft"``
        (our reading, objective ``soft_target_student_teacher``): ``CE + alpha * T^2 * KL``; the paper's best
        alpha=1.5 is above 1, so it cannot be a convex weight. ``"convex"``: the same two terms normalised to a
        convex combination, ``(CE + alpha * T^2 * KL) / (1 + alpha)`` (objective ``hinton`` with hard weight
        ``1 / (1 + alpha)``): the same direction, the step scaled by ``1 / (1 + alpha)``.
    bn_recalibration_batches: training batches over which BatchNorm statistics are recomputed before each
        validation (0: Keras' moving averages, as the paper; the short demo runs need the recalibration).

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
    abnormal_classes: tuple[str, ...] = KNOWN_ABNORMAL_CLASSES
    ignored_classes: tuple[str, ...] = ()
    held_out_overlap: str = "refuse"
    duplicate_labels: str = "refuse"
    file_check: str = "header"
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    synthetic: dict = field(default_factory=dict)
    task: str = "binary"
    geometry: str = "center_crop"
    image_size: int = 64
    student_channels: int = 1
    teacher: str = "resnet50"
    teacher_weights: str = "none"
    teacher_dropout: float = 0.2
    teacher_options: dict = field(default_factory=dict)
    teacher_pretraining: str = "none"
    simclr_epochs: int = 10
    simclr_steps_per_epoch: int | None = 20
    simclr_batch_size: int = 64
    simclr_learning_rate: float = 1e-3
    simclr_temperature: float = 0.1
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
    student_objectives: tuple[dict, ...] = ({"name": "pseudo_label"},)
    soft_grid: tuple[tuple[float, float], ...] = ((3.0, 1.5), (2.0, 0.5))
    soft_target_form: str = "hard_plus_alpha_soft"
    bn_recalibration_batches: int = 10
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
        if self.soft_target_form not in SOFT_TARGET_FORMS:
            raise StudyError(f"soft_target_form must be one of {SOFT_TARGET_FORMS}, got {self.soft_target_form!r}")
        if self.bn_recalibration_batches < 0:
            raise StudyError(f"bn_recalibration_batches must be >= 0, got {self.bn_recalibration_batches}")
        if self.teacher_pretraining not in TEACHER_PRETRAINING:
            raise StudyError(f"--teacher-pretraining must be one of {', '.join(TEACHER_PRETRAINING)}, "
                             f"got {self.teacher_pretraining!r}")
        if self.teacher_pretraining == "simclr" and self.teacher_weights.endswith(".keras"):
            raise StudyError("--teacher-pretraining simclr: the teacher is loaded from a .keras file and not "
                             "trained; pass --teacher-weights none (or a weights file) to pretrain it")
        for option, value in (("simclr_epochs", self.simclr_epochs), ("simclr_batch_size", self.simclr_batch_size)):
            if value < 1:
                raise StudyError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
        if self.simclr_steps_per_epoch is not None and self.simclr_steps_per_epoch < 1:
            raise StudyError(f"--simclr-steps-per-epoch must be >= 1, got {self.simclr_steps_per_epoch}")
        if not (self.simclr_learning_rate > 0 and self.simclr_temperature > 0):
            raise StudyError("--simclr-learning-rate and --simclr-temperature must be > 0")
        if self.task not in TASKS:
            raise StudyError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.geometry not in GEOMETRIES:
            raise StudyError(f"--geometry must be one of {', '.join(GEOMETRIES)}, got {self.geometry!r}")
        if self.monitor not in ("accuracy", "auc"):
            raise StudyError(f"monitor must be 'accuracy' or 'auc', got {self.monitor!r}")
        if not self.students:
            raise StudyError("--students: give at least one student")
        self._check_data_settings()
        if not self.student_objectives:
            raise StudyError("student_objectives: give at least one objective")
        self.student_objectives = tuple(_checked_objective(o) for o in self.student_objectives)
        self.fractions = tuple(sorted({float(f) for f in self.fractions}))
        if 0.0 not in self.fractions:  # the baseline is always trained: it is what the framework is judged by
            self.fractions = (0.0, *self.fractions)

    def _check_data_settings(self) -> None:
        check_data_settings(self, StudyError)

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any) -> OCTStudyConfig:
        """The preset's settings with ``overrides`` (``None`` values are ignored).

        Example:
            >>> OCTStudyConfig.from_preset("paper").image_size
            224
        """
        from kd_keras.config import ConfigError, resolve_config

        try:
            given = {k: v for k, v in overrides.items() if v is not None}
            return resolve_config(cls, PRESETS, preset=preset, flags=given, adjust=adjust_settings)
        except ConfigError as error:
            raise StudyError(str(error)) from None

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    def soft_objective(self, temperature: float, alpha: float) -> dict[str, Any]:
        """Section 2.5's soft-target objective at ``(T, alpha)`` in the chosen ``soft_target_form``.

        Example:
            >>> OCTStudyConfig(soft_target_form="convex").soft_objective(3.0, 1.5)["alpha"]
            0.4
        """
        if self.soft_target_form == "convex":
            return {"name": "hinton", "temperature": float(temperature), "alpha": 1.0 / (1.0 + float(alpha))}
        return {"name": "soft_target_student_teacher", "temperature": float(temperature), "alpha": float(alpha)}


PRESETS: dict[str, dict[str, Any]] = {
    # Measured on the 2-core CI machine; see docs/oct_student_teacher.md for the run and its timing.
    "quick": dict(
        # Few labeled eyes (20 patients: 256 training, 64 validation B-scans) and lesions of medium difficulty,
        # so that labels are scarce and the teacher's pseudo-labels (about 91% right) carry real information.
        # 40 more patients for validation only (640 B-scans, as many as the test set): choosing between a
        # baseline and its student-teacher model costs inference only, and 64 B-scans chose wrong (issue 20).
        synthetic={"labeled_patients": 20, "difficulty": 0.5, "validation_patients": 40}, teacher="vgg16_d4",
        teacher_options={"batch_norm": True}, teacher_learning_rates=(2e-3,), teacher_epochs=10,
        teacher_steps_per_epoch=20, teacher_dropout=0.2,
        # sqnxt23_w1 took 660 of 1,526 s in an earlier run (docs/oct_student_teacher.md): too slow on a CPU here.
        # The same 1,200 steps for every run (fixed steps, not epochs): the pool runs win by seeing more images,
        # not by training longer. 120 steps were too few for these students to learn anything at 64 px.
        students=("mobilenet_wd2", "shufflenetv2_wd2"), student_learning_rates=(2e-3,),
        student_epochs=12, student_steps_per_epoch=100, fractions=(0.0, 1.0),
    ),
    # Study 002 as published (the table in docs/paper_presets.md): 224 px RGB ResNet50 teacher pre-trained on
    # ImageNet (SGD, momentum 0.9, batch 64, 1e-2..1e-6, 31 epochs), the students of section 2.3 with Adam, batch
    # 64, 20 epochs, learning rates 1e-1..1e-6, five runs, max validation accuracy; pseudo-labels at 0-100% of the
    # pool (2.4) and the soft-target alternative (2.5); no BatchNorm recalibration.
    "paper": dict(
        image_size=224, geometry="resize", student_channels=3, teacher="resnet50", teacher_weights="imagenet",
        teacher_dropout=0.5,
        teacher_optimizer="sgd", teacher_learning_rates=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6), teacher_runs=1,
        teacher_epochs=31, teacher_batch_size=64, teacher_steps_per_epoch=None,
        students=PAPER_STUDENTS, student_optimizer="adam",
        student_learning_rates=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6), student_runs=5, student_epochs=20,
        student_batch_size=64, student_steps_per_epoch=None, fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
        method="both", student_objectives=({"name": "pseudo_label"},), monitor="accuracy",
        soft_grid=((1.0, 0.5), (2.0, 0.5), (3.0, 0.5), (3.0, 1.0), (3.0, 1.5), (5.0, 1.5)),
        soft_target_form="hard_plus_alpha_soft", augment=True, rotation_degrees=15.0, vertical_shift=0.1,
        images_per_volume=128, n_boot=1000, latency_repeats=5, bn_recalibration_batches=0,
        synthetic={"image_size": [224, 224]},
    ),
    # CI smoke test: everything runs, nothing is learned.
    "smoke": dict(
        image_size=32, teacher="mobilenet_wd2", students=("mobilenet_wd4",), fractions=(0.0, 1.0),
        teacher_epochs=2, student_epochs=2, teacher_steps_per_epoch=2, student_steps_per_epoch=2,
        teacher_batch_size=8, student_batch_size=8, soft_grid=((2.0, 0.5),), n_boot=20,
        export_variants=("tflite_fp32", "onnx"), parity_images=16, latency_runtimes=("litert",),
        images_per_volume=4, latency_repeats=1, latency_batch_size=4,
        synthetic=dict(image_size=[32, 32], bscans_sampled_per_volume=4, labeled_patients=12,
                       unlabeled_patients=4, test_patients=6, disease_mix=[0.3, 0.3, 0.3, 0.1]),
    ),
}


def _checked_objective(objective: Any) -> dict[str, Any]:
    """A ``{"name": ..., **settings}`` objective that the registry can build (refused now, not mid-run)."""
    from kd_keras.engine.objectives import get_objective, list_objectives

    if isinstance(objective, str):
        objective = {"name": objective}
    if not isinstance(objective, dict) or "name" not in objective:
        raise StudyError(f"student_objectives: each objective is {{name: ..., settings}}, got {objective!r}")
    if objective["name"] not in list_objectives():
        raise StudyError(f"student_objectives: unknown objective {objective['name']!r}; registered: "
                         f"{', '.join(list_objectives())}")
    try:
        get_objective(dict(objective))
    except (TypeError, ValueError) as error:
        raise StudyError(f"student_objectives: {objective['name']}: {error}") from None
    return dict(objective)


def adjust_settings(values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """The last word on resolved settings.

    - Builder options belong to the preset's own teacher: dropped when the user chose another teacher.
    - ``--epochs N`` keeps the preset's teacher/student epoch ratio (the teacher is trained once and labels
      everything), unless the teacher's epochs were given too.
    """
    preset = PRESETS.get(values.get("preset", ""), {})
    if "teacher" in explicit and "teacher_options" not in explicit and values.get("teacher") != preset.get(
            "teacher", OCTStudyConfig.teacher):
        values = {k: v for k, v in values.items() if k != "teacher_options"}
    if values.pop("_scale_teacher_epochs", False) and "teacher_epochs" not in explicit:
        ratio = preset.get("teacher_epochs", OCTStudyConfig.teacher_epochs) / preset.get(
            "student_epochs", OCTStudyConfig.student_epochs)
        values["teacher_epochs"] = max(1, round(int(values["student_epochs"]) * ratio))
    return values


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as '0 0.5 1', got {text!r}") from None
    return tuple(v / 100 if v > 1 else v for v in values)  # "0 25 50" works too


def _epochs(value: int) -> dict[str, Any]:
    # The teacher's epochs follow with the preset's ratio: resolved in adjust_settings, which knows the preset.
    return {"student_epochs": value, "_scale_teacher_epochs": True}


def _at_least(lowest: int, option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
        return value

    parse.__name__ = option
    return parse


# The options of `python experiments/oct_student_teacher.py` that are not simply --<setting>.
FLAGS = (
    Flag(("--data-dir",), {"help": "labeled images in class folders (default: embedded synthetic OCT)"},
         lambda v: {"data_dir": v}),
    Flag(("--unlabeled-dir",), {"action": "append", "help": "unlabeled pool folder (repeatable)"},
         lambda v: {"unlabeled_dirs": tuple(v)}),
    Flag(("--test-dir",), {"action": "append", "help": "hold-out test set in class folders (repeatable)"},
         lambda v: {"test_dirs": tuple(v)}),
    Flag(("--students",), {"nargs": "+", "metavar": "NAME", "help": "student zoo names"},
         lambda v: {"students": tuple(v)}),
    Flag(("--fractions",), {"type": _fractions,
                            "help": "shares of the unlabeled pool, e.g. '0 0.5 1' (0 = labeled only, always run)"},
         lambda v: {"fractions": v}),
    Flag(("--method",), {"choices": METHODS,
                         "help": "pseudo-labels (002 section 2.4), soft targets (2.5) or both (default pseudo)"},
         lambda v: {"method": v}),
    Flag(("--epochs",), {"type": _at_least(1, "epochs"), "metavar": "N",
                         "help": "student epochs (the teacher's scale with them)"}, _epochs),
    Flag(("--steps-per-epoch",), {"type": _at_least(0, "steps"), "metavar": "N",
                                  "help": "student steps per epoch (0: one pass over each run's training images, "
                                          "as in 002, so runs with more unlabeled images train longer; the quick "
                                          "preset's fixed 100 gives every run the same 1,200 steps)"},
         lambda v: {"student_steps_per_epoch": v or None}),
    Flag(("--teacher-epochs",), {"type": _at_least(1, "epochs"), "metavar": "N",
                                 "help": "teacher epochs (default: the preset's, scaled with --epochs)"},
         lambda v: {"teacher_epochs": v}),
    Flag(("--teacher-steps-per-epoch",), {"type": _at_least(0, "steps"), "metavar": "N",
                                          "help": "teacher steps per epoch (0: one pass over the labeled images)"},
         lambda v: {"teacher_steps_per_epoch": v or None}),
)
