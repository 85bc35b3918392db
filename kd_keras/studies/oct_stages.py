"""The training stages of study 002: teacher, pseudo-labels, students (baseline, student-teacher runs per
objective and pool fraction, soft targets) and the clinical evaluation.

Each function takes the :class:`~kd_keras.runner.RunContext` of the run and returns the JSON-ready result that
the runner records; trainings checkpoint under ``ctx.run_dir(...)`` so a killed run resumes mid-training.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.runner import RunContext
from kd_keras.studies.oct_config import OCTStudyConfig, StudyError

__all__ = ["evaluation_stage", "pseudo_label_stage", "student_stage", "teacher_pretraining_stage", "teacher_stage"]


# ------------------------------------------------------------------------------------------------ helpers


def seed_once(ctx: RunContext) -> None:
    """One seed for everything, and deterministic ops (a resumed training then ends as an uninterrupted one);
    called once the options are known to be usable, so a refused run leaves the process as it was."""
    if not ctx.state.get("seeded"):
        from kd_keras.engine.callbacks import seed_everything

        seed_everything(ctx.config.seed, deterministic=ctx.config.deterministic)
        ctx.state["seeded"] = True


def student_preprocess(config: OCTStudyConfig):
    from kd_keras.data.preprocess import PreprocessConfig

    return PreprocessConfig((config.image_size, config.image_size), channels=config.student_channels,
                            geometry=config.geometry)


def teacher_preprocess(ctx: RunContext):
    from kd_keras.data.preprocess import PreprocessConfig

    shape = ctx.outputs["teacher"]["input_shape"]
    return PreprocessConfig(tuple(shape[:2]), channels=shape[2], geometry=ctx.config.geometry)


def progress_callback(total_steps: int, description: str, enabled: bool):
    """A Keras callback drawing a tqdm bar over a run's steps, with the validation scores as they come."""
    import keras

    class _Bar(keras.callbacks.Callback):
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


def _tensorboard(ctx: RunContext, *parts: str):
    from kd_keras.engine.training import EpochSummaries

    return EpochSummaries(ctx.out.joinpath("tensorboard", *parts))


def _augmenter(config: OCTStudyConfig, seed: int, always: bool = False):
    if not (config.augment or always):
        return None
    from kd_keras.data.augment import build_augmenter

    # OCT: horizontal flips only (an upside-down retina never occurs); 002's rotation and vertical shift.
    return build_augmenter(flip="horizontal", rotation_degrees=config.rotation_degrees,
                           vertical_shift=config.vertical_shift, brightness=0.0, contrast=0.0, seed=seed)


def _cache_images(count: int, preprocess) -> bool:
    from kd_keras.engine.streams import fits_in_memory

    return fits_in_memory(count, preprocess)


def _steps(count: int, batch_size: int, fixed: int | None) -> int:
    return int(fixed) if fixed else max(1, math.ceil(count / batch_size))


def _grid_summary(grid) -> dict[str, Any]:
    summary = grid.summary()
    histories = [h for run in grid.runs for h in run.history if "val_accuracy" in h]
    summary["best_val_accuracy"] = max((h["val_accuracy"] for h in histories if h["val_accuracy"] is not None),
                                       default=None)
    summary["best_val_auc"] = max((h["val_auc"] for h in histories if h.get("val_auc") is not None), default=None)
    chosen = next((h for h in grid.best.history if h.get("epoch") == grid.best.best_epoch), {})
    summary["chosen_val_accuracy"] = chosen.get("val_accuracy")
    summary["chosen_val_auc"] = chosen.get("val_auc")
    return summary


# ------------------------------------------------------------------------------------------------ teacher


def _teacher_shape(config: OCTStudyConfig) -> tuple[int, int, int]:
    from kd_keras.models import get_spec

    try:
        spec = get_spec(config.teacher)
    except (KeyError, ValueError) as error:
        raise StudyError(f"--teacher {config.teacher!r}: {error}") from None
    return (config.image_size, config.image_size, 3 if spec.role == "teacher" else config.student_channels)


