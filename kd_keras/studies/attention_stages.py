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
from kd_keras.studies.attention_config import ATConfig, StudyError, schedule, size_label

if TYPE_CHECKING:
    from kd_keras.studies.data_checks import DataChecks

__all__ = ["ATData", "curves_stage", "demo_records", "epoch_steps", "evaluation_stage", "load_labeled",
           "overfitting_delay", "prepare_data", "repeated_summary", "run_key", "student_stages", "subset_of_size",
           "teacher_stage"]

# Old runs used the stage adapter's defaults: BatchNorm statistics from 5 training batches, no training metrics.
BN_BATCHES = 5  # the default of ATConfig.bn_recalibration_batches (the demos)


# ------------------------------------------------------------------------------------------------ data


@dataclass
class ATData:
    """The run's records: everything, the patient-level split and each training-set size's subset (keyed by the
    size: a fraction, or an image count with ``train_sizes``)."""

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


def demo_records(root: Path, config: ATConfig, test_only: bool = False) -> Records:
    """Synthetic fundus photographs under ``root`` as a multi-class (grades), binary (referable) or CheXpert-style
    multi-label set (labels ``any_dr``, ``referable``, ``proliferative``; a borderline grade is written as -1,
    uncertain, and ignored by the loss); ``test_only``: the ``demo_test_patients`` test-only patients
    (:func:`kd_keras.data.synthetic_fundus.test_only_fundus`) in the same task."""
    from kd_keras.data import sources, tasks
    from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus, test_only_fundus

    generator = SyntheticFundusConfig(patients=config.demo_test_patients if test_only else config.demo_patients,
                                      image_size=max(64, config.image_size), seed=config.seed, difficulty=0.5)
    if test_only:
        fundus = root / "fundus_test"
        records = test_only_fundus(fundus, generator)
    else:
        fundus = generate_synthetic_fundus(root / "fundus", generator)
        records = sources.eyepacs(fundus / "trainLabels.csv", fundus / "train")
    if config.demo_task == "multiclass":
        return tasks.dr_grades(records)
    if config.demo_task == "binary":
        return tasks.referable_dr(records)
    sheet = root / ("multilabel_test.csv" if test_only else "multilabel.csv")
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
    if 0 < config.limit < len(records):  # a random subset of whole patients (a 2-core CPU: docs/attention_cxr.md)
        records = subset_of_size(records, config.limit, config.seed)
    parts = split_by_patient(records, fractions=config.split, seed=config.seed)
    if config.demo_patients and config.demo_test_patients:  # more test images, no more training labels
        parts["test"] = Records.concat(parts["test"], checks.files(demo_records(ctx.out / "data", config, True)))
    # A test image that is also a training or validation image (a copy under another patient id) is refused.
    checks.held_out({"train": parts["train"], "validation": parts["val"], "test set 'test'": parts["test"]},
                    pool=None, tests=["test set 'test'"])
    checks.finish()
    data = ATData(records, parts["train"], parts["val"], parts["test"], checks=checks)
    for size in config.train_sizes:
        data.trains[size] = subset_of_size(data.train, size, config.seed)
    for fraction in () if config.train_sizes else config.train_fractions:
        data.trains[fraction] = data.train if fraction >= 1.0 else split_by_patient(
            data.train, fractions=(fraction, 1.0 - fraction), names=("keep", "rest"), seed=config.seed)["keep"]
    return data


def subset_of_size(train: Records, size: int, seed: int) -> Records:
    """``size`` training images, whole patients in one seeded order (the last one cut to the count), so a smaller
    size is inside a larger one; a size larger than ``train`` is refused with one line.

    Example:
        >>> subset_of_size(train, 5000, seed=0)  # 004's CheXpert_5k
    """
    if size > len(train):
        raise StudyError(f"--train-sizes: {size} images asked for, but the training set holds {len(train)} after the "
                         f"patient-level split (validation and test held out); give smaller sizes or "
                         f"--train-fractions")
    patients = np.unique(train.patients)
    rank = dict(zip(np.random.default_rng(seed).permutation(patients), range(len(patients)), strict=True))
    order = np.argsort([rank[p] for p in train.patients], kind="stable")
    return train.subset(np.sort(order[:size]))


# ------------------------------------------------------------------------------------------------ helpers


