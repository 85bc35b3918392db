"""Settings of study 004 (attention transfer): one dataclass, its presets and the command's own options.

Presets: ``"paper"`` (the default) is the study's protocol (256 px, ImageNet DenseNet-121 teacher and students,
Adam 5e-5 halved every 16 epochs, 128 epochs; needs ``--data``); ``"demo"`` is what ``--demo`` runs (synthetic
fundus photographs, DenseNet-40 only, about 7 minutes on 2 CPU cores); ``"smoke"`` is ``--demo --tiny`` (CI:
seconds of training at 32 px). Every setting is also a ``kd-keras run attention`` option, a config-file key and
a ``--set`` key (:mod:`kd_keras.config`).

Example:

```python
from kd_keras.config import resolve_config
from kd_keras.studies.attention_config import PRESETS, ATConfig

config = resolve_config(ATConfig, PRESETS, preset="demo", sets=["betas=[1, 30]"])
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kd_keras.config import ScaleSettings
from kd_keras.runner import RunError, apply_demo_flags, demo_flags
from kd_keras.studies.data_checks import KNOWN_ABNORMAL_CLASSES, check_data_settings

if TYPE_CHECKING:
    import keras

__all__ = ["ATTENTION_LAYERS", "AUGMENTATIONS", "DEMO_TASKS", "FLAGS", "LAYOUTS", "PAPER_BETAS", "PAPER_TRAIN_SIZES",
           "PRESETS", "SELECTION_METRICS", "STUDENT_TAPS", "TEACHER_TAP", "VALIDATE_EVERY", "ATConfig", "StudyError",
           "adjust_settings", "schedule", "size_label"]

TEACHER_TAP = "conv5_block16_2_conv"  # DenseNet-121: the last dense layer's 32-plane map (004 Fig. 2)
STUDENT_TAPS = {"densenet121": TEACHER_TAP, "densenet40": "stage3"}
LAYOUTS = ("folders", "eyepacs", "messidor", "chexpert", "csv", "npz")
DEMO_TASKS = ("multiclass", "binary", "multilabel")
VARIANTS = ("paper", "zagoruyko")
# 004: "one layer before the last layer of the last dense block". Our reading ("last"): the last dense layer's
# 3x3 convolution (32 planes), one layer before the block's final concatenation; "second_last": the dense layer
# before the last one. DenseNet-40's tap (its third block's output) is the same under both.
ATTENTION_LAYERS = {"last": "conv5_block16_2_conv", "second_last": "conv5_block15_2_conv"}
# The beta values 004 reports as best (it searched 1..2000).
PAPER_BETAS = (1.0, 20.0, 30.0, 50.0, 60.0, 100.0, 1000.0, 2000.0)
# 004's Table II / Fig. 3: CheXpert training sets of 5k, 50k and all 178,352 images ("178k").
PAPER_TRAIN_SIZES = (5000, 50000, 178000)
# When the model is validated: "curve_points" (curve_points times per run) or "epoch" (every epoch: 004's "best AUC
# performance on the validation sets across all epochs").
VALIDATE_EVERY = ("curve_points", "epoch")
# What selects the epoch and beta: "auto" is 004's (weighted F1 for the multi-class retina task, AUC otherwise).
SELECTION_METRICS = ("auc", "weighted_f1", "auto")
# "study": flip, +-5 degrees, shift, brightness, contrast; "paper": 004's centre crop, +-15 degrees, horizontal flip.
AUGMENTATIONS = ("study", "paper")


def size_label(size: float) -> str:
    """A training-set size in stage and file names: ``f0.5`` (a fraction) or ``n5000`` (a count).

    Example:
        >>> size_label(0.5), size_label(5000)
        ('f0.5', 'n5000')
    """
    return f"n{int(size)}" if isinstance(size, int) else f"f{size:g}"


class StudyError(RunError):
    """A problem the user can fix (bad option, data, teacher file); ``str(error)`` is one line."""


@dataclass
class ATConfig(ScaleSettings):
    """Everything a run of study 004 depends on (recorded in ``config.yaml``; ``--resume`` refuses another one).

    Args:
        preset: the named settings the run started from (``paper``, ``demo``, ``smoke``).
        layout: the labeled data's layout: folders, eyepacs, messidor, chexpert, csv or npz.
        data: the labeled data (folder, CSV or .npz); none with ``demo_patients`` > 0 (synthetic fundus).
        image_dir: where the CSV's images are (default: next to the CSV).
        task: auto (DR grades for DR layouts, multi-label for CheXpert) or a kd_keras.data.tasks name.
        uncertain: CheXpert -1 labels: zeros (paper), ones or ignore.
        demo_task: the synthetic data's task: multiclass (DR grades), binary (referable) or multilabel
            (CheXpert-style with uncertain -1 labels).
        demo_patients: patients of synthetic fundus photographs (two images each); 0: use ``data``.
        demo_test_patients: with ``demo_patients``, generated patients added to the test set only (no training
            label; the demo's 150 give 300 more test images: :func:`kd_keras.data.synthetic_fundus.test_only_fundus`).
        limit: about this many images of ``data``, whole patients drawn with ``seed`` before the split (the last
            one cut to the count); 0: every image.
        image_size: input side in pixels (the paper: 256; DenseNet-40's attention map is then 8x8).
        channels: input channels.
        teacher_weights: imagenet, none (random), a weights file, or a .keras teacher.
        teacher_epochs: fine-tune the teacher here first with hard labels (0: use it as given).
        teacher_lr: the teacher's learning rate (Adam).
        students: densenet121 and/or densenet40.
        student_weights: imagenet or none (DenseNet-40 takes DenseNet-121's first blocks).
        betas: the grid of beta (1/beta weighs L_AT; the paper searched 1..2000), chosen by validation AUC.
        train_fractions: the training-set-size sweep, fractions of the training patients.
        train_sizes: the sweep as image counts instead (004: 5,000, 50,000 and 178,000 CheXpert images); when
            given it replaces ``train_fractions``; each size takes whole patients in one seeded order (the smaller
            sets inside the larger ones; the last patient cut to the count) and a size larger than the training
            set is refused. Validation and test sets stay the same for every size.
        repetitions: runs of every (size, student, method, beta) with different seeds (004: three); beta is
            chosen by the mean validation score and the report gives the mean and spread of the test AUC.
        epochs: epochs of every student run (the best by validation AUC is kept; paper: at most 128).
        min_steps_per_epoch: an epoch of a student run is at least this many batches (the training stream cycles
            on, each pass augmented and shuffled anew), so the small sizes of a sweep are not left at one step per
            epoch when the epoch count is set by what the largest size can afford; the learning rate still halves
            every ``halve_every_epochs`` epochs (0: one pass per epoch, as the paper).
        batch_size: examples per batch (paper: 32).
        learning_rate: Adam's first learning rate (paper: 5e-5).
        halve_every_epochs: the learning rate is halved every this many epochs (paper: 16).
        variant: L_AT as the paper (per-plane, eq. 1) or zagoruyko (the authors' code).
        validate_every: ``curve_points`` (validate ``curve_points`` times per run) or ``epoch`` (every epoch, the
            best over all epochs kept, as 004).
        selection_metric: the validation score that picks the epoch and beta: ``auc``, ``weighted_f1`` or
            ``auto`` (004: weighted F1 for a multi-class task such as DR grades, AUC otherwise).
        augmentation: ``study`` (horizontal flip, +-5 degrees, small shift, brightness and contrast) or ``paper``
            (004: the centred square crop before the resize, +-15 degrees, horizontal flip).
        attention_layer: the DenseNet-121 layer whose attention map is transferred: ``last`` (our reading of
            "one layer before the last layer of the last dense block": ``conv5_block16_2_conv``) or
            ``second_last`` (``conv5_block15_2_conv``).
        bn_recalibration_batches: training batches over which BatchNorm statistics are recomputed before each
            validation (0: Keras' moving averages, as the paper).
        curve_points: validation points per student run (the learning curves: AUC against step).
        split: patient-level train/val/test fractions.
        duplicate_labels: one image under two classes: ``refuse`` (default), ``keep`` or ``drop`` every copy (a
            test image that is also a training or validation image is always refused).
        file_check: how every file is checked before training: ``header`` or ``decode``; bad files are left
            out and reported (:mod:`kd_keras.studies.data_checks`).
        abnormal_classes: with ``task: normal_vs_abnormal`` on class folders, the folders counted as abnormal
            besides NORMAL (any other folder is refused by name).
        ignored_classes: class folders left out (reported).
        clahe: CLAHE contrast equalisation in preprocessing.
        n_boot: patient-clustered bootstrap replicates of the test CIs (0: none).
        seed: the run's one seed.
    """

    preset: str = "paper"
    layout: str = "folders"
    data: str | None = None
    image_dir: str | None = None
    task: str = "auto"
    uncertain: str = "zeros"
    demo_task: str = "multiclass"
    demo_patients: int = 0
    demo_test_patients: int = 0
    limit: int = 0
    image_size: int = 256
    channels: int = 3
    teacher_weights: str = "imagenet"
    teacher_epochs: int = 0
    teacher_lr: float = 1e-4
    students: tuple[str, ...] = ("densenet121", "densenet40")
    student_weights: str = "imagenet"
    betas: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    train_fractions: tuple[float, ...] = (0.1, 0.5, 1.0)
    train_sizes: tuple[int, ...] = ()
    repetitions: int = 1
    epochs: int = 128
    min_steps_per_epoch: int = 0
    batch_size: int = 32
    learning_rate: float = 5e-5
    halve_every_epochs: int = 16
    variant: str = "paper"
    attention_layer: str = "last"
    validate_every: str = "curve_points"
    selection_metric: str = "auc"
    augmentation: str = "study"
    bn_recalibration_batches: int = 5
    curve_points: int = 16
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    duplicate_labels: str = "refuse"
    file_check: str = "header"
    abnormal_classes: tuple[str, ...] = KNOWN_ABNORMAL_CLASSES
    ignored_classes: tuple[str, ...] = ()
    clahe: bool = False
    n_boot: int = 200
    seed: int = 0

    def __post_init__(self):
        self.teacher_weights = "none" if self.teacher_weights is None else str(self.teacher_weights)
        self.student_weights = "none" if self.student_weights is None else str(self.student_weights)
        checks = [
            (self.preset in PRESETS, f"--preset must be one of {tuple(PRESETS)}, got {self.preset!r}"),
            (self.layout in LAYOUTS, f"--layout must be one of {LAYOUTS}, got {self.layout!r}"),
            (self.uncertain in ("zeros", "ones", "ignore"),
             f"--uncertain must be zeros, ones or ignore, got {self.uncertain!r}"),
            (self.demo_task in DEMO_TASKS, f"--demo-task must be one of {DEMO_TASKS}, got {self.demo_task!r}"),
            (self.demo_patients >= 0, f"--demo-patients must be >= 0, got {self.demo_patients}"),
            (self.demo_test_patients >= 0, f"--demo-test-patients must be >= 0, got {self.demo_test_patients}"),
            (not (self.demo_patients and self.data), "give either --data or the synthetic demo data (--demo / "
             f"--demo-patients), not both (--data {self.data!r}, --demo-patients {self.demo_patients})"),
            (self.image_size >= 32, f"--image-size must be at least 32, got {self.image_size}"),
            (self.channels in (1, 3), f"--channels must be 1 or 3, got {self.channels}"),
            (self.student_weights in ("imagenet", "none"),
             f"--student-weights must be imagenet or none, got {self.student_weights!r}"),
            (self.teacher_epochs >= 0, f"--teacher-epochs must be >= 0, got {self.teacher_epochs}"),
            (bool(self.students) and all(s in STUDENT_TAPS for s in self.students),
             f"--students must be among {tuple(STUDENT_TAPS)}, got {list(self.students)}"),
            (bool(self.betas) and all(b > 0 for b in self.betas),
             f"--betas must be positive numbers, got {list(self.betas)}"),
            (bool(self.train_fractions) and all(0 < f <= 1 for f in self.train_fractions),
             f"--train-fractions must be in (0, 1], got {list(self.train_fractions)}"),
            (all(n >= 2 for n in self.train_sizes), f"--train-sizes must be image counts >= 2, got "
             f"{list(self.train_sizes)}"),
            (self.repetitions >= 1, f"--repetitions must be >= 1, got {self.repetitions}"),
            (self.validate_every in VALIDATE_EVERY,
             f"--validate-every must be one of {VALIDATE_EVERY}, got {self.validate_every!r}"),
            (self.selection_metric in SELECTION_METRICS,
             f"--selection-metric must be one of {SELECTION_METRICS}, got {self.selection_metric!r}"),
            (self.augmentation in AUGMENTATIONS,
             f"--augmentation must be one of {AUGMENTATIONS}, got {self.augmentation!r}"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.halve_every_epochs >= 1,
             "--epochs, --batch-size and --halve-every-epochs must be >= 1, got "
             f"{self.epochs}, {self.batch_size}, {self.halve_every_epochs}"),
            (self.learning_rate > 0 and self.teacher_lr > 0,
             f"--learning-rate and --teacher-lr must be > 0, got {self.learning_rate}, {self.teacher_lr}"),
            (self.attention_layer in ATTENTION_LAYERS,
             f"--attention-layer must be one of {tuple(ATTENTION_LAYERS)}, got {self.attention_layer!r}"),
            (self.bn_recalibration_batches >= 0,
             f"--bn-recalibration-batches must be >= 0, got {self.bn_recalibration_batches}"),
            (self.variant in VARIANTS, f"--variant must be one of {VARIANTS}, got {self.variant!r}"),
            (min(self.curve_points, self.n_boot, self.min_steps_per_epoch, self.limit) >= 0,
             f"--curve-points, --n-boot, --min-steps-per-epoch and --limit must be >= 0, got {self.curve_points}, "
             f"{self.n_boot}, {self.min_steps_per_epoch}, {self.limit}"),
            (len(self.split) == 3 and min(self.split) > 0 and abs(sum(self.split) - 1) < 1e-6,
             f"--split must be three positive fractions summing to 1, got {list(self.split)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise StudyError(message)
        self.train_sizes = tuple(sorted(dict.fromkeys(int(n) for n in self.train_sizes)))
        check_data_settings(self, StudyError)

    def sizes(self) -> tuple[float, ...]:
        """The training-set sizes of the sweep: ``train_sizes`` (ints, image counts) when given, else
        ``train_fractions`` (floats)."""
        return tuple(self.train_sizes) if self.train_sizes else tuple(float(f) for f in self.train_fractions)

    def monitor(self, task: str) -> str:
        """The validation score of a ``task`` (``multiclass``, ``binary``, ``multilabel``) under
        ``selection_metric``.

        Example:
            >>> ATConfig(selection_metric="auto").monitor("multiclass")
            'weighted_f1'
        """
        if self.selection_metric == "auto":
            return "weighted_f1" if task == "multiclass" else "auc"
        return self.selection_metric

    @property
    def teacher_weights_arg(self) -> str | None:
        """``teacher_weights`` as the model builders take it (``None``: random)."""
        return None if self.teacher_weights.lower() == "none" else self.teacher_weights

    def taps(self, student: str) -> tuple[str, str]:
        """``(student tap, teacher tap)`` of the attention maps under ``attention_layer``.

        Example:
            >>> ATConfig(attention_layer="second_last").taps("densenet40")
            ('stage3', 'conv5_block15_2_conv')
        """
        teacher = ATTENTION_LAYERS[self.attention_layer]
        return (teacher if student == "densenet121" else STUDENT_TAPS[student]), teacher

    @property
    def student_weights_arg(self) -> str | None:
        return None if self.student_weights.lower() == "none" else self.student_weights

    def preprocess(self):
        """The :class:`~kd_keras.data.preprocess.PreprocessConfig` of every model of the run."""
        from kd_keras.data.preprocess import PreprocessConfig

        return PreprocessConfig(image_size=(self.image_size, self.image_size), channels=self.channels,
                                clahe=self.clahe, geometry="center_crop" if self.augmentation == "paper" else "resize")


def schedule(config: ATConfig, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Adam's learning rate: ``learning_rate`` halved every ``halve_every_epochs`` epochs (staircase).

    Example:
        >>> float(schedule(ATConfig(), steps_per_epoch=10)(160))  # 16 epochs of 10 steps: halved once
        2.5e-05
    """
    import keras

    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=max(1, config.halve_every_epochs * steps_per_epoch), decay_rate=0.5,
        staircase=True,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # Study 004 as published (the table in docs/paper_presets.md): ImageNet DenseNet-121 teacher, DenseNet-121
    # and DenseNet-40 students, 256 px centre-cropped, +-15 degrees and flips, Adam 5e-5 halved every 16 epochs,
    # batch 32, at most 128 epochs with the best validation score over all epochs, three repetitions, 5k/50k/178k
    # training images, the betas it reports as best, no BatchNorm recalibration.
    "paper": dict(image_size=256, channels=3, teacher_weights="imagenet", students=("densenet121", "densenet40"),
                  student_weights="imagenet", betas=PAPER_BETAS, epochs=128, batch_size=32, learning_rate=5e-5,
                  halve_every_epochs=16, variant="paper", attention_layer="last", uncertain="zeros",
                  bn_recalibration_batches=0, train_sizes=PAPER_TRAIN_SIZES, repetitions=3, validate_every="epoch",
                  selection_metric="auto", augmentation="paper"),
    # `--demo`: synthetic fundus photographs (60 patients), a teacher trained here from scratch (no ImageNet
    # offline) and a larger learning rate than the paper's 5e-5 (few epochs). DenseNet-40 only: each DenseNet-121
    # student run took about 90 s on 2 cores (DenseNet-40: 45 s), so both would need about 16 minutes;
    # --students densenet121 densenet40 runs both (docs/demos.md). 150 test-only patients: 300 more test images
    # (inference only; issue 21: the 24-image test set left CIs 20+ points wide).
    "demo": dict(
        demo_patients=60, demo_test_patients=150, image_size=64, teacher_weights="none", teacher_epochs=4,
        teacher_lr=1e-3,
        student_weights="none", students=("densenet40",), betas=(1.0, 100.0), train_fractions=(0.5, 1.0),
        epochs=6, batch_size=16, learning_rate=1e-3, halve_every_epochs=4, curve_points=8, n_boot=100,
    ),
    # `--demo --tiny` (KD_KERAS_TINY=1): CI; everything runs, nothing is learned. Two student epochs so that a
    # killed student run resumes mid-training from its epoch-end checkpoint (tests/test_study_004.py).
    "smoke": dict(
        demo_patients=12, demo_test_patients=3, image_size=32, teacher_weights="none", teacher_epochs=0,
        student_weights="none",
        students=("densenet40",), betas=(10.0,), train_fractions=(1.0,), epochs=2, batch_size=16,
        learning_rate=1e-3, halve_every_epochs=1, curve_points=2, n_boot=0, split=(0.6, 0.2, 0.2),
    ),
}


def adjust_settings(values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """``--demo`` is ``--preset demo``, ``--demo --tiny`` (or ``--demo`` with ``KD_KERAS_TINY=1``) ``--preset
    smoke`` (:func:`kd_keras.runner.apply_demo_flags`)."""
    return apply_demo_flags(values, explicit, PRESETS, ATConfig.preset)


# The options of `python experiments/attention_transfer.py` that are not simply --<setting>.
FLAGS = (
    *demo_flags("generated fundus photographs"),
)