def teacher_pretraining_stage(ctx: RunContext) -> dict[str, Any]:
    """SimCLR on the labeled and unlabeled images together (labels unused), from ``teacher_weights``: the
    weights every supervised teacher run then starts from (``teacher_pretraining: simclr``)."""
    import keras

    from kd_keras.data import pipeline
    from kd_keras.data.augment import build_simclr_augmenter
    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.engine.training import train
    from kd_keras.models import build_model

    config, data = ctx.config, ctx.data
    shape = _teacher_shape(config)
    start = time.perf_counter()
    seed_once(ctx)
    pre = PreprocessConfig(shape[:2], channels=shape[2], geometry=config.geometry)
    everything = pipeline.mixed_records(data.train, data.pool)
    cache = _cache_images(len(everything), pre)
    steps = _steps(len(everything), config.simclr_batch_size, config.simclr_steps_per_epoch)

    def view(offset: int):
        return build_simclr_augmenter(channels=shape[2], image_size=shape[0], seed=config.seed + offset)

    def make_stream():
        return pipeline.make_dataset(everything, pre, config.simclr_batch_size, repeat=True, seed=config.seed,
                                     augmenter=view(1), view2_augmenter=view(2), cache=cache)

    ctx.say(f"teacher pretraining: SimCLR on {len(everything)} labeled + unlabeled images (labels unused), "
            f"{config.simclr_epochs} epochs x {steps} steps, lr {config.simclr_learning_rate:g}")
    init = None if config.teacher_weights == "none" else config.teacher_weights
    model = build_model(config.teacher, shape, len(data.class_names), weights=init, dropout=config.teacher_dropout,
                        **config.teacher_options)
    result = train(model, make_stream, epochs=config.simclr_epochs, steps_per_epoch=steps,
                   learning_rate=config.simclr_learning_rate, objective={"name": "simclr",
                                                                         "temperature": config.simclr_temperature},
                   directory=ctx.run_dir("teacher_pretraining"), metrics=None,
                   bn_batches=config.bn_recalibration_batches,
                   callbacks=[progress_callback(steps * config.simclr_epochs, "teacher SimCLR", ctx.progress)])
    path = ctx.path("models", "teacher", "simclr_pretrained.weights.h5")
    result.model.save_weights(path)
    keras.backend.clear_session(free_memory=True)
    return {"path": str(path), "images": len(everything), "epochs": config.simclr_epochs, "steps_per_epoch": steps,
            "loss": [float(v) for v in result.losses], "seconds": round(time.perf_counter() - start, 2)}


def teacher_stage(ctx: RunContext) -> dict[str, Any]:
    """Train the teacher over its learning-rate grid (or load a finished ``.keras`` teacher); save it."""
    import keras

    from kd_keras.data import pipeline
    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.engine.training import train_lr_grid
    from kd_keras.models import build_model, get_spec, load_model
    from kd_keras.models.profile import count_macs, count_params

    config, data = ctx.config, ctx.data
    size = (config.image_size, config.image_size)
    start = time.perf_counter()
    weights = config.teacher_weights
    # Under models/teacher/ so its file name (the name the latency table uses) is the zoo name even when a
    # student has the same architecture.
    path = ctx.path("models", "teacher", f"{config.teacher}.keras")
    if weights.endswith(".keras"):
        if not Path(weights).is_file():
            raise StudyError(f"--teacher-weights {weights}: no such file")
        teacher = load_model(weights)
        shape = tuple(int(d) for d in teacher.input_shape[1:])
        teacher.save(path)
        info: dict[str, Any] = {"source": "loaded", "file": weights}
        ctx.say(f"teacher: loaded {weights} (input {shape}), not retrained")
    else:
        try:
            spec = get_spec(config.teacher)
        except (KeyError, ValueError) as error:
            raise StudyError(f"--teacher {config.teacher!r}: {error}") from None
        shape = (*size, 3 if spec.role == "teacher" else config.student_channels)
        init = None if weights == "none" else weights

        pretrained = ctx.outputs.get("teacher_pretraining", {}).get("path")

        def build():
            model = build_model(config.teacher, shape, len(data.class_names), weights=init,
                                dropout=config.teacher_dropout, **config.teacher_options)
            if pretrained:  # the SimCLR weights of teacher_pretraining_stage, head included (relearned fast)
                model.load_weights(pretrained)
            return model

        build()  # a missing ImageNet file fails now, before any training
        seed_once(ctx)
        pre = PreprocessConfig(size, channels=shape[2])
        cache = _cache_images(len(data.train), pre)
        augmenter = _augmenter(config, config.seed)

        def make_stream():
            return pipeline.make_dataset(data.train, pre, config.teacher_batch_size, repeat=True,
                                         seed=config.seed, augmenter=augmenter, cache=cache)

        validation = pipeline.make_dataset(data.validation, pre, 64, shuffle=False, cache=cache)
        steps = _steps(len(data.train), config.teacher_batch_size, config.teacher_steps_per_epoch)
        ctx.say(f"teacher: training {config.teacher} (weights: {weights}) on {len(data.train)} labeled images, "
                f"{config.teacher_epochs} epochs x {steps} steps, learning rates {list(config.teacher_learning_rates)}")
        grid = train_lr_grid(
            build, make_stream, learning_rates=config.teacher_learning_rates, runs=config.teacher_runs,
            seed=config.seed, directory=ctx.run_dir("teacher"), steps_per_epoch=steps, validation=validation,
            epochs=config.teacher_epochs, optimizer=config.teacher_optimizer, monitor=config.monitor,
            bn_batches=config.bn_recalibration_batches,
            make_callbacks=lambda lr, run: [
                _tensorboard(ctx, "teacher", f"lr{lr:g}_run{run}"),
                progress_callback(steps * config.teacher_epochs, f"teacher lr={lr:g} run {run}", ctx.progress)])
        grid.best.model.save(path)
        info = {"source": "trained", "grid": _grid_summary(grid)}
        keras.backend.clear_session(free_memory=True)
    teacher = load_model(path)
    info.update(path=str(path), name=config.teacher, input_shape=list(shape), weights=weights,
                params=count_params(teacher), macs=count_macs(teacher),
                seconds=round(time.perf_counter() - start, 2))
    return info