def _augmenter(config: ATConfig):
    from kd_keras.data.augment import build_augmenter

    if config.augmentation == "paper":  # 004: +-15 degrees, horizontal flip (the centre crop is preprocessing)
        return build_augmenter(flip="horizontal", rotation_degrees=15.0, vertical_shift=0.0, brightness=0.0,
                               contrast=0.0, seed=config.seed)
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
                       validation=make_score_fn(data.val, config.preprocess(), config.monitor(data.records.task)),
                       bn_batches=config.bn_recalibration_batches, metrics=None, directory=ctx.run_dir("teacher"))
        teacher, log = result.model, _log(result, objective, config.teacher_epochs)
    path = ctx.path("models", "teacher_densenet121.keras")
    teacher.save(path)
    test = evaluate_model(teacher, data.test, config.preprocess(), n_boot=config.n_boot)
    ctx.say(f"teacher: test AUC {test['auc']['estimate'] if isinstance(test['auc'], dict) else test['auc']:.3f}")
    return {"path": str(path), "log": log, "test": test}


def run_key(fraction: float, student: str, method: str, beta: float | None, repetition: int = 0) -> str:
    """The stage name of one student run, e.g. ``f0.5-densenet40-at-beta100``, ``n5000-densenet40-tl-rep2`` (the
    first repetition has no suffix)."""
    return (f"{size_label(fraction)}-{student}-" + ("tl" if method == "tl" else f"at-beta{beta:g}")
            + (f"-rep{repetition + 1}" if repetition else ""))


def epoch_steps(images: int, config: ATConfig) -> int:
    """Batches in one epoch of a student run on ``images`` training images: one pass, or ``min_steps_per_epoch``
    when that is more (the stream cycles on).

    Example:
        >>> epoch_steps(13, ATConfig(batch_size=32, min_steps_per_epoch=10))  # 1% of 1,300 images
        10
    """
    return max(math.ceil(images / config.batch_size), config.min_steps_per_epoch)


