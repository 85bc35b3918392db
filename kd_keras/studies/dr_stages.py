"""The training stages of study 000: the teacher of each fold, and each student x variant of each fold as a chain
of sub-steps (a) ``ul``, (b) ``kd``, (c) ``hard``.

Stage names: ``fold<k>/teacher`` and ``fold<k>/<student>/<variant>``; the sub-steps of a variant are recorded as
``fold<k>/<student>/<variant>/<step>`` (:meth:`~kd_keras.runner.RunContext.stage`), each training in its own
``ctx.run_dir(...)`` and saving the student there (``student.keras``) for the next sub-step. Every sub-step starts
from a fixed seed and from the saved file of the one before (in an uninterrupted run too), so a resumed run (a
finished sub-step skipped, a killed training continued from its checkpoint) ends with the same numbers.

Example:

```python
stages = [Stage("fold0/teacher", lambda ctx: teacher_stage(ctx, 0)),
          Stage("fold0/simple10/kd_ul", lambda ctx: student_stage(ctx, 0, "simple10", "kd_ul"))]
```
"""

from __future__ import annotations

from typing import Any

from kd_keras.runner import RunContext
from kd_keras.studies.dr_config import VARIANTS, DRKDConfig

__all__ = ["student_stage", "substep_name", "teacher_stage"]


def _fresh_start(config: DRKDConfig, seed: int) -> None:
    """A clean Keras session and every generator seeded with ``seed``: a (sub-)step then depends only on its
    inputs and ``seed``, whether the steps before it ran in this process or were read back."""
    import keras

    from kd_keras.engine import seed_everything

    keras.backend.clear_session(free_memory=True)
    seed_everything(seed, deterministic=config.deterministic)


def _make_stream(records, preprocess, config: DRKDConfig, seed: int):
    """A function building the training stream afresh (a resumed training needs identical copies): shuffled with
    ``seed``, row and column flips drawn by a new augmenter seeded with ``config.seed``."""
    from kd_keras.data.augment import build_augmenter
    from kd_keras.engine import train_stream

    def make():
        augmenter = build_augmenter(flip="horizontal_and_vertical", rotation_degrees=0.0, vertical_shift=0.0,
                                    brightness=0.0, contrast=0.0, seed=config.seed)
        return train_stream(records, preprocess, config.batch_size, augmenter=augmenter, seed=seed)

    return make


def _train(ctx: RunContext, name: str, model, make_stream, objective: dict, teacher, epochs: int,
           learning_rate: float) -> dict[str, Any]:
    """One training through :func:`kd_keras.engine.train`, checkpointed in ``ctx.run_dir(name)``; its log."""
    from kd_keras.engine import get_objective, train

    result = train(model, make_stream, epochs=epochs, learning_rate=learning_rate, optimizer="adam",
                   objective=objective, teacher=teacher, validation=None,
                   bn_batches=ctx.config.bn_recalibration_batches, metrics=None,
                   directory=ctx.run_dir(name))
    built = get_objective(objective)
    return {"objective": built.get_config() | {"name": built.name}, "epochs": epochs,
            "loss": [float(v) for v in result.losses], "seconds": round(result.seconds, 2)}


def _evaluate(model, test, config: DRKDConfig, fold: int) -> dict[str, Any]:
    from kd_keras.engine import evaluate_model

    return evaluate_model(model, test, config.preprocess(), n_boot=config.n_boot, seed=fold)


def _evaluated(model, ctx: RunContext, fold: int) -> dict[str, Any]:
    """``{"metrics": on the fold's test set}``, and ``"holdout_metrics"`` on the hold-out patients when the
    run keeps some out of every fold (``holdout_fraction``)."""
    config, data = ctx.config, ctx.data
    out = {"metrics": _evaluate(model, data.folds[fold][1], config, fold)}
    if data.holdout is not None:
        out["holdout_metrics"] = _evaluate(model, data.holdout, config, fold)
    return out