# ------------------------------------------------------------------------------------------ pseudo-labels


def pseudo_label_stage(ctx: RunContext) -> dict[str, Any]:
    """The teacher over labeled + pool once, into the on-disk cache; argmax pseudo-labels and their summary
    (scored against the pool's true labels where known: analysis only)."""
    from kd_keras.engine.pseudo_labels import pseudo_label_pool

    data = ctx.data
    start = time.perf_counter()
    ctx.say(f"pseudo-labels: teacher over {len(data.train)} labeled + {len(data.pool)} unlabeled images "
            "(once, cached)")
    bar = None
    if ctx.progress:
        from tqdm import tqdm

        bar = tqdm(desc="teacher cache shards", unit="shard", leave=False, file=sys.stderr)
    labels = pseudo_label_pool(ctx.outputs["teacher"]["path"], data.train, data.pool, teacher_preprocess(ctx),
                               ctx.out / "teacher_cache", batch_size=64, shard_size=1024,
                               on_shard_done=(lambda _s: bar.update(1)) if bar is not None else None)
    if bar is not None:
        bar.close()
    ctx.state["cache"] = labels.cache
    summary = labels.summary(data.class_names)
    known = data.pool_truth >= 0
    if known.any():
        truth, predicted = data.pool_truth[known], labels.pool_labels[known]
        summary["truth_check"] = {
            "examples": int(known.sum()),
            "pseudo_label_accuracy": float(np.mean(predicted == truth)),
            "note": "analysis only: the pool's true labels are never used for training",
        }
        if len(data.class_names) == 2:
            summary["truth_check"].update(
                pseudo_label_sensitivity=float(np.mean(predicted[truth == 1] == 1)) if (truth == 1).any() else None,
                pseudo_label_specificity=float(np.mean(predicted[truth == 0] == 0)) if (truth == 0).any() else None)
        else:  # per class: how many of its pool images the teacher labels right
            summary["truth_check"]["pseudo_label_recall_per_class"] = {
                name: float(np.mean(predicted[truth == j] == j)) if (truth == j).any() else None
                for j, name in enumerate(data.class_names)}
        ctx.say(f"pseudo-labels: {100 * summary['truth_check']['pseudo_label_accuracy']:.1f}% agree with the "
                f"pool's true labels ({int(known.sum())} images; analysis only)")
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _teacher_cache(ctx: RunContext):
    if "cache" not in ctx.state:
        from kd_keras.engine.teacher_cache import TeacherCache

        ctx.state["cache"] = TeacherCache.open(ctx.outputs["pseudo_labels"]["cache"])
    return ctx.state["cache"]


# ------------------------------------------------------------------------------------------------ students


