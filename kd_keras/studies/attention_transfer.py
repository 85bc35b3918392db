"""Study 004: attention transfer from a DenseNet-121 teacher into DenseNet-121 and DenseNet-40 students.

The protocol (Akbarian et al.; CheXpert, ChestX-ray8, DR):

1. **Teacher**: DenseNet-121 from ImageNet, from a user checkpoint (their in-domain teacher), or trained here
   (``teacher_epochs > 0``: fine-tuned with hard labels on the training set).
2. **Students** ``densenet121`` and ``densenet40`` (ImageNet initialisation where available), each trained two
   ways on every training-set size of the sweep:

   - **TL** (transfer-learning baseline): cross-entropy only;
   - **AT** (attention transfer, eq. 2): ``CE + (1/beta) * L_AT`` between the teacher's 32-plane map of the last
     dense layer (``conv5_block16_2_conv``) and the student's (DenseNet-121: the same layer; DenseNet-40: its
     32-plane ``stage3``); ``beta`` from a grid, chosen by validation AUC (the paper searched 1..2000).

   Adam from 5e-5, halved every 16 epochs; the best epoch by validation AUC is kept (paper: max 128 epochs).
3. **Outputs**: test AUC (with patient-clustered CIs) per size, student and method; the beta grid; AUC against
   training step for TL and AT (the paper's Fig. 4, where AT delays over-fitting); AUC against training size.

Tasks: multi-label (CheXpert-style CSV; uncertain labels as the source's policy, ``-1`` ignored by the loss),
multi-class (DR grades) and binary. AUC: the mean of per-label AUCs (multi-label), macro one-vs-rest
(multi-class) or binary.

Example:

```python
from kd_keras.studies import attention_transfer as study

config = study.ATConfig(image_size=256, betas=(1, 30, 60, 1000))
results = study.run(records, config, out_dir="runs/at")
```
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import numpy as np

from kd_keras.data.augment import build_augmenter
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.data.splits import split_by_patient
from kd_keras.engine import seed_everything
from kd_keras.evaluation.report import format_ci, markdown_table
from kd_keras.models import build_model, load_model
from kd_keras.studies import common

TEACHER_TAP = "conv5_block16_2_conv"  # DenseNet-121: the last dense layer's 32-plane map (004 Fig. 2)
STUDENT_TAPS = {"densenet121": TEACHER_TAP, "densenet40": "stage3"}


@dataclasses.dataclass
class ATConfig:
    """Settings of study 004's protocol.

    Args:
        image_size, channels: input (the paper: 256x256; DenseNet-40's attention map is then 8x8).
        teacher_weights: ``"imagenet"``, a weights file, a ``.keras`` teacher, or ``None`` (random).
        teacher_epochs, teacher_lr: fine-tune the teacher here first (0: use it as given).
        students: ``densenet121`` and/or ``densenet40``.
        student_weights: ``"imagenet"`` or ``None`` (DenseNet-40 takes DenseNet-121's first blocks).
        betas: the grid of ``beta`` (``1/beta`` weighs ``L_AT``).
        train_fractions: the training-set-size sweep, fractions of the training patients.
        epochs, batch_size, learning_rate, halve_every_epochs: Adam from ``learning_rate`` halved every
            ``halve_every_epochs`` epochs (paper preset: 5e-5, 16, at most 128 epochs, batch 32).
        variant: ``"paper"`` (per-plane, eq. 1) or ``"zagoruyko"`` (authors' code).
        curve_points: validation points per run for the learning curves (AUC against step).
        split: patient-level train/val/test fractions.
    """

    image_size: int = 256
    channels: int = 3
    teacher_weights: str | None = "imagenet"
    teacher_epochs: int = 0
    teacher_lr: float = 1e-4
    students: tuple[str, ...] = ("densenet121", "densenet40")
    student_weights: str | None = "imagenet"
    betas: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
    train_fractions: tuple[float, ...] = (0.1, 0.5, 1.0)
    epochs: int = 128
    batch_size: int = 32
    learning_rate: float = 5e-5
    halve_every_epochs: int = 16
    variant: str = "paper"
    curve_points: int = 16
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    clahe: bool = False
    n_boot: int = 200
    seed: int = 0

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=(self.image_size, self.image_size), channels=self.channels,
                                clahe=self.clahe)


def schedule(config: ATConfig, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Adam's learning rate: ``learning_rate`` halved every ``halve_every_epochs`` epochs (staircase)."""
    return keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=max(1, config.halve_every_epochs * steps_per_epoch), decay_rate=0.5,
        staircase=True,
    )


def build_teacher(config: ATConfig, num_classes: int) -> keras.Model:
    """DenseNet-121 from ImageNet, a weights file, or a saved ``.keras`` teacher."""
    if config.teacher_weights and str(config.teacher_weights).endswith(".keras"):
        return load_model(config.teacher_weights)
    return build_model("densenet121", (config.image_size, config.image_size, config.channels),
                       num_classes=num_classes, weights=config.teacher_weights)


def build_student(name: str, config: ATConfig, num_classes: int) -> keras.Model:
    shape = (config.image_size, config.image_size, config.channels)
    if name == "densenet40":
        # Attention map at the teacher's resolution (1/32 of the input), as 8x8 at 256 px in the paper.
        return build_model(name, shape, num_classes=num_classes, backbone_weights=config.student_weights,
                           attention_size=max(1, config.image_size // 32))
    return build_model(name, shape, num_classes=num_classes, weights=config.student_weights)


def train_student(
    name: str, method: str, beta: float | None, teacher: keras.Model, train: Records, val: Records,
    config: ATConfig, augmenter: keras.Layer, seed: int,
) -> tuple[keras.Model, dict]:
    """One student run: ``method`` ``"tl"`` (CE) or ``"at"`` (CE + L_AT/beta); best epoch by validation AUC."""
    seed_everything(seed)
    student = build_student(name, config, common.head_size(train))
    steps = math.ceil(len(train) / config.batch_size)
    task = common.loss_task(train)
    if method == "tl":
        objective, stage_teacher = {"name": "hard_label", "task": task}, None
    else:
        objective = {"name": "attention_transfer", "student_taps": [STUDENT_TAPS[name]],
                     "teacher_taps": [TEACHER_TAP], "beta": beta, "variant": config.variant, "task": task}
        stage_teacher = teacher
    data = common.stream(train, config.preprocess(), config.batch_size, augmenter=augmenter, seed=seed)
    total = steps * config.epochs
    log = common.train_stage(
        student, data, objective=objective, teacher=stage_teacher, epochs=config.epochs,
        learning_rate=schedule(config, steps), validation=common.score_fn(val, config.preprocess(), "auc"),
        curve_every=max(1, total // max(1, config.curve_points)),
    )
    return student, log


def run(records: Records, config: ATConfig, out_dir: str | Path) -> dict:
    """Study 004 end to end; saves the teacher and the best students under ``out_dir/models``."""
    out_dir = Path(out_dir)
    models_dir = out_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    parts = split_by_patient(records, fractions=config.split, seed=config.seed)
    train_all, val, test = parts["train"], parts["val"], parts["test"]
    augmenter = build_augmenter(flip="horizontal", rotation_degrees=5.0, vertical_shift=0.05, brightness=0.05,
                                contrast=0.05, seed=config.seed)
    teacher = build_teacher(config, common.head_size(records))
    teacher_log = None
    if config.teacher_epochs > 0:
        data = common.stream(train_all, config.preprocess(), config.batch_size, augmenter=augmenter,
                             seed=config.seed)
        teacher_log = common.train_stage(
            teacher, data, objective={"name": "hard_label", "task": common.loss_task(records)},
            epochs=config.teacher_epochs, learning_rate=config.teacher_lr,
            validation=common.score_fn(val, config.preprocess(), "auc"),
        )
    teacher.save(models_dir / "teacher_densenet121.keras")
    results = {
        "split": {"train": len(train_all), "val": len(val), "test": len(test)},
        "teacher": {"log": teacher_log,
                    "test": common.evaluate(teacher, test, config.preprocess(), n_boot=config.n_boot)},
        "runs": [],
    }
    for fraction in config.train_fractions:
        if fraction >= 1.0:
            train = train_all
        else:
            train = split_by_patient(train_all, fractions=(fraction, 1.0 - fraction), names=("keep", "rest"),
                                     seed=config.seed)["keep"]
        for name in config.students:
            runs = [("tl", None)] + [("at", beta) for beta in config.betas]
            done = []
            for method, beta in runs:
                student, log = train_student(name, method, beta, teacher, train, val, config, augmenter,
                                             seed=config.seed + len(results["runs"]))
                entry = {"fraction": fraction, "train": len(train), "student": name, "method": method,
                         "beta": beta, "val_auc": log["best_score"], "log": log, "student_model": student}
                done.append(entry)
                print(f"size {len(train):5d} {name:11s} {method} beta={beta} val AUC {log['best_score']:.3f}",
                      flush=True)
            best_at = max((e for e in done if e["method"] == "at"), key=lambda e: e["val_auc"], default=None)
            for entry in done:
                entry["selected"] = entry["method"] == "tl" or entry is best_at
                model = entry.pop("student_model")
                if entry["selected"]:
                    entry["test"] = common.evaluate(model, test, config.preprocess(), n_boot=config.n_boot)
                    model.save(models_dir / f"{name}_{entry['method']}_f{fraction:g}.keras")
                results["runs"].append(entry)
            keras.backend.clear_session()
    return results


def selected(results: dict) -> list[dict]:
    return [r for r in results["runs"] if r.get("selected")]


def table_sizes(results: dict, config: ATConfig) -> str:
    """Table IV/V-like: test AUC [95% CI] per training size, student and method (TL; AT with the chosen beta)."""
    headers = ["train images"]
    for s in config.students:
        headers += [f"{s} TL", f"{s} AT (beta)"]
    rows = []
    for fraction in config.train_fractions:
        runs = [r for r in selected(results) if r["fraction"] == fraction]
        row = [str(runs[0]["train"]) if runs else "?"]
        for s in config.students:
            tl = next((r for r in runs if r["student"] == s and r["method"] == "tl"), None)
            at = next((r for r in runs if r["student"] == s and r["method"] == "at"), None)
            row.append(format_ci(tl["test"]["auc"]) if tl else "-")
            row.append(f"{format_ci(at['test']['auc'])} ({at['beta']:g})" if at else "-")
        rows.append(row)
    return markdown_table(headers, rows)


def table_betas(results: dict, config: ATConfig) -> str:
    """Validation AUC (best epoch) of every beta of the grid, per size and student."""
    headers = ["train images", "student", "TL", *[f"beta={b:g}" for b in config.betas]]
    rows = []
    for fraction in config.train_fractions:
        for s in config.students:
            runs = [r for r in results["runs"] if r["fraction"] == fraction and r["student"] == s]
            if not runs:
                continue
            cells = {("tl" if r["method"] == "tl" else r["beta"]): r["val_auc"] for r in runs}
            rows.append([runs[0]["train"], s, f"{100 * cells['tl']:.2f}",
                         *[f"{100 * cells[b]:.2f}" if b in cells else "-" for b in config.betas]])
    return markdown_table(headers, rows)


def plot_curves(results: dict, config: ATConfig, path: Path) -> Path:
    """Fig. 4: validation AUC against training step, TL vs AT (chosen beta), per student, smallest size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fraction = min(config.train_fractions)
    fig, axes = plt.subplots(1, len(config.students), figsize=(5 * len(config.students), 4), squeeze=False)
    for ax, s in zip(axes[0], config.students, strict=True):
        for r in selected(results):
            if r["fraction"] == fraction and r["student"] == s:
                steps, aucs = zip(*r["log"]["curve"], strict=True) if r["log"]["curve"] else ((), ())
                label = "TL" if r["method"] == "tl" else f"AT (beta={r['beta']:g})"
                ax.plot(steps, aucs, marker=".", label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation AUC")
        ax.set_title(f"{s}, {fraction:g} of the training set")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sizes(results: dict, config: ATConfig, path: Path) -> Path:
    """Test AUC against training-set size (the paper's Fig. 3), TL and AT per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in config.students:
        for method in ("tl", "at"):
            runs = sorted((r for r in selected(results) if r["student"] == s and r["method"] == method),
                          key=lambda r: r["train"])
            ax.plot([r["train"] for r in runs], [common.estimate(r["test"], "auc") for r in runs], marker="o",
                    label=f"{s} {method.upper()}")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def overfitting_delay(results: dict) -> dict:
    """Per selected run: the step of the best validation AUC and how far AUC fell after it (the regularising
    effect: AT should peak later and fall less than TL)."""
    out = {}
    for r in selected(results):
        curve = r["log"]["curve"]
        if not curve:
            continue
        aucs = np.array([a for _, a in curve])
        best = int(np.argmax(aucs))
        out[f"{r['student']}/{r['method']}/f{r['fraction']:g}"] = {
            "best_step": int(curve[best][0]), "drop_after_best": float(aucs[best] - aucs[-1]),
            "sd_second_half": float(np.std(aucs[len(aucs) // 2:])),
        }
    return out


def write_report(results: dict, config: ATConfig, out_dir: Path) -> str:
    """``report.md`` with the size/method table, the beta grid, the curves and the over-fitting figures."""
    curves = plot_curves(results, config, out_dir / "learning_curves.png")
    sizes = plot_sizes(results, config, out_dir / "auc_vs_size.png")
    delay = overfitting_delay(results)
    lines = [
        "# Study 004: attention transfer (DenseNet-121 teacher)",
        "",
        f"Split (patients) train/val/test: {results['split']}; {config.image_size} px; teacher weights "
        f"{config.teacher_weights or 'random'}, fine-tuned here for {config.teacher_epochs} epochs "
        f"(test AUC {format_ci(results['teacher']['test']['auc'])}); students {', '.join(config.students)}; "
        f"Adam {config.learning_rate:g} halved every {config.halve_every_epochs} epochs, {config.epochs} epochs, "
        f"best epoch by validation AUC; L_AT variant '{config.variant}'.",
        "",
        "## Test AUC (%) [95% CI] by training-set size (AT: beta chosen on validation)",
        "",
        table_sizes(results, config),
        "",
        "## Beta grid: best validation AUC (%)",
        "",
        table_betas(results, config),
        "",
        f"![learning curves]({curves.name}) ![AUC vs size]({sizes.name})",
        "",
        "## Regularising effect (validation curve): step of the best AUC, drop after it, SD in the second half",
        "",
        markdown_table(["run", "best step", "drop after best", "SD 2nd half"],
                       [[k, v["best_step"], f"{v['drop_after_best']:.3f}", f"{v['sd_second_half']:.3f}"]
                        for k, v in delay.items()]),
    ]
    return "\n".join(lines) + "\n"
