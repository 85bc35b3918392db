"""Study 000: knowledge distillation with transfer learning and unlabeled random images (diabetic retinopathy).

The protocol, per fold of a 5-fold patient-level cross-validation:

1. **Teacher**: VGG16 initialised from ImageNet (when available) and fine-tuned on the fold's labeled images
   with hard labels (per-channel CLAHE; row and column flips).
2. **Students** (``simple10``, ``vgg16_d2``, ``vgg16_d4``, trained from scratch), four variants (Tables 1-2):

   =================  =============================================================================
   variant            stages
   =================  =============================================================================
   Base               (c) hard labels on the labeled images
   Base+KD            (b) teacher soft labels on the labeled images (conditional, eq. 2), then (c)
   Base+UL            (a) distillation on unlabeled random images (eq. 1), then (c)
   Base+KD+UL         (a), (b), (c): the paper's proposed three-step training
   =================  =============================================================================

   (a) uses eq. 1: the student matches the teacher's softmax on natural images unrelated to the task (the
   "transfer learning" of the student); (b) uses eq. 2 (:func:`kd_keras.engine.losses.
   conditional_distillation_loss`): soft targets where the teacher predicts the label, the hard label where it
   does not; (c) is plain cross-entropy. Every variant gets the same (c) epochs, so Base is the student trained
   as it would be without a teacher; the others add stages in front.
3. **Tables**: test accuracy and AUC per student and variant, mean and SD over folds (the shape of Tables 1 and
   2), plus the teacher's.

What the paper leaves open and we choose (stated in the report): the optimiser (Adam), learning rates, epochs
per stage (the paper trains 300 epochs in all), the softmax temperature (1, the paper's formula), whether
the random images get CLAHE (yes: the student then sees one input distribution), and a binary AUC on
two-class tasks or the macro one-vs-rest AUC on DR grades.

Example:

```python
from kd_keras.studies import dr_kd_unlabeled as study

config = study.DRKDConfig(image_size=300, folds=5)
results = study.run(records, pool_records, config, out_dir="runs/dr_kd")
```
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from kd_keras.data.augment import build_augmenter
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.data.splits import kfold_by_patient
from kd_keras.engine import seed_everything
from kd_keras.evaluation.report import markdown_table
from kd_keras.models import build_model
from kd_keras.studies import common

VARIANTS = {
    "base": ("Base model", ("hard",)),
    "kd": ("Base model+KD", ("kd", "hard")),
    "ul": ("Base model+UL", ("ul", "hard")),
    "kd_ul": ("Base model+KD+UL", ("ul", "kd", "hard")),
}
STUDENT_TITLES = {"simple10": "Simple10", "vgg16_d2": "VGG/2", "vgg16_d4": "VGG/4"}
# Tables 1 and 2 of the paper (percent), for the report's side-by-side.
PAPER_ACCURACY = {"base": (72.11, 73.58, 73.37), "kd": (73.89, 75.37, 76.84),
                  "ul": (76.95, 79.58, 78.63), "kd_ul": (79.16, 82.32, 79.89)}
PAPER_AUC = {"base": (78.52, 80.18, 78.60), "kd": (79.49, 81.59, 83.63),
             "ul": (83.34, 87.09, 85.17), "kd_ul": (85.95, 88.92, 86.65)}


@dataclasses.dataclass
class DRKDConfig:
    """Settings of study 000's protocol.

    Args:
        image_size: square input side (the paper: 300).
        channels: 3 (RGB fundus photographs) or 1.
        students: student names from the zoo.
        variants: keys of :data:`VARIANTS`.
        folds: patient-level cross-validation folds (the paper: 5); ``max_folds`` runs only the first ones.
        teacher, teacher_weights: the teacher and its initialisation (``"imagenet"``, a file, or ``None``).
        teacher_epochs, teacher_lr: teacher fine-tuning.
        ul_epochs, kd_epochs, hard_epochs: epochs of stages (a), (b), (c).
        student_lr: Adam learning rate of every student stage.
        temperature: softmax temperature of the soft targets (1 = the paper's eqs. 1-2).
        batch_size: batch size.
        clahe, fundus_crop: per-channel CLAHE; crop fundus photographs to their circle.
        dropout: dropout before the students' classifier.
        n_boot: bootstrap replicates for the per-fold CIs (0: none).
        seed: one seed for splits, initialisation and augmentation.
    """

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
    student_lr: float = 1e-3
    temperature: float = 1.0
    batch_size: int = 32
    clahe: bool = True
    fundus_crop: bool = True
    dropout: float = 0.5
    n_boot: int = 200
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")

    def preprocess(self, fundus_crop: bool | None = None) -> PreprocessConfig:
        return PreprocessConfig(
            image_size=(self.image_size, self.image_size),
            channels=self.channels,
            clahe=self.clahe,
            fundus_crop=self.fundus_crop if fundus_crop is None else fundus_crop,
        )


def train_teacher(train: Records, config: DRKDConfig, augmenter: keras.Layer) -> tuple[keras.Model, dict]:
    """Step 1: the ImageNet-initialised teacher fine-tuned on the labeled images with hard labels."""
    teacher = build_model(
        config.teacher,
        (config.image_size, config.image_size, config.channels),
        num_classes=common.head_size(train),
        weights=config.teacher_weights,
        dropout=config.dropout,
    )
    data = common.stream(train, config.preprocess(), config.batch_size, augmenter=augmenter, seed=config.seed)
    log = common.train_stage(
        teacher, data, objective={"name": "hard_label", "task": common.loss_task(train)},
        epochs=config.teacher_epochs, learning_rate=config.teacher_lr,
    )
    return teacher, log


def train_student(
    name: str,
    variant: str,
    teacher: keras.Model,
    train: Records,
    pool: Records,
    config: DRKDConfig,
    augmenter: keras.Layer,
    seed: int,
) -> tuple[keras.Model, list[dict]]:
    """Step 2 for one student and one variant: the stages of :data:`VARIANTS` in order."""
    seed_everything(seed)
    student = build_model(
        name, (config.image_size, config.image_size, config.channels),
        num_classes=common.head_size(train), dropout=config.dropout,
    )
    task = common.loss_task(train)
    soft = {"name": "conditional", "temperature": config.temperature, "task": task}
    stages = {
        # (a) eq. 1: unlabeled random images (labeled = 0), the teacher's soft targets everywhere.
        "ul": (pool, config.preprocess(fundus_crop=False), soft, teacher, config.ul_epochs),
        # (b) eq. 2: labeled images, soft targets where the teacher is right, the label where it is wrong.
        "kd": (train, config.preprocess(), soft, teacher, config.kd_epochs),
        # (c) hard labels.
        "hard": (train, config.preprocess(), {"name": "hard_label", "task": task}, None, config.hard_epochs),
    }
    logs = []
    for stage in VARIANTS[variant][1]:
        records, preprocess, objective, stage_teacher, epochs = stages[stage]
        data = common.stream(records, preprocess, config.batch_size, augmenter=augmenter, seed=seed)
        log = common.train_stage(
            student, data, objective=objective, teacher=stage_teacher, epochs=epochs,
            learning_rate=config.student_lr,
        )
        logs.append({"stage": stage, **log})
    return student, logs


def run(labeled: Records, pool: Records, config: DRKDConfig, out_dir: str | Path) -> dict:
    """Study 000 end to end: k-fold CV of the teacher and every student variant; writes models and returns the
    results (the caller writes ``results.json`` and the report with :func:`write_outputs`).

    Args:
        labeled: the DR images with their task applied (``kd_keras.data.tasks``).
        pool: the unlabeled random images (``sources.from_folder(natural_image_pool(...))``).
        config: :class:`DRKDConfig`.
        out_dir: models go to ``out_dir/models/fold<k>/``.
    """
    out_dir = Path(out_dir)
    seed_everything(config.seed)
    augmenter = build_augmenter(
        flip="horizontal_and_vertical", rotation_degrees=0.0, vertical_shift=0.0, brightness=0.0, contrast=0.0,
        seed=config.seed,
    )
    folds = kfold_by_patient(labeled, k=config.folds, seed=config.seed)[: config.max_folds or config.folds]
    per_fold = []
    for k, (train, test) in enumerate(folds):
        fold_dir = out_dir / "models" / f"fold{k}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed + k)
        teacher, teacher_log = train_teacher(train, config, augmenter)
        teacher_metrics = common.evaluate(teacher, test, config.preprocess(), n_boot=config.n_boot, seed=k)
        if k == 0:  # one teacher file is enough to inspect; every fold's students are kept
            teacher.save(fold_dir / f"teacher_{config.teacher}.keras")
        fold = {"fold": k, "train": len(train), "test": len(test),
                "teacher": {"metrics": teacher_metrics, "log": teacher_log}, "students": {}}
        for name in config.students:
            for variant in config.variants:
                student, logs = train_student(name, variant, teacher, train, pool, config, augmenter,
                                              seed=config.seed + 1000 * k)
                metrics = common.evaluate(student, test, config.preprocess(), n_boot=config.n_boot, seed=k)
                student.save(fold_dir / f"{name}_{variant}.keras")
                fold["students"][f"{name}/{variant}"] = {"metrics": metrics, "stages": logs}
                print(f"fold {k} {name:9s} {variant:6s} acc {common.estimate(metrics, 'accuracy'):.3f} "
                      f"auc {common.estimate(metrics, 'auc'):.3f}", flush=True)
        per_fold.append(fold)
        keras.backend.clear_session()
    return {"folds": per_fold, "summary": summarise(per_fold, config)}


def summarise(per_fold: list[dict], config: DRKDConfig) -> dict:
    """Mean and SD over folds of accuracy and AUC, per student and variant, and of the teacher."""
    summary = {"teacher": {m: common.mean_sd([common.estimate(f["teacher"]["metrics"], m) for f in per_fold])
                           for m in ("accuracy", "auc")}}
    for name in config.students:
        for variant in config.variants:
            key = f"{name}/{variant}"
            summary[key] = {
                m: common.mean_sd([common.estimate(f["students"][key]["metrics"], m) for f in per_fold])
                for m in ("accuracy", "auc")
            }
    return summary


def table(results: dict, config: DRKDConfig, metric: str) -> str:
    """Table 1 (``metric="accuracy"``) or Table 2 (``"auc"``): rows are training methods, columns students,
    mean ± SD over folds in percent; the best of each column in bold."""
    summary = results["summary"]
    headers = ["Training method", *[STUDENT_TITLES.get(s, s) for s in config.students]]
    best = {s: max(summary[f"{s}/{v}"][metric]["mean"] for v in config.variants) for s in config.students}
    rows = []
    for variant in config.variants:
        cells = []
        for s in config.students:
            cell = summary[f"{s}/{variant}"][metric]
            text = common.pct(cell)
            cells.append(f"**{text}**" if cell["mean"] == best[s] else text)
        rows.append([VARIANTS[variant][0], *cells])
    rows.append([f"Teacher ({config.teacher})", *[common.pct(summary["teacher"][metric])] * len(config.students)])
    return markdown_table(headers, rows)


def ordering(results: dict, config: DRKDConfig, metric: str = "accuracy") -> dict[str, bool]:
    """Whether Base < KD < UL < KD+UL (mean over folds) holds per student."""
    summary = results["summary"]
    out = {}
    for s in config.students:
        means = [summary[f"{s}/{v}"][metric]["mean"] for v in ("base", "kd", "ul", "kd_ul")
                 if f"{s}/{v}" in summary]
        out[s] = len(means) == 4 and all(a < b for a, b in zip(means, means[1:], strict=False))
    return out


def plot_methods(results: dict, config: DRKDConfig, path: Path) -> Path:
    """Fig. 3-like bars: accuracy of each training method per student (mean ± SD over folds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(config.variants)
    x = np.arange(len(config.students))
    for ax, metric in zip(axes, ("accuracy", "auc"), strict=True):
        for i, variant in enumerate(config.variants):
            means = [100 * summary[f"{s}/{variant}"][metric]["mean"] for s in config.students]
            sds = [100 * summary[f"{s}/{variant}"][metric]["sd"] for s in config.students]
            ax.bar(x + i * width, means, width, yerr=sds, label=VARIANTS[variant][0], capsize=2)
        ax.axhline(100 * summary["teacher"][metric]["mean"], color="k", ls="--", lw=1, label="teacher")
        ax.set_xticks(x + width * (len(config.variants) - 1) / 2)
        ax.set_xticklabels([STUDENT_TITLES.get(s, s) for s in config.students])
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"Test {metric}, mean over folds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, config: DRKDConfig, out_dir: Path) -> str:
    """``report.md``: the two tables, the paper's numbers, the ordering check and the choices we made."""
    plot = plot_methods(results, config, out_dir / "methods.png")
    folds = len(results["folds"])
    order = ordering(results, config)
    lines = [
        "# Study 000: knowledge distillation with unlabeled random images",
        "",
        f"{folds} fold(s) of a {config.folds}-fold patient-level cross-validation; "
        f"{config.image_size}x{config.image_size} px; teacher {config.teacher} "
        f"(weights: {config.teacher_weights or 'random'}); epochs teacher {config.teacher_epochs}, "
        f"(a) UL {config.ul_epochs}, (b) KD {config.kd_epochs}, (c) hard {config.hard_epochs}.",
        "",
        "## Table 1: accuracy (%), mean ± SD over folds",
        "",
        table(results, config, "accuracy"),
        "",
        "## Table 2: AUC (%), mean ± SD over folds",
        "",
        table(results, config, "auc"),
        "",
        f"![methods]({plot.name})",
        "",
        "Ordering Base < KD < UL < KD+UL (accuracy): "
        + ", ".join(f"{STUDENT_TITLES.get(s, s)} {'holds' if ok else 'does not hold'}" for s, ok in order.items()),
        "",
        "Paper (Messidor, 300x300, 5 folds), accuracy / AUC:",
        "",
        markdown_table(
            ["Training method", "Simple10", "VGG/2", "VGG/4"],
            [[VARIANTS[v][0], *[f"{a:.2f} / {b:.2f}" for a, b in zip(PAPER_ACCURACY[v], PAPER_AUC[v], strict=True)]]
             for v in VARIANTS],
        ),
        "",
        "Choices the paper leaves open: Adam; the same stage-(c) epochs for every variant; temperature "
        f"{config.temperature}; CLAHE {'on' if config.clahe else 'off'} for both the retina and the random images; "
        "AUC binary on two-class tasks, macro one-vs-rest otherwise.",
    ]
    return "\n".join(lines) + "\n"