def student_runs(config: OCTStudyConfig) -> list[dict[str, Any]]:
    """The baseline, then one student-teacher run per objective and pool fraction (``method`` pseudo/both)."""
    runs = [{"method": "baseline", "fraction": 0.0, "objective": {"name": "hard_label"}}]
    if config.method in ("pseudo", "both"):
        for objective in config.student_objectives:
            method = "pseudo" if objective["name"] == "pseudo_label" else objective["name"]
            runs += [{"method": method, "fraction": f, "objective": dict(objective)}
                     for f in config.fractions if f > 0]
    return runs


def run_key(run: dict[str, Any]) -> str:
    """A run's name: method, pool percentage, then the objective's explicit settings."""
    key = f"{run['method']}_{int(round(100 * run['fraction']))}"
    objective = {k: v for k, v in run["objective"].items() if k != "name"}
    if "temperature" in objective and "alpha" in objective:
        key += f"_T{objective.pop('temperature'):g}_a{objective.pop('alpha'):g}"
    for name, value in sorted(objective.items()):
        text = f"{value:g}" if isinstance(value, float) else "-".join(map(str, value)) if isinstance(
            value, list | tuple) else str(value)
        key += f"_{name}{text}"
    return key


def _train_student(ctx: RunContext, name: str, run: dict[str, Any]) -> dict[str, Any]:
    import keras

    from kd_keras.data import pipeline, schema
    from kd_keras.engine import Distiller, get_objective
    from kd_keras.engine.training import predict, train_lr_grid
    from kd_keras.models import build_model, load_model

    config, data = ctx.config, ctx.data
    key = run_key(run)
    start = time.perf_counter()
    seed_once(ctx)
    pre = student_preprocess(config)
    fraction = run["fraction"]
    used = len(data.train) + int(round(fraction * len(data.pool)))
    cache = _cache_images(len(data.train) + len(data.pool), pre)
    objective = get_objective(dict(run["objective"]))
    view2 = _augmenter(config, config.seed + 1, always=True) if schema.VIEW2 in objective.required_keys else None
    logits = _teacher_cache(ctx).logits if run["method"] != "baseline" else None
    # Teacher features (attention maps, hints) are not cached: such objectives run the teacher live.
    live_teacher = objective.needs_teacher and bool(objective.teacher_taps)
    teacher_path = ctx.outputs["teacher"]["path"]

    def make_stream():
        return pipeline.make_mixed_dataset(data.train, data.pool, pre, config.student_batch_size,
                                           unlabeled_fraction=fraction, seed=config.seed, teacher_logits=logits,
                                           augmenter=_augmenter(config, config.seed), view2_augmenter=view2,
                                           repeat=True, cache=cache)

    if "validation" not in ctx.state:
        ctx.state["validation"] = pipeline.make_dataset(data.validation, pre, 64, shuffle=False,
                                                        cache=_cache_images(len(data.validation), pre))
    steps = _steps(used, config.student_batch_size, config.student_steps_per_epoch)
    shape = (config.image_size, config.image_size, config.student_channels)
    label = f"{name} {run['method']} {int(round(100 * fraction))}%"

    def build():
        student = build_model(name, shape, len(data.class_names))
        return Distiller(student, load_model(teacher_path)) if live_teacher else student

    grid = train_lr_grid(
        build, make_stream, learning_rates=config.student_learning_rates, runs=config.student_runs,
        seed=config.seed, directory=ctx.run_dir(f"{name}/{key}"), steps_per_epoch=steps,
        validation=ctx.state["validation"], epochs=config.student_epochs, optimizer=config.student_optimizer,
        objective=dict(run["objective"]), monitor=config.monitor, bn_batches=config.bn_recalibration_batches,
        make_callbacks=lambda lr, r: [
            _tensorboard(ctx, name, key, f"lr{lr:g}_run{r}"),
            progress_callback(steps * config.student_epochs, f"{label} lr={lr:g} run {r}", ctx.progress)])
    path = ctx.path("models", name, f"{key}.keras")
    grid.best.model.save(path)
    # Test-set AUC of every run (point estimates) shows the whole fraction curve on held-out data.
    test_auc = {test: predict(grid.best.model, records, pre).score("auc") for test, records in data.tests.items()}
    keras.backend.clear_session(free_memory=True)
    summary = {**run, "key": key, "path": str(path), "examples_per_epoch": used, "steps_per_epoch": steps,
               **_grid_summary(grid), "test_auc": test_auc, "seconds": round(time.perf_counter() - start, 2)}
    ctx.say(f"  {label}: best validation {config.monitor} {grid.best.best_score:.3f} (epoch "
            f"{grid.best.best_epoch}, lr {grid.best.learning_rate:g}); test AUC "
            + ", ".join(f"{k} {v:.3f}" for k, v in test_auc.items()))
    return summary


