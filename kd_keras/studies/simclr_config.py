"""Settings of study 003 (SimCLR pretraining + distillation): one dataclass, its presets and the script's options.

Presets: ``"paper"`` (the default) is the study's protocol on your data (299 px, ResNet50 teacher from ImageNet,
2% labeled patients, densenet201 student for the paper's DenseNet-161); ``"demo"`` is what
``python experiments/simclr_distill.py --demo`` runs (120 generated fundus photos, 64 px, a few epochs);
``"smoke"`` is ``--demo --tiny`` (or ``KD_KERAS_TINY=1``): CI sizes, small zoo networks, seconds of training.
Every setting is also a ``kd-keras run simclr`` option, a config-file key and a
``--set`` key (:mod:`kd_keras.config`).

Example:

```python
from kd_keras.config import resolve_config
from kd_keras.studies.simclr_config import PRESETS, SimCLRConfig

config = resolve_config(SimCLRConfig, PRESETS, preset="smoke", sets=["simclr_epochs=3"])
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kd_keras.config import ScaleSettings
from kd_keras.runner import Flag, RunError, apply_demo_flags, demo_flags
from kd_keras.studies.data_checks import KNOWN_ABNORMAL_CLASSES, check_data_settings

__all__ = ["BASELINES", "FLAGS", "LAYOUTS", "METHODS", "PRESETS", "PSEUDO_LABEL_RULES", "SimCLRConfig", "SimCLRError",
           "adjust_settings"]

LAYOUTS = ("folders", "eyepacs", "messidor", "chexpert", "csv", "npz")
BASELINES = ("supervised", "supervised_full", "fixmatch", "mixmatch")
PSEUDO_LABEL_RULES = ("prevalence", "youden")
METHODS = {
    "supervised": "Supervised (fraction only)",
    "supervised_full": "Supervised, 100% of the labels (reference)",
    "fixmatch": "FixMatch",
    "mixmatch": "MixMatch",
    "teacher": "SimCLR teacher, fine-tuned",
    "student": "Proposed: SimCLR + KD student",
}


class SimCLRError(RunError):
    """A problem the user can fix (option, data); ``str(error)`` is one line."""


@dataclass
class SimCLRConfig(ScaleSettings):
    """Everything a run of study 003 depends on (paper values in brackets; ``config.yaml`` replays a run).

    Data:
        layout: how ``data`` is laid out: folders (one per class), eyepacs (trainLabels.csv), messidor (sheet as
            CSV), chexpert, csv, npz.
        data: the labeled source (folder, CSV or .npz); ``None`` with ``synthetic_patients > 0``: generated
            fundus photos (the demo).
        image_dir: where the CSV's images are (default: next to the CSV).
        task: auto (referable_dr for eyepacs/messidor, the classes as given otherwise) or a task name of
            kd_keras.data.tasks (any binary task; DR grades become referable DR).
        extra_tests: more test sets, each a messidor CSV as CSV[:IMAGE_DIR] or a class-folder root.
        synthetic_patients: patients of the generated fundus data when ``data`` is None (demo 60, smoke 12).
        synthetic_difficulty: lesion difficulty of the generated data, 0 (obvious) to 1.
        synthetic_test_patients: generated patients added to the test set only (no training label; demo 150, 300
            images: a test set whose CIs mean something; :func:`kd_keras.data.synthetic_fundus.test_only_fundus`).
        labeled_fraction: share of the training patients whose labels are used [0.02]; the rest is the pool.
        test_fraction: share of the patients held out as the test set.
        held_out_overlap: an extra test image that is also a training (labeled or pool) image is always
            refused; a pool image that is also a labeled or test image: ``refuse`` (default) or ``drop`` it.
        duplicate_labels: one image under two classes: ``refuse`` (default), ``keep`` or ``drop`` every copy.
        file_check: how every labeled and test file is checked before training: ``header`` or ``decode``;
            bad files are left out and reported (:mod:`kd_keras.studies.data_checks`).
        abnormal_classes: with ``task: normal_vs_abnormal`` on class folders, the folders counted as abnormal
            besides NORMAL (any other folder is refused by name).
        ignored_classes: class folders left out (reported).

    Models:
        image_size: input size in pixels [299].
        channels: image channels (1 or 3).
        teacher: zoo name of the teacher [ResNet50].
        teacher_weights: the teacher's initialisation before SimCLR: imagenet, a weights file, or none.
        student: zoo name of the student [densenet161: DenseNet-161, larger than the teacher; the demo and smoke
            presets use small networks].
        student_weights: the student's initialisation: imagenet, a weights file, or none [none: Keras has no
            ImageNet weights for DenseNet-161 and the paper does not state the student's initialisation].
        supervised_model: zoo name of the supervised baselines (``supervised``, ``supervised_full``); none: the
            teacher's architecture [inception_v3, as the paper's Table 1]. They start from ``teacher_weights``.
        fundus_crop: crop the black border of fundus photos before resizing.

    Training:
        simclr_epochs: SimCLR pretraining epochs [100; batch 64].
        simclr_lr: SimCLR learning rate (Adam; AdamW with ``simclr_weight_decay``) [1e-5].
        simclr_weight_decay: SimCLR weight decay (decoupled, AdamW; 0: plain Adam) [5e-4].
        simclr_batch_size: SimCLR batch size [64].
        simclr_rotation_degrees: a random rotation of up to this many degrees in front of SimCLR's views (0: none)
            [the paper shows "cropping and rotations" and states no angle; ours 15].
        simclr_temperature: NT-Xent temperature (not stated in 003; SimCLR's 0.1).
        finetune_epochs: teacher fine-tuning epochs on the labeled fraction.
        finetune_lr: teacher fine-tuning learning rate (Adam).
        student_epochs: student epochs on the pseudo-labels [200; batch 32].
        student_lr: student learning rate, pseudo-labels and fine-tuning (SGD, momentum 0.9) [1e-4].
        student_finetune_epochs: student fine-tuning epochs on the labeled fraction [100].
        pseudo_label_threshold: the teacher's operating point for pseudo-labels (class 1 where its positive-class
            probability is above it): a probability [0.5], ``prevalence`` (the pool gets the labeled set's share
            of positives) or ``youden`` (the threshold of the largest sensitivity + specificity - 1 on the labeled
            set, which the teacher was fine-tuned on).
        baseline_epochs: epochs of each baseline; FixMatch and MixMatch count one epoch as one pass over the pool.
        baseline_lr: learning rate of each baseline (Adam).
        supervised_epochs: epochs of the supervised baselines, passes over their labeled images (0: as
            ``baseline_epochs``); equal to ``finetune_epochs``, the supervised baseline and the teacher's fine-tune
            get the same training on the labels, while FixMatch and MixMatch keep ``baseline_epochs`` passes
            over the pool.
        baselines: which baselines to run: supervised (the labeled fraction), supervised_full (every training
            label: the 100% reference), fixmatch, mixmatch (the teacher's architecture, as the paper's Table 1).
        fixmatch_ratio: FixMatch's ``mu``, unlabeled examples per labeled one in a batch of ``batch_size`` labeled
            examples [7, FixMatch's].
        fixmatch_threshold: FixMatch's confidence threshold ``tau`` [0.95].
        fixmatch_lambda_u: FixMatch's unlabeled weight [1].
        mixmatch_ratio: MixMatch's unlabeled examples per labeled one in a batch [1: equal batches].
        mixmatch_lambda_u: MixMatch's unlabeled weight [100], ramped up linearly over
            ``mixmatch_rampup_steps`` optimizer steps [16,000, MixMatch's].
        mixmatch_temperature: MixMatch's sharpening temperature ``T`` [0.5].
        mixmatch_alpha: MixMatch's Beta(alpha, alpha) for MixUp [0.75]; ``K`` = 2 augmentations.
        batch_size: examples per batch of every training but SimCLR [32].
        bn_recalibration_batches: training batches over which BatchNorm statistics are recomputed at the end of
            each training (0: Keras' moving averages, as the paper).

    Evaluation:
        n_boot: patient-clustered bootstrap replicates of the AUC CIs (0: none).
        tsne_points: test images in the t-SNE figure.
        deterministic: deterministic TensorFlow ops (a resumed run ends with the same numbers).
        seed: the run's one seed.
    """

    preset: str = "paper"
    layout: str = "folders"
    data: str | None = None
    image_dir: str | None = None
    task: str = "auto"
    extra_tests: tuple[str, ...] = ()
    synthetic_patients: int = 0
    synthetic_difficulty: float = 0.5
    synthetic_test_patients: int = 0
    image_size: int = 299
    channels: int = 3
    labeled_fraction: float = 0.02
    test_fraction: float = 0.2
    held_out_overlap: str = "refuse"
    duplicate_labels: str = "refuse"
    file_check: str = "header"
    abnormal_classes: tuple[str, ...] = KNOWN_ABNORMAL_CLASSES
    ignored_classes: tuple[str, ...] = ()
    teacher: str = "resnet50"
    teacher_weights: str | None = "imagenet"
    student: str = "densenet121"
    student_weights: str | None = "imagenet"
    supervised_model: str | None = None
    simclr_epochs: int = 100
    simclr_lr: float = 1e-4
    simclr_temperature: float = 0.1
    simclr_weight_decay: float = 0.0
    simclr_batch_size: int = 32
    simclr_rotation_degrees: float = 0.0
    finetune_epochs: int = 30
    finetune_lr: float = 1e-4
    student_epochs: int = 50
    student_lr: float = 1e-4
    student_finetune_epochs: int = 30
    pseudo_label_threshold: float | str = 0.5
    baseline_epochs: int = 30
    baseline_lr: float = 1e-4
    supervised_epochs: int = 0
    baselines: tuple[str, ...] = ("supervised", "fixmatch", "mixmatch")
    fixmatch_ratio: int = 7
    fixmatch_threshold: float = 0.95
    fixmatch_lambda_u: float = 1.0
    mixmatch_ratio: int = 1
    mixmatch_lambda_u: float = 100.0
    mixmatch_rampup_steps: int = 16000
    mixmatch_temperature: float = 0.5
    mixmatch_alpha: float = 0.75
    batch_size: int = 32
    bn_recalibration_batches: int = 5
    fundus_crop: bool = True
    n_boot: int = 500
    tsne_points: int = 500
    deterministic: bool = True
    seed: int = 0

    def __post_init__(self):
        # "none" on the command line or in a file means no initial weights.
        for name in ("teacher_weights", "student_weights", "supervised_model"):
            value = getattr(self, name)
            if value is None or str(value).strip().lower() in ("none", ""):
                setattr(self, name, None)
        self.pseudo_label_threshold = _operating_point(self.pseudo_label_threshold)
        if self.preset not in PRESETS:
            raise SimCLRError(f"--preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.layout not in LAYOUTS:
            raise SimCLRError(f"--layout must be one of {LAYOUTS}, got {self.layout!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise SimCLRError(f"--baselines: unknown {unknown[0]!r}; choose from {', '.join(BASELINES)}")
        self.baselines = tuple(dict.fromkeys(self.baselines))
        for name in ("labeled_fraction", "test_fraction", "fixmatch_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise SimCLRError(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(self, name)}")
        if self.image_size < 32:
            raise SimCLRError(f"--image-size must be at least 32 (model contract), got {self.image_size}")
        if self.channels not in (1, 3):
            raise SimCLRError(f"--channels must be 1 or 3, got {self.channels}")
        epochs = ("simclr_epochs", "finetune_epochs", "student_epochs", "student_finetune_epochs", "baseline_epochs")
        if self.simclr_weight_decay < 0 or self.simclr_rotation_degrees < 0 or self.bn_recalibration_batches < 0:
            raise SimCLRError("--simclr-weight-decay, --simclr-rotation-degrees and --bn-recalibration-batches must "
                              "be >= 0")
        if min(self.fixmatch_lambda_u, self.mixmatch_lambda_u, self.mixmatch_rampup_steps) < 0 or min(
                self.mixmatch_temperature, self.mixmatch_alpha) <= 0:
            raise SimCLRError("--fixmatch-lambda-u, --mixmatch-lambda-u and --mixmatch-rampup-steps must be >= 0, "
                              "--mixmatch-temperature and --mixmatch-alpha > 0")
        for name in (*epochs, "batch_size", "simclr_batch_size", "fixmatch_ratio", "mixmatch_ratio"):
            if getattr(self, name) < 1:
                raise SimCLRError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if min(self.synthetic_patients, self.synthetic_test_patients, self.n_boot, self.supervised_epochs) < 0 or \
                self.tsne_points < 2:
            raise SimCLRError("--synthetic-patients, --synthetic-test-patients, --n-boot and --supervised-epochs must "
                              "be >= 0 and --tsne-points >= 2")
        check_data_settings(self, SimCLRError)


def _operating_point(value: Any) -> float | str:
    """``pseudo_label_threshold`` as a probability in (0, 1) or one of :data:`PSEUDO_LABEL_RULES` (one line
    otherwise)."""
    text = str(value).strip().lower()
    if text in PSEUDO_LABEL_RULES:
        return text
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not 0.0 < number < 1.0:
        raise SimCLRError(f"--pseudo-label-threshold must be a probability in (0, 1) or one of "
                          f"{', '.join(PSEUDO_LABEL_RULES)}, got {value!r}")
    return number


PRESETS: dict[str, dict[str, Any]] = {
    # Study 003's protocol on real data (the table in docs/paper_presets.md; give --data): 299 px, 2% labeled,
    # SimCLR ResNet50 (lr 1e-5, weight decay 5e-4, batch 64, 100 epochs, rotations), pseudo-labels at 0.5, the
    # DenseNet-161 student 200 epochs SGD 1e-4 batch 32, then 100 epochs on the labels; Inception-V3 supervised on
    # 2% and 100% of the labels, FixMatch (mu 7, tau 0.95, lambda_u 1) and MixMatch (equal batches, K 2, T 0.5,
    # alpha 0.75, lambda_u 100 ramped over 16k steps) on ResNet50; no BatchNorm recalibration.
    "paper": dict(image_size=299, channels=3, labeled_fraction=0.02, teacher="resnet50", teacher_weights="imagenet",
                  student="densenet161", student_weights=None, simclr_epochs=100, simclr_lr=1e-5,
                  simclr_weight_decay=5e-4, simclr_batch_size=64, simclr_rotation_degrees=15.0,
                  simclr_temperature=0.1, student_epochs=200, student_lr=1e-4, student_finetune_epochs=100,
                  pseudo_label_threshold=0.5, batch_size=32, baselines=BASELINES, supervised_model="inception_v3",
                  fixmatch_ratio=7, fixmatch_threshold=0.95, fixmatch_lambda_u=1.0, mixmatch_ratio=1,
                  mixmatch_lambda_u=100.0, mixmatch_rampup_steps=16000, mixmatch_temperature=0.5,
                  mixmatch_alpha=0.75, bn_recalibration_batches=0),
    # `--demo`: the old script's DEMO dict and DEMO_PATIENTS, and 150 test-only patients (300 more test images,
    # inference only: issue 21 - a 24-image test set could not show a difference between methods).
    "demo": dict(
        synthetic_patients=60, synthetic_test_patients=150, image_size=64, teacher_weights=None,
        student_weights=None, labeled_fraction=0.2,
        simclr_epochs=3, finetune_epochs=4, student_epochs=3, student_finetune_epochs=3, baseline_epochs=4,
        batch_size=16, simclr_lr=1e-3, finetune_lr=1e-3, student_lr=1e-2, baseline_lr=1e-3, n_boot=100,
        tsne_points=200,
        # A pool of ~77 images is smaller than FixMatch's mu B = 112. MixMatch keeps its own 16,000-step ramp-up:
        # over the demo's 20 steps its unlabeled weight ends at 0.125 (MixUp on the labeled images plus a weak
        # consistency term). Ramped up over 10 steps instead, lambda_u = 100 let the model's own guesses outweigh
        # the 20 labels and the demo's MixMatch ended below chance (40.6 AUC; docs/demos.md, docs/simclr_cxr.md).
        fixmatch_ratio=2,
    ),
    # `--demo --tiny` / KD_KERAS_TINY=1: the old TINY dict and TINY_PATIENTS; CI only. Small zoo networks instead
    # of ResNet50/DenseNet keep it short (the protocol and its plumbing are the same). SimCLR gets 2 epochs so
    # the resume test can kill a training between its two epochs.
    "smoke": dict(
        synthetic_patients=12, synthetic_test_patients=3, image_size=32, teacher_weights=None, student_weights=None,
        labeled_fraction=0.3,
        simclr_epochs=2, finetune_epochs=1, student_epochs=1, student_finetune_epochs=1, baseline_epochs=1,
        batch_size=8, simclr_lr=1e-3, finetune_lr=1e-3, student_lr=1e-2, baseline_lr=1e-3, n_boot=0,
        tsne_points=40, test_fraction=0.3, teacher="simple10", student="vgg16_d4", mixmatch_rampup_steps=2,
    ),
}


def adjust_settings(values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """``--demo`` is ``--preset demo``, ``--demo --tiny`` (or ``--demo`` with ``KD_KERAS_TINY=1``) ``--preset
    smoke`` (:func:`kd_keras.runner.apply_demo_flags`)."""
    return apply_demo_flags(values, explicit, PRESETS, SimCLRConfig.preset)


# The options of `python experiments/simclr_distill.py` that are not simply --<setting>.
FLAGS = (
    *demo_flags("generated fundus photographs"),
    Flag(("--extra-test",), {"action": "append", "metavar": "CSV[:IMAGE_DIR]|FOLDER",
                             "help": "another test set: messidor CSV as CSV[:IMAGE_DIR], or a class-folder root"},
         lambda v: {"extra_tests": tuple(v)}),
    Flag(("--baselines",), {"nargs": "*", "choices": BASELINES, "help": "baselines to run (none: no baselines)"},
         lambda v: {"baselines": tuple(v)}),
)