def _student_run(ctx: RunContext, fraction: float, name: str, method: str, beta: float | None,
                 seed: int, repetition: int = 0) -> dict[str, Any]:
    """One student run: ``method`` ``"tl"`` (CE) or ``"at"`` (CE + L_AT/beta); the best validation score kept
    (``selection_metric``, every epoch or ``curve_points`` times)."""
    import keras

    from kd_keras.engine import make_score_fn, seed_everything, train
    from kd_keras.models import build_model

    config: ATConfig = ctx.config
    data: ATData = ctx.data
    train_records = data.trains[fraction]
    key = run_key(fraction, name, method, beta, repetition)
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
    one_pass = math.ceil(len(train_records) / config.batch_size)
    steps = epoch_steps(len(train_records), config)
    total = steps * config.epochs
    every = 0 if config.validate_every == "epoch" else max(1, total // max(1, config.curve_points))
    monitor = config.monitor(train_records.task)
    result = train(student, _make_stream(train_records, config, seed), epochs=config.epochs,
                   steps_per_epoch=steps if steps > one_pass else None,  # None: one pass, counted by the engine
                   learning_rate=schedule(config, steps), objective=objective, teacher=teacher,
                   validation=make_score_fn(data.val, config.preprocess(), monitor), validate_every_steps=every,
                   bn_batches=config.bn_recalibration_batches, metrics=None, directory=ctx.run_dir(key))
    log = _log(result, objective, config.epochs)
    path = ctx.path("models", "runs", f"{key}.keras")
    result.model.save(path)
    ctx.say(f"size {len(train_records):5d} {name:11s} {method} beta={beta} rep {repetition + 1} val {monitor} "
            f"{log['best_score']:.3f}")
    keras.backend.clear_session()
    ctx.state.pop("teacher", None)  # rebuilt after clear_session
    # "val_auc" is the selection score (AUC, or weighted F1 with selection_metric; "val_metric" says which).
    return {"fraction": None if isinstance(fraction, int) else fraction, "size": fraction,
            "train": len(train_records), "student": name, "method": method, "beta": beta, "repetition": repetition,
            "steps_per_epoch": steps, "val_auc": log["best_score"], "val_metric": monitor, "log": log,
            "path": str(path)}


def student_stages(config: ATConfig) -> list[Stage]:
    """One stage per repetition, training-set size, student and method (TL, then AT per beta), in the study's
    order; each group of runs (one size and student) shares one seed, ``seed + the number of runs before the
    group``, and repetition ``r`` adds ``r`` times the number of runs of one repetition."""
    stages = []
    runs = [("tl", None)] + [("at", beta) for beta in config.betas]
    sizes = config.sizes()
    per_repetition = len(sizes) * len(config.students) * len(runs)
    for repetition in range(config.repetitions):
        for f_index, fraction in enumerate(sizes):
            for s_index, name in enumerate(config.students):
                seed = (config.seed + (f_index * len(config.students) + s_index) * len(runs)
                        + repetition * per_repetition)
                for method, beta in runs:
                    args = (fraction, name, method, beta, seed, repetition)
                    stages.append(Stage(run_key(fraction, name, method, beta, repetition),
                                        lambda ctx, a=args: _student_run(ctx, *a)))
    return stages


def evaluation_stage(ctx: RunContext) -> dict[str, Any]:
    """Per size and student: the beta with the best validation score (its mean over the repetitions); TL and that
    AT run of every repetition on the test set and on its own training images (``train_auc``, no bootstrap: with
    ``val_auc``, the train-validation gap), their models copied to
    ``models/<student>_<method>_<size>[_rep<r>].keras``; with repetitions, the mean and spread of each test
    metric (:func:`repeated_summary`)."""
    from kd_keras.engine import evaluate_model
    from kd_keras.engine.predict import estimate
    from kd_keras.models import load_model

    config: ATConfig = ctx.config
    runs = []
    for fraction in config.sizes():
        for name in config.students:
            done = [ctx.outputs[run_key(fraction, name, method, beta, r)] for r in range(config.repetitions)
                    for method, beta in [("tl", None)] + [("at", b) for b in config.betas]]
            mean_val = {b: float(np.mean([e["val_auc"] for e in done if e["beta"] == b])) for b in config.betas}
            best_beta = max(config.betas, key=lambda b: mean_val[b])  # ties keep the first of the grid
            for entry in done:
                entry = {k: v for k, v in entry.items() if k != "path"}
                entry["selected"] = entry["method"] == "tl" or entry["beta"] == best_beta
                if entry["selected"]:
                    rep = entry.get("repetition", 0)
                    source = ctx.outputs[run_key(fraction, name, entry["method"], entry["beta"], rep)]["path"]
                    model = load_model(source)
                    entry["test"] = evaluate_model(model, ctx.data.test, config.preprocess(), n_boot=config.n_boot)
                    fit = estimate(evaluate_model(model, ctx.data.trains[fraction], config.preprocess(), n_boot=0),
                                   "auc")
                    entry["train_auc"] = fit if math.isfinite(fit) else None  # None: one class only
                    suffix = f"_rep{rep + 1}" if rep else ""
                    shutil.copyfile(source, ctx.path("models", f"{name}_{entry['method']}_{size_label(fraction)}"
                                                                f"{suffix}.keras"))
                runs.append(entry)
    return {"runs": runs, "repeated": repeated_summary(runs)}


def repeated_summary(runs: list[dict]) -> list[dict[str, Any]]:
    """Per (size, student, method) of the selected runs: the mean, sample SD and count over the repetitions of
    each test metric's point estimate (AUC; accuracy and weighted F1 where the task has them).

    Example:
        >>> repeated_summary(evaluation["runs"])[0]
        {'size': 0.5, 'student': 'densenet40', 'method': 'tl', 'beta': None, 'n': 3, 'auc': {'mean': 0.81, ...}}
    """
    from kd_keras.engine.predict import estimate

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("selected") and "test" in r:
            groups.setdefault((r.get("size", r["fraction"]), r["student"], r["method"]), []).append(r)
    summary = []
    for (size, student, method), members in groups.items():
        row: dict[str, Any] = {"size": size, "student": student, "method": method, "beta": members[0]["beta"],
                               "n": len(members)}
        for metric in ("auc", "accuracy", "weighted_f1"):
            values = np.array([estimate(m["test"], metric) for m in members], float)
            if np.isfinite(values).all():
                row[metric] = {"mean": float(values.mean()),
                               "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                               "values": values.tolist()}
        summary.append(row)
    return summary


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
        rep = f"/rep{r['repetition'] + 1}" if r.get("repetition") else ""
        out[f"{r['student']}/{r['method']}/{size_label(r.get('size', r['fraction']))}{rep}"] = {
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