def student_stage(ctx: RunContext, name: str) -> dict[str, Any]:
    """Every run of one student (each recorded as a sub-stage), and which one is deployed."""
    from kd_keras.models import get_spec

    config = ctx.config
    family = get_spec(name).family
    ctx.say(f"student {name}:")

    def train(run: dict[str, Any]) -> dict[str, Any]:
        return ctx.stage(f"student-{name}-{run_key(run)}", lambda: _train_student(ctx, name, run))

    runs = [train(run) for run in student_runs(config)]
    if config.method in ("soft", "both"):
        # 002 section 2.5: choose (T, alpha) on the labeled images, then train with the largest pool fraction.
        grid_runs = [train({"method": "soft", "fraction": 0.0, "objective": config.soft_objective(temperature, alpha)})
                     for temperature, alpha in config.soft_grid]
        runs += grid_runs
        best = max(grid_runs, key=lambda r: r["best"]["best_score"] or -1)
        largest = max(config.fractions)
        if largest > 0:
            runs.append(train({"method": "soft", "fraction": largest, "objective": best["objective"]}))
    baseline = runs[0]
    transfer = [r for r in runs if r["method"] != "baseline" and r["fraction"] > 0]
    chosen = max(transfer, key=lambda r: r["best"]["best_score"] or -1) if transfer else None
    # Deploy whichever validates better: the unlabeled images do not always help (ties keep the baseline).
    deployed = baseline
    if chosen is not None and (chosen["best"]["best_score"] or -1) > (baseline["best"]["best_score"] or -1):
        deployed = chosen
    return {"family": family, "runs": runs, "baseline_key": baseline["key"],
            "student_teacher_key": chosen["key"] if chosen else None, "deployed_key": deployed["key"]}


# ------------------------------------------------------------------------------------------------ evaluation


def evaluation_stage(ctx: RunContext) -> dict[str, Any]:
    """Teacher, baselines and student-teacher models on validation and every test set, with clustered CIs."""
    import keras

    from kd_keras.engine.training import predict
    from kd_keras.evaluation import evaluate_predictions
    from kd_keras.models import load_model

    config, data = ctx.config, ctx.data
    sets = {"validation": data.validation, **data.tests}
    predictions_dir = ctx.out / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)

    def evaluate(label: str, model_path: str, pre) -> dict[str, Any]:
        model = load_model(model_path)
        out = {}
        for set_name, records in sets.items():
            predictions = predict(model, records, pre, batch_size=64)
            # Binary: the abnormal probability, thresholded at config.threshold; multiclass: every class's.
            probabilities = predictions.probabilities()
            if config.task == "binary":
                probabilities = probabilities[:, 1]
            clusters = data.clusters(records)[predictions.indices]
            out[set_name] = evaluate_predictions(predictions.labels, probabilities, clusters, config.task,
                                                 config.threshold, config.n_boot, config.seed)
            # The clusters (patients or volumes) too, so that paired comparisons can be bootstrapped from the files.
            np.savez_compressed(predictions_dir / f"{label}__{set_name}.npz", labels=predictions.labels,
                                scores=probabilities, indices=predictions.indices,
                                clusters=np.asarray(clusters).astype(str))  # str: loads without pickle
        keras.backend.clear_session(free_memory=True)
        return out

    ctx.say("evaluation: teacher and students on " + ", ".join(sets) + f" ({config.n_boot} clustered-bootstrap "
            f"replicates, cluster = {data.cluster_unit})")
    pre = student_preprocess(config)
    result: dict[str, Any] = {"teacher": evaluate(config.teacher, ctx.outputs["teacher"]["path"],
                                                  teacher_preprocess(ctx)), "students": {}}
    for name in config.students:
        info = ctx.outputs[f"student-{name}"]
        by_key = {r["key"]: r for r in info["runs"]}
        entry = {"baseline": evaluate(f"{name}__baseline", by_key[info["baseline_key"]]["path"], pre)}
        if info["student_teacher_key"]:
            entry["student_teacher"] = evaluate(f"{name}__student_teacher",
                                                by_key[info["student_teacher_key"]]["path"], pre)
        result["students"][name] = entry
    return result
