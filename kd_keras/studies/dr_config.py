"""Settings of study 000 (KD with unlabeled random images): one dataclass, its presets and the command's own options.

Presets: ``"paper"`` (the default) is the study's protocol (300 px, 5 folds, 300 epochs per variant, no BatchNorm
recalibration; it needs the Messidor/EyePACS images through ``data`` and 20,000 random images through ``pool``);
``"demo"`` is what ``--demo`` runs (embedded synthetic fundus photographs and the built-in natural-image pool,
minutes on 2 CPU cores); ``"smoke"`` is what ``--demo --tiny`` (or ``--demo`` with ``KD_KERAS_TINY=1``) runs, for
CI. Every setting is also a ``kd-keras run dr`` option, a
config-file key and a ``--set`` key (:mod:`kd_keras.config`).

Example:

```python
from kd_keras.config import resolve_config
from kd_keras.studies.dr_config import PRESETS, DRKDConfig

config = resolve_config(DRKDConfig, PRESETS, preset="demo", sets=["students=[simple10]"])
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kd_keras.config import ScaleSettings
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.runner import Flag, RunError, apply_demo_flags, demo_flags
from kd_keras.studies.data_checks import KNOWN_ABNORMAL_CLASSES, check_data_settings

__all__ = ["EPOCH_BUDGETS", "FLAGS", "KD_OBJECTIVES", "LAYOUTS", "PRESETS", "STUDENT_TITLES", "VARIANTS", "DRError",
           "DRKDConfig", "adjust_settings"]

# Variant key -> (table row title, sub-steps in training order): (a) "ul", (b) "kd", (c) "hard".
VARIANTS = {
    "base": ("Base model", ("hard",)),
    "kd": ("Base model+KD", ("kd", "hard")),
    "ul": ("Base model+UL", ("ul", "hard")),
    "kd_ul": ("Base model+KD+UL", ("ul", "kd", "hard")),
}
STUDENT_TITLES = {"simple10": "Simple10", "vgg16_d2": "VGG/2", "vgg16_d4": "VGG/4"}
# "synthetic": the embedded synthetic fundus photographs (no ``data``); the others read ``data``.
LAYOUTS = ("synthetic", "folders", "eyepacs", "messidor", "chexpert", "csv", "npz")
EPOCH_BUDGETS = ("variant", "stage")
KD_OBJECTIVES = ("conditional", "soft_targets")
TASKS = ("auto", "referable_dr", "dr_grades", "normal_vs_abnormal", "multiclass", "multilabel")


class DRError(RunError):
    """A problem the user can fix (option, data); ``str(error)`` is one line."""


@dataclasses.dataclass
class DRKDConfig(ScaleSettings):
    """Everything a run of study 000 depends on (``config.yaml`` replays it; ``--resume`` refuses another one).

    Args:
        preset: the named settings the run started from (``paper``, ``demo``, ``smoke``).
        layout: the labeled data's layout: ``synthetic`` (embedded synthetic fundus photographs, referable DR),
            ``folders`` (one folder per class), ``eyepacs``, ``messidor`` (sheet as CSV), ``chexpert``, ``csv``,
            ``npz``.
        data: class-folder root, CSV sheet or ``.npz`` of the labeled images (not with ``synthetic``).
        image_dir: the images of a CSV layout (default: next to the CSV).
        task: auto | referable_dr | dr_grades | normal_vs_abnormal | multiclass | multilabel (auto: DR grades
            for eyepacs/messidor, referable DR for synthetic, the classes as given otherwise).
        pool: folder of unlabeled random (natural) images; none: the built-in fallback pool.
        pool_size: images of the built-in fallback pool.
        limit: use a random subset of this many labeled images (0: all).
        holdout_fraction: share of the labeled images (after ``limit``), drawn by whole patients and stratified,
            kept out of every fold as a common hold-out test set of other patients: every fold's teacher and
            students are also evaluated on it (``holdout_metrics``, report table "hold-out"); 0: none.
        held_out_overlap: a pool image that is also a labeled image (same path, link or identical bytes):
            ``refuse`` the run (default) or ``drop`` it from the pool (reported).
        duplicate_labels: one image under two classes: ``refuse`` (default), ``keep`` or ``drop`` every copy.
        file_check: how every labeled and pool file is checked before training: ``header`` or ``decode``;
            bad files are left out and reported (:mod:`kd_keras.studies.data_checks`).
        abnormal_classes: with ``task: normal_vs_abnormal`` on class folders, the folders counted as abnormal
            besides NORMAL (any other folder is refused by name).
        ignored_classes: class folders left out (reported).
        synthetic_patients: patients (two photographs each) of the synthetic data.
        synthetic_difficulty: lesion difficulty of the synthetic data (0 easy .. 2 hard).
        synthetic_test_patients: with ``synthetic``, generated patients added to every fold's test set only (no
            training label; the demo's 150 give 300 more test images per fold, shared by the folds:
            :func:`kd_keras.data.synthetic_fundus.test_only_fundus`).
        image_size: square input side (the paper: 300).
        channels: 3 (RGB fundus photographs) or 1.
        students: student names from the zoo (simple10, vgg16_d2, vgg16_d4).
        variants: base, kd, ul, kd_ul (Tables 1-2: Base, +KD, +UL, +KD+UL).
        folds: patient-level cross-validation folds (the paper: 5).
        max_folds: run only the first this many folds (none: all).
        teacher: the teacher's zoo name.
        teacher_weights: the teacher's initialisation: imagenet, none, or a weights file.
        teacher_epochs: teacher fine-tuning epochs.
        teacher_lr: teacher Adam learning rate.
        ul_epochs: epochs of stage (a), distillation on the unlabeled random images (eq. 1).
        kd_epochs: epochs of stage (b), conditional distillation on the labeled images (eq. 2).
        hard_epochs: epochs of stage (c), hard labels.
        student_epochs: the paper's "trained for 300 epochs" (section 4); none: ``ul_epochs``, ``kd_epochs`` and
            ``hard_epochs`` as given (the demos). With a number, ``epoch_budget`` says what it counts.
        epoch_budget: ``variant`` (our reading): ``student_epochs`` is each variant's total, split equally over
            its steps (Base: 300 hard; +KD: 150 + 150; +UL: 150 + 150; +KD+UL: 100 + 100 + 100; a remainder goes
            to the hard step), so every row of Tables 1-2 gets the same budget; ``stage``: every step trains
            ``student_epochs`` (the variants with more steps train longer).
        kd_objective: step (b)'s loss (eq. 2, only its prose survives): ``conditional`` (our reading: the
            teacher's soft targets where it predicts the label, the label where it does not); ``soft_targets``:
            the teacher's soft targets on every labeled image (Hinton KD at ``temperature`` without the
            condition).
        bn_recalibration_batches: training batches over which BatchNorm statistics are recomputed at the end of
            each training (0: Keras' moving averages, as the paper).
        student_lr: Adam learning rate of every student stage.
        temperature: softmax temperature of the soft targets (1 = the paper's eqs. 1-2).
        batch_size: batch size.
        clahe: per-channel CLAHE on the retina and the random images.
        fundus_crop: crop fundus photographs to their circle (off for e.g. chest X-rays).
        dropout: dropout before the classifier.
        n_boot: bootstrap replicates of the per-fold CIs (0: none).
        deterministic: deterministic TensorFlow ops (a resumed run ends as an uninterrupted one).
        seed: one seed for data, splits, initialisation and augmentation.
    """

    preset: str = "paper"
    layout: str = "folders"
    data: str | None = None
    image_dir: str | None = None
    task: str = "auto"
    pool: str | None = None
    pool_size: int = 20000
    limit: int = 0
    holdout_fraction: float = 0.0
    held_out_overlap: str = "refuse"
    duplicate_labels: str = "refuse"
    file_check: str = "header"
    abnormal_classes: tuple[str, ...] = KNOWN_ABNORMAL_CLASSES
    ignored_classes: tuple[str, ...] = ()
    synthetic_patients: int = 60
    synthetic_difficulty: float = 0.5
    synthetic_test_patients: int = 0
    image_size: int = 300
    channels: int = 3
    students: tuple[str, ...] = ("simple10", "vgg16_d2", "vgg16_d4")
    variants: tuple[str, ...] = ("base", "kd", "ul", "kd_ul")
    folds: int = 5
    max_folds: int | None = None
    teacher: str = "vgg16"
    teacher_weights: str | None = "imagenet"
    teacher_epochs: int = 30
    teacher_lr: float = 1e-4
    ul_epochs: int = 30
    kd_epochs: int = 30
    hard_epochs: int = 30
    student_epochs: int | None = None
    epoch_budget: str = "variant"
    kd_objective: str = "conditional"
    bn_recalibration_batches: int = 5
    student_lr: float = 1e-3
    temperature: float = 1.0
    batch_size: int = 32
    clahe: bool = True
    fundus_crop: bool = True
    dropout: float = 0.5
    n_boot: int = 200
    deterministic: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise DRError(f"--preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.layout not in LAYOUTS:
            raise DRError(f"--layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.task not in TASKS:
            raise DRError(f"--task must be one of {list(TASKS)}, got {self.task!r}")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise DRError(f"--variants: unknown {unknown or 'none given'}; known: {list(VARIANTS)}")
        if not self.students:
            raise DRError("--students: give at least one student")
        if self.channels not in (1, 3):
            raise DRError(f"--channels must be 1 or 3, got {self.channels}")
        if self.image_size < 32:
            raise DRError(f"--image-size must be at least 32 (model contract), got {self.image_size}")
        if self.folds < 2:
            raise DRError(f"--folds must be at least 2, got {self.folds}")
        if self.max_folds is not None and not 1 <= self.max_folds <= self.folds:
            raise DRError(f"--max-folds must be in [1, folds={self.folds}], got {self.max_folds}")
        for name in ("teacher_epochs", "ul_epochs", "kd_epochs", "hard_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise DRError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "pool_size", "n_boot", "synthetic_patients", "synthetic_test_patients"):
            if getattr(self, name) < 0:
                raise DRError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise DRError(f"--holdout-fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.epoch_budget not in EPOCH_BUDGETS:
            raise DRError(f"--epoch-budget must be one of {list(EPOCH_BUDGETS)}, got {self.epoch_budget!r}")
        if self.kd_objective not in KD_OBJECTIVES:
            raise DRError(f"--kd-objective must be one of {list(KD_OBJECTIVES)}, got {self.kd_objective!r}")
        if self.student_epochs is not None and self.student_epochs < 1:
            raise DRError(f"--student-epochs must be >= 1, got {self.student_epochs}")
        if self.bn_recalibration_batches < 0:
            raise DRError(f"--bn-recalibration-batches must be >= 0, got {self.bn_recalibration_batches}")
        if self.temperature <= 0:
            raise DRError(f"--temperature must be > 0, got {self.temperature}")
        if isinstance(self.teacher_weights, str) and self.teacher_weights.lower() in ("none", ""):
            self.teacher_weights = None  # "--teacher-weights none": from scratch
        self.students = tuple(self.students)
        self.variants = tuple(self.variants)
        check_data_settings(self, DRError)

    def step_epochs(self, variant: str, step: str) -> int:
        """Epochs of ``step`` (``ul``, ``kd``, ``hard``) in ``variant`` under ``student_epochs``/``epoch_budget``.

        Example:
            >>> DRKDConfig(student_epochs=300).step_epochs("kd_ul", "ul")
            100
        """
        if self.student_epochs is None:
            return {"ul": self.ul_epochs, "kd": self.kd_epochs, "hard": self.hard_epochs}[step]
        if self.epoch_budget == "stage":
            return self.student_epochs
        steps = VARIANTS[variant][1]
        share = self.student_epochs // len(steps)
        return share + (self.student_epochs - share * len(steps) if step == "hard" else 0)

    @property
    def fold_count(self) -> int:
        """Folds actually run (the first ``max_folds`` of ``folds``)."""
        return self.max_folds or self.folds

    def preprocess(self, fundus_crop: bool | None = None) -> PreprocessConfig:
        """The preprocessing of the labeled images (``fundus_crop=False``: of the random images)."""
        return PreprocessConfig(
            image_size=(self.image_size, self.image_size),
            channels=self.channels,
            clahe=self.clahe,
            fundus_crop=self.fundus_crop if fundus_crop is None else fundus_crop,
        )


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's protocol (the table in docs/paper_presets.md): Messidor through `data`, 300 px, CLAHE, flips,
    # 5-fold CV, an ImageNet VGG16 teacher, Simple10 / VGG/2 / VGG/4 students, 300 epochs per variant, eqs. 1-2
    # at T=1, 20,000 random images (give them with --pool), no BatchNorm recalibration.
    "paper": dict(layout="folders", image_size=300, channels=3, clahe=True, fundus_crop=True, folds=5,
                  max_folds=None, teacher="vgg16", teacher_weights="imagenet",
                  students=("simple10", "vgg16_d2", "vgg16_d4"), variants=("base", "kd", "ul", "kd_ul"),
                  pool_size=20000, student_epochs=300, epoch_budget="variant", kd_objective="conditional",
                  temperature=1.0, bn_recalibration_batches=0),
    # What `--demo` ran before the runner (the old DEMO and DEMO_DATA dicts, teacher from scratch offline), and
    # 150 test-only patients (300 more test images per fold, inference only; issue 21).
    "demo": dict(layout="synthetic", synthetic_patients=60, synthetic_test_patients=150, pool_size=300,
                 image_size=48, folds=5, max_folds=2,
                 teacher_epochs=3, ul_epochs=2, kd_epochs=2, hard_epochs=4, batch_size=16, n_boot=100,
                 teacher_weights=None),
    # What `--demo --tiny` ran (the old TINY dicts), with 2 hard-label epochs so a kill can land between
    # two epochs of one training (tests/test_study_000.py).
    "smoke": dict(layout="synthetic", synthetic_patients=16, synthetic_test_patients=3, pool_size=32,
                  image_size=32, folds=2, max_folds=1,
                  teacher_epochs=1, ul_epochs=1, kd_epochs=1, hard_epochs=2, batch_size=16, n_boot=0,
                  students=("simple10",), teacher_weights=None),
}


def adjust_settings(values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """``--demo`` is ``--preset demo``, ``--demo --tiny`` (or ``--demo`` with ``KD_KERAS_TINY=1``) ``--preset
    smoke`` (:func:`kd_keras.runner.apply_demo_flags`); ``--tiny`` alone changes nothing."""
    return apply_demo_flags(values, explicit, PRESETS, DRKDConfig.preset)


# The options of `python experiments/dr_kd_unlabeled.py` that are not simply --<setting>.
FLAGS = (
    *demo_flags("embedded synthetic fundus data and the built-in pool"),
    Flag(("--students",), {"nargs": "+", "metavar": "NAME", "help": "student zoo names"},
         lambda v: {"students": tuple(v)}),
    Flag(("--variants",), {"nargs": "+", "choices": list(VARIANTS), "help": "training methods of Tables 1-2"},
         lambda v: {"variants": tuple(v)}),
)