def teacher_stage(ctx: RunContext, fold: int) -> dict[str, Any]:
    """Step 1 of a fold: the (ImageNet-initialised) teacher fine-tuned on the fold's labeled images with hard
    labels; saved as ``models/fold<k>/teacher_<name>.keras`` and evaluated on the fold's test images (and on the
    hold-out patients, if any)."""
    from kd_keras.data.tasks import HeadSpec
    from kd_keras.models import build_model

    config = ctx.config
    train, test = ctx.data.folds[fold]
    _fresh_start(config, config.seed + fold)
    head = HeadSpec.of(train)
    teacher = build_model(config.teacher, (config.image_size, config.image_size, config.channels),
                          num_classes=head.size, weights=config.teacher_weights, dropout=config.dropout)
    name = f"fold{fold}/teacher"
    ctx.say(f"{name}: {config.teacher} (weights: {config.teacher_weights or 'random'}) on {len(train)} images, "
            f"{config.teacher_epochs} epochs")
    log = _train(ctx, name, teacher, _make_stream(train, config.preprocess(), config, config.seed),
                 {"name": "hard_label", "task": head.loss_task}, None, config.teacher_epochs, config.teacher_lr)
    path = ctx.path("models", f"fold{fold}", f"teacher_{config.teacher}.keras")
    teacher.save(path)
    return {"fold": fold, "train": len(train), "test": len(test), **_evaluated(teacher, ctx, fold),
            "log": log, "path": str(path)}


def substep_name(fold: int, student: str, variant: str, step: str) -> str:
    """The recorded name of one sub-step: ``fold<k>/<student>/<variant>/<step>``."""
    return f"fold{fold}/{student}/{variant}/{step}"


def _substep(ctx: RunContext, fold: int, student: str, variant: str, index: int, previous: str | None
             ) -> dict[str, Any]:
    """Sub-step ``index`` of a variant: the student built afresh (first) or loaded from ``previous`` (later),
    trained on the sub-step's data and objective, saved in its run folder."""
    from kd_keras.data.tasks import HeadSpec
    from kd_keras.models import build_model, load_model

    config, data = ctx.config, ctx.data
    train, _ = data.folds[fold]
    step = VARIANTS[variant][1][index]
    name = substep_name(fold, student, variant, step)
    seed = config.seed + 1000 * fold
    _fresh_start(config, seed + index)
    head = HeadSpec.of(train)
    if previous is None:
        model = build_model(student, (config.image_size, config.image_size, config.channels),
                            num_classes=head.size, dropout=config.dropout)
    else:
        model = load_model(previous)
    soft = {"name": "conditional", "temperature": config.temperature, "task": head.loss_task}
    epochs = config.step_epochs(variant, step)
    if step == "ul":  # (a) eq. 1: the random images (labeled = 0), the teacher's soft targets everywhere
        records, preprocess, objective = data.pool, config.preprocess(fundus_crop=False), soft
    elif step == "kd":  # (b) eq. 2: soft targets where the teacher is right, the label where it is wrong
        records, preprocess, objective = train, config.preprocess(), soft
        if config.kd_objective == "soft_targets":  # the alternative reading: soft targets on every image
            objective = {"name": "hinton", "alpha": 0.0, "temperature": config.temperature,
                         "task": head.loss_task}
    else:  # (c) hard labels
        records, preprocess, objective = train, config.preprocess(), {"name": "hard_label", "task": head.loss_task}
    teacher = load_model(ctx.outputs[f"fold{fold}/teacher"]["path"]) if step != "hard" else None
    log = _train(ctx, name, model, _make_stream(records, preprocess, config, seed), objective, teacher, epochs,
                 config.student_lr)
    path = ctx.run_dir(name) / "student.keras"
    model.save(path)
    return {"stage": step, **log, "path": str(path)}


def student_stage(ctx: RunContext, fold: int, student: str, variant: str) -> dict[str, Any]:
    """Step 2 for one student and variant of a fold: its sub-steps in order (each recorded), then the final
    student saved as ``models/fold<k>/<student>_<variant>.keras`` and evaluated on the fold's test images (and
    on the hold-out patients, if any)."""
    from kd_keras.engine.predict import estimate
    from kd_keras.models import load_model

    logs, previous = [], None
    for index, step in enumerate(VARIANTS[variant][1]):
        done = ctx.stage(substep_name(fold, student, variant, step),
                         lambda index=index, previous=previous: _substep(ctx, fold, student, variant, index,
                                                                         previous))
        logs.append(done)
        previous = done["path"]
    model = load_model(previous)
    path = ctx.path("models", f"fold{fold}", f"{student}_{variant}.keras")
    model.save(path)
    evaluated = _evaluated(model, ctx, fold)
    metrics = evaluated["metrics"]
    holdout = evaluated.get("holdout_metrics")
    on_holdout = f", hold-out auc {estimate(holdout, 'auc'):.3f}" if holdout else ""
    ctx.say(f"fold {fold} {student:9s} {variant:6s} acc {estimate(metrics, 'accuracy'):.3f} "
            f"auc {estimate(metrics, 'auc'):.3f}{on_holdout}")
    return {**evaluated, "stages": logs, "path": str(path)}
