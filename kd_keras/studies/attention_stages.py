"""The data and stages of study 004: the labeled set (or the synthetic demo set) split by patient, the teacher,
one training stage per student run (transfer-learning baseline, attention transfer per beta, per training-set
size), the selection of beta with the test evaluation, and the learning-curve summary.

Each stage takes the :class:`~kd_keras.runner.RunContext` of the run and returns the JSON-ready result the runner
records; every training goes through :func:`kd_keras.engine.train` with ``directory=ctx.run_dir(name)`` so a
killed run resumes mid-training, and saves its model as ``.keras`` (the path is in the recorded result).
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_keras.data.records import Records
from kd_keras.runner import RunContext, Stage
from kd_keras.studies.attention_config import ATConfig, StudyError, schedule

if TYPE_CHECKING:
    from kd_keras.studies.data_checks import DataChecks

__all__ = ["ATData", "curves_stage", "demo_records", "evaluation_stage", "load_labeled", "overfitting_delay",
           "prepare_data", "run_key", "student_stages", "teacher_stage"]

# Old runs used the stage adapter's defaults: BatchNorm statistics from 5 training batches, no training metrics.
BN_BATCHES = 5  # the default of ATConfig.bn_recalibration_batches (the demos)


# ------------------------------------------------------------------------------------------------ data


@dataclass
class ATData:
    """The run's records: everything, the patient-level split and each training-set size's subset."""

    records: Records
    train: Records
    val: Records
    test: Records
    trains: dict[float, Records] = field(default_factory=dict)
    checks: DataChecks | None = None

    def check_summary(self) -> dict[str, Any]:
        """What the checks before training did and every file they left out (``results.json``'s ``data``)."""
        return self.checks.summary() if self.checks is not None else {}


def load_labeled(config: ATConfig, checks: DataChecks | None = None) -> Records:
    """The labeled source of ``config.layout`` at ``config.data``, with ``config.task`` applied; with ``checks``
    (:mod:`kd_keras.studies.data_checks`), its class folders, files and labels checked first."""
    from kd_keras.data import sources
    from kd_keras.studies.data_checks import checked_labeled, labeled_task

    if checks is None:
        return sources.load_labeled(config.layout, config.data, image_dir=config.image_dir, task=config.task,
                                    uncertain=config.uncertain)
    records = sources.load_labeled(config.layout, config.data, image_dir=config.image_dir, task=None,
                                   uncertain=config.uncertain)
    records = checked_labeled(records, checks, str(config.data), layout=config.layout, task=config.task,
                              abnormal_classes=config.abnormal_classes, ignored_classes=config.ignored_classes)
    try:
        return labeled_task(records, config.layout, config.task)
    except (KeyError, ValueError) as error:
        raise StudyError(f"--task {config.task}: {str(error).strip(chr(39))}") from None


def demo_records(root: Path, config: ATConfig) -> Records:
    """Synthetic fundus photographs under ``root`` as a multi-class (grades), binary (referable) or CheXpert-style
    multi-label set (labels ``any_dr``, ``referable``, ``proliferative``; a borderline grade is written as -1,
    uncertain, and ignored by the loss)."""
    from kd_keras.data import sources, tasks
    from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus

    fundus = generate_synthetic_fundus(root / "fundus", SyntheticFundusConfig(
        patients=config.demo_patients, image_size=max(64, config.image_size), seed=config.seed, difficulty=0.5))
    records = sources.eyepacs(fundus / "trainLabels.csv", fundus / "train")
    if config.demo_task == "multiclass":
        return tasks.dr_grades(records)
    if config.demo_task == "binary":
        return tasks.referable_dr(records)
    sheet = root / "multilabel.csv"
    with open(sheet, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Path", "Patient", "any_dr", "referable", "proliferative"])
        for path, grade, patient in zip(records.paths, records.labels, records.patients, strict=True):
            grade = int(grade)
            writer.writerow([Path(path).relative_to(fundus).as_posix(), patient, int(grade >= 1),
                             -1 if grade == 2 else int(grade >= 2), -1 if grade == 3 else int(grade >= 4)])
    return sources.from_csv(sheet, fundus, file_column="Path", patient_column="Patient",
                            label_columns=["any_dr", "referable", "proliferative"], uncertain="ignore")


def prepare_data(ctx: RunContext) -> ATData:
    """Load (or generate) the records and split them by patient; no training."""
    from kd_keras.data.splits import split_by_patient
    from kd_keras.studies.data_checks import DataChecks

    config: ATConfig = ctx.config
    checks = DataChecks.of(config, ctx.say, StudyError)
    if config.demo_patients:
        records = checks.files(demo_records(ctx.out / "data", config))
    else:
        records = load_labeled(config, checks)
    parts = split_by_patient(records, fractions=config.split, seed=config.seed)
    # A test image that is also a training or validation image (a copy under another patient id) is refused.
    checks.held_out({"train": parts["train"], "validation": parts["val"], "test set 'test'": parts["test"]},
                    pool=None, tests=["test set 'test'"])
    checks.finish()
    data = ATData(records, parts["train"], parts["val"], parts["test"], checks=checks)
    for fraction in config.train_fractions:
        data.trains[fraction] = data.train if fraction >= 1.0 else split_by_patient(
            data.train, fractions=(fraction, 1.0 - fraction), names=("keep", "rest"), seed=config.seed)["keep"]
    return data


# ------------------------------------------------------------------------------------------------ helpers


def _augmenter(config: ATConfig):
    from kd_keras.data.augment import build_augmenter

    return build_augmenter(flip="horizontal", rotation_degrees=5.0, vertical_shift=0.05, brightness=0.05,
                           contrast=0.05, seed=config.seed)


def _make_stream(records: Records, config: ATConfig, seed: int):
    """A function building the training stream; a fresh augmenter per copy, so a resumed training (which builds
    the stream anew) sees the same augmentations as an uninterrupted one."""
    from kd_keras.engine import train_stream

    return lambda: train_stream(records, config.preprocess(), config.batch_size, augmenter=_augmenter(config),
                                seed=seed)


def _log(result, objective: dict, epochs: int) -> dict[str, Any]:
    """A training's JSON record: objective, per-epoch loss, the validation curve and the chosen epoch."""
    from kd_keras.engine import get_objective

    built = get_objective(objective)
    selected = result.monitor is not None and result.best_epoch > 0
    return {
        "objective": built.get_config() | {"name": built.name},
        "epochs": epochs,
        "loss": result.losses,
        "curve": [[int(step), score] for step, score in result.curve],
        "best_score": result.best_score if selected else None,
        "best_epoch": result.best_epoch - 1 if selected else None,
        "seconds": result.seconds,
    }


def _teacher(ctx: RunContext):
    """The teacher saved by the teacher stage (read once; the same weights in a resumed run)."""
    if "teacher" not in ctx.state:
        from kd_keras.models import load_model

        ctx.state["teacher"] = load_model(ctx.outputs["teacher"]["path"])
    return ctx.state["teacher"]


def _head(records: Records):
    from kd_keras.data.tasks import HeadSpec

    return HeadSpec.of(records)


# ------------------------------------------------------------------------------------------------ stages


def teacher_stage(ctx: RunContext) -> dict[str, Any]:
    """DenseNet-121 from ImageNet, a weights file or a ``.keras`` teacher; fine-tuned here when
    ``teacher_epochs > 0``; saved and evaluated on the test set."""
    from kd_keras.engine import evaluate_model, make_score_fn, seed_everything, train
    from kd_keras.models import build_model, load_model

    config: ATConfig = ctx.config
    data: ATData = ctx.data
    seed_everything(config.seed)
    head = _head(data.records)
    weights = config.teacher_weights_arg
    if weights and weights.endswith(".keras"):
        teacher = load_model(weights)
    else:
        teacher = build_model("densenet121", (config.image_size, config.image_size, config.channels),
                              num_classes=head.size, weights=weights)
    log = None
    if config.teacher_epochs > 0:
        objective = {"name": "hard_label", "task": head.loss_task}
        result = train(teacher, _make_stream(data.train, config, config.seed), epochs=config.teacher_epochs,
                       learning_rate=config.teacher_lr, objective=objective,
                       validation=make_score_fn(data.val, config.preprocess(), "auc"),
                       bn_batches=config.bn_recalibration_batches, metrics=None, directory=ctx.run_dir("teacher"))
        teacher, log = result.model, _log(result, objective, config.teacher_epochs)
    path = ctx.path("models", "teacher_densenet121.keras")
    teacher.save(path)
    test = evaluate_model(teacher, data.test, config.preprocess(), n_boot=config.n_boot)
    ctx.say(f"teacher: test AUC {test['auc']['estimate'] if isinstance(test['auc'], dict) else test['auc']:.3f}")
    return {"path": str(path), "log": log, "test": test}


def run_key(fraction: float, student: str, method: str, beta: float | None) -> str:
    """The stage name of one student run, e.g. ``f0.5-densenet40-at-beta100``."""
    return f"f{fraction:g}-{student}-" + ("tl" if method == "tl" else f"at-beta{beta:g}")


def _student_run(ctx: RunContext, fraction: float, name: str, method: str, beta: float | None,
                 seed: int) -> dict[str, Any]:
    """One student run: ``method`` ``"tl"`` (CE) or ``"at"`` (CE + L_AT/beta); best by validation AUC."""
    import keras

    from kd_keras.engine import make_score_fn, seed_everything, train
    from kd_keras.models import build_model

    config: ATConfig = ctx.config
    data: ATData = ctx.data
    train_records = data.trains[fraction]
    key = run_key(fraction, name, method, beta)
    teacher = _teacher(ctx) if method == "at" else None
    seed_everything(seed)
    head = _head(train_records)
    shape = (config.image_size, config.image_size, config.channels)
    if name == "densenet40":
        # Attention map at the teacher's resolution (1/32 of the input), as 8x8 at 256 px in the paper.
        student = build_model(name, shape, num_classes=head.size, backbone_weights=config.student_weights_arg,
                              attention_size=max(1, config.image_size // 32))
    else:
        student = build_model(name, shape, num_classes=head.size, weights=config.student_weights_arg)
    if method == "tl":
        objective = {"name": "hard_label", "task": head.loss_task}
    else:
        student_tap, teacher_tap = config.taps(name)
        objective = {"name": "attention_transfer", "student_taps": [student_tap],
                     "teacher_taps": [teacher_tap], "beta": beta, "variant": config.variant, "task": head.loss_task}
    steps = math.ceil(len(train_records) / config.batch_size)
    total = steps * config.epochs
    result = train(student, _make_stream(train_records, config, seed), epochs=config.epochs,
                   learning_rate=schedule(config, steps), objective=objective, teacher=teacher,
                   validation=make_score_fn(data.val, config.preprocess(), "auc"),
                   validate_every_steps=max(1, total // max(1, config.curve_points)),
                   bn_batches=config.bn_recalibration_batches, metrics=None, directory=ctx.run_dir(key))
    log = _log(result, objective, config.epochs)
    path = ctx.path("models", "runs", f"{key}.keras")
    result.model.save(path)
    ctx.say(f"size {len(train_records):5d} {name:11s} {method} beta={beta} val AUC {log['best_score']:.3f}")
    keras.backend.clear_session()
    ctx.state.pop("teacher", None)  # rebuilt after clear_session
    return {"fraction": fraction, "train": len(train_records), "student": name, "method": method, "beta": beta,
            "val_auc": log["best_score"], "log": log, "path": str(path)}


def student_stages(config: ATConfig) -> list[Stage]:
    """One stage per training-set size, student and method (TL, then AT per beta), in the study's order; each
    group of runs (one size and student) shares one seed, ``seed + the number of runs before the group``."""
    stages = []
    runs = [("tl", None)] + [("at", beta) for beta in config.betas]
    for f_index, fraction in enumerate(config.train_fractions):
        for s_index, name in enumerate(config.students):
            seed = config.seed + (f_index * len(config.students) + s_index) * len(runs)
            for method, beta in runs:
                stages.append(Stage(run_key(fraction, name, method, beta),
                                    lambda ctx, a=(fraction, name, method, beta, seed): _student_run(ctx, *a)))
    return stages


def evaluation_stage(ctx: RunContext) -> dict[str, Any]:
    """Per size and student: the beta with the best validation AUC; TL and that AT run on the test set (their
    models copied to ``models/<student>_<method>_f<fraction>.keras``)."""
    from kd_keras.engine import evaluate_model
    from kd_keras.models import load_model

    config: ATConfig = ctx.config
    runs = []
    for fraction in config.train_fractions:
        for name in config.students:
            done = [ctx.outputs[run_key(fraction, name, "tl", None)]]
            done += [ctx.outputs[run_key(fraction, name, "at", beta)] for beta in config.betas]
            best_at = max((e for e in done if e["method"] == "at"), key=lambda e: e["val_auc"], default=None)
            for entry in done:
                entry = {k: v for k, v in entry.items() if k != "path"}
                entry["selected"] = entry["method"] == "tl" or entry["beta"] == best_at["beta"]
                if entry["selected"]:
                    source = ctx.outputs[run_key(fraction, name, entry["method"], entry["beta"])]["path"]
                    entry["test"] = evaluate_model(load_model(source), ctx.data.test, config.preprocess(),
                                                   n_boot=config.n_boot)
                    shutil.copyfile(source, ctx.path("models", f"{name}_{entry['method']}_f{fraction:g}.keras"))
                runs.append(entry)
    return {"runs": runs}


def overfitting_delay(runs: list[dict]) -> dict[str, Any]:
    """Per selected run: the step of the best validation AUC and how far AUC fell after it (the regularising
    effect: AT should peak later and fall less than TL)."""
    out = {}
    for r in runs:
        curve = r["log"]["curve"]
        if not r.get("selected") or not curve:
            continue
        aucs = np.array([a for _, a in curve], dtype=float)
        best = int(np.argmax(aucs))
        out[f"{r['student']}/{r['method']}/f{r['fraction']:g}"] = {
            "best_step": int(curve[best][0]), "drop_after_best": float(aucs[best] - aucs[-1]),
            "sd_second_half": float(np.std(aucs[len(aucs) // 2:])),
        }
    return out


def curves_stage(ctx: RunContext) -> dict[str, Any]:
    """The learning curves' summary (the paper's Fig. 4): where each selected run peaked and how far it fell."""
    return {"overfitting": overfitting_delay(ctx.outputs["evaluation"]["runs"])}


def check_teacher_file(config: ATConfig) -> None:
    """A teacher file that does not exist is refused before anything is written."""
    weights = config.teacher_weights_arg
    if weights and weights != "imagenet" and not Path(weights).is_file():
        raise StudyError(f"--teacher-weights {weights}: no such file (imagenet, none, a weights file or a "
                         ".keras teacher)")
