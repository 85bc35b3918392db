"""Study 002 end to end: a ResNet50 teacher, lightweight students trained on labeled B-scans (baseline) and on
labeled + teacher-pseudo-labeled unlabeled B-scans (the student-teacher framework), evaluated with clinical
metrics, exported for the edge and timed per volume against the teacher.

The recipe (study "002" in ``../shared/papers/``, the student-teacher framework with unlabeled OCT B-scans):

1. **Teacher** (section 2.2): ResNet50 with dropout before the classifier, trained on the labeled images
   (rotation, horizontal flip and vertical shift augmentation; SGD with momentum 0.9, batch 64, a learning-rate
   grid; the best validation epoch kept). ImageNet initialisation when ``teacher_weights="imagenet"`` (needs the
   Keras weights file; offline this fails with one line), a weights file, or a finished ``.keras`` teacher that
   is used as is.
2. **Baselines** (2.3): each student on the labeled images only; Adam, batch 64, 20 epochs, a learning-rate
   grid from 1e-1 to 1e-6 and repeated runs; the maximum validation accuracy over epochs, rates and runs.
3. **Pseudo-labels** (2.4): the teacher labels the unlabeled pool once (argmax of its softmax), cached on disk
   (:func:`kd_keras.engine.pseudo_labels.pseudo_label_pool`) and reused by every student and fraction.
4. **Student-teacher** (2.4): each student on the labeled images pooled with 25/50/75/100% of the pseudo-labeled
   pool (nested selections), same hyper-parameters as the baseline.
5. **Soft targets** (2.5, ``method="soft"|"both"``): ``CE + alpha T^2 KL`` on labeled and unlabeled images; a
   ``(T, alpha)`` grid on the labeled images, then the best pair with the largest fraction of the pool.
6. **Evaluation** (2.6): teacher, baselines and each student's best student-teacher model on the validation set
   and every test set: sensitivity, specificity, AUC and accuracy with 95% clustered-bootstrap CIs (cluster:
   the OCT volume for the synthetic data, the patient otherwise).
7. **Edge**: each student's deployed model (its best student-teacher model or its baseline, whichever has the
   better validation score) exported to
   TFLite fp32 + int8 and ONNX with parity checked on validation images; the teacher and the students timed on
   whole volumes (128 images) in LiteRT and ONNX Runtime.

Everything lands under ``out/``: ``results.json`` (every number, the configuration, seed and package versions),
``report.md`` with the plots, ``models/*.keras``, ``export/*.tflite|*.onnx`` (+ sidecars), ``tensorboard/``,
``config.yaml`` (the resolved settings: ``kd-keras run oct --config config.yaml`` replays the run) and
``stages/`` (one JSON per finished stage: ``resume=True`` skips them, and a killed training resumes from its
checkpoint under ``runs/``).

Presets (:mod:`~kd_keras.studies.oct_config`): ``"paper"`` is the study's protocol (224 px, grids, 5 runs; days
on a CPU); ``"quick"`` (the default) takes about 9.5 minutes on a quiet 2-core CPU on the embedded
synthetic OCT data (563 s, docs/quick_default.md); ``"smoke"`` is for CI (seconds of training at 32 px).

The modules: settings (:mod:`~kd_keras.studies.oct_config`), data (:mod:`~kd_keras.studies.oct_data`), training
stages (:mod:`~kd_keras.studies.oct_stages`), export and latency (:mod:`~kd_keras.studies.oct_deploy`), report
(:mod:`~kd_keras.studies.oct_report`); this one puts them in order for the runner (:mod:`kd_keras.runner`).

Example:

```python
from kd_keras.studies.oct_student_teacher import OCTStudyConfig, run_study

config = OCTStudyConfig.from_preset("quick", students=("squeezenet_v1_1",), fractions=(0.0, 1.0))
results = run_study(config, "runs/oct")
print(results["students"]["squeezenet_v1_1"]["student_teacher"]["eval"]["synthetic_test"]["auc"])
```
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from kd_keras.runner import RunContext, Stage, Study, fingerprint_parts
from kd_keras.studies import oct_report
from kd_keras.studies.oct_config import (
    FLAGS,
    HELDOUT_TEST,
    METHODS,
    PRESETS,
    SYNTHETIC_TEST,
    OCTStudyConfig,
    StudyError,
    adjust_settings,
)
from kd_keras.studies.oct_data import StudyData, check_folders, prepare_data
from kd_keras.studies.oct_deploy import export_stage, latency_stage
from kd_keras.studies.oct_stages import (
    evaluation_stage,
    pseudo_label_stage,
    student_stage,
    teacher_pretraining_stage,
    teacher_stage,
)

__all__ = ["HELDOUT_TEST", "METHODS", "PRESETS", "STUDY", "SYNTHETIC_TEST", "OCTStudy", "OCTStudyConfig",
           "StudyData", "StudyError", "prepare_data", "run_study", "summary_lines"]


class OCTStudy(Study):
    """Study 002 for the runner: data, teacher, pseudo-labels, students, evaluation, export, latency.
    ``--preset paper`` runs 002 as published (docs/paper_presets.md: ImageNet ResNet50 teacher, 29 students, 0-100%
    of the pool, the soft-target grid, 6 learning rates x 5 runs): on ~540k real B-scans about 10^5 CPU-hours,
    decades on this 2-core machine (the paper used 8 GPUs)."""

    name = "oct"
    title = "002 OCT student-teacher"
    description = __doc__.split("\n\n")[0]
    config_class = OCTStudyConfig
    presets = PRESETS
    default_out = "runs/oct_student_teacher"
    flags = FLAGS
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = (StudyError,)

    def adjust(self, values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
        return adjust_settings(values, explicit)

    def check(self, config: OCTStudyConfig) -> None:
        """Names and combinations that would fail mid-run, refused before anything is written."""
        from kd_keras.engine import get_objective
        from kd_keras.models import get_spec

        for option, names in (("--teacher", [config.teacher]), ("--students", list(config.students))):
            for name in names:
                try:
                    get_spec(name)
                except (KeyError, ValueError) as error:
                    raise StudyError(f"{option} {name!r}: {str(error).strip(chr(39))}") from None
        check_folders(config)  # a typo in a folder is refused before the output folder is touched
        teacher_channels = 3 if get_spec(config.teacher).role == "teacher" else config.student_channels
        for objective in config.student_objectives:
            if get_objective(dict(objective)).teacher_taps and teacher_channels != config.student_channels:
                raise StudyError(f"student_objectives: {objective['name']} runs the teacher on the student's "
                                 f"images, but the teacher takes {teacher_channels} channels and the students "
                                 f"{config.student_channels}: set student_channels={teacher_channels}")

    def prepare(self, ctx: RunContext) -> StudyData:
        data = prepare_data(ctx.config, ctx.say)
        ctx.say(f"data: {len(data.train)} labeled training, {len(data.validation)} validation, {len(data.pool)} "
                "unlabeled; tests: " + ", ".join(f"{k} ({len(v)})" for k, v in data.tests.items()))
        return data

    def fingerprint(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        data = ctx.data
        parts = {"train": data.train, "validation": data.validation, "pool": data.pool, **{
            f"test:{name}": records for name, records in data.tests.items()}}
        return fingerprint_parts(parts)

    def stages(self, ctx: RunContext) -> list[Stage]:
        tests = tuple(f"test:{name}" for name in ctx.data.tests)
        # Each student run records its test AUC too, so a changed test set is read from the students on.
        students = [Stage(f"student-{name}", lambda ctx, name=name: student_stage(ctx, name),
                          ("train", "validation", "pool", *tests)) for name in ctx.config.students]
        pretraining = [Stage("teacher_pretraining", teacher_pretraining_stage, ("train", "pool"))] if (
            ctx.config.teacher_pretraining == "simclr") else []
        return [*pretraining, Stage("teacher", teacher_stage, ("train", "validation")),
                Stage("pseudo_labels", pseudo_label_stage, ("train", "pool")), *students,
                Stage("evaluation", evaluation_stage), Stage("export", export_stage, ("train", "validation")),
                Stage("latency", latency_stage, ())]

    def results(self, ctx: RunContext) -> dict[str, Any]:
        return _results(ctx)

    def report(self, results: dict[str, Any], out: Path) -> None:
        oct_report.write_report(results, out)

    def summary_lines(self, results: dict[str, Any]) -> list[str]:
        return oct_report.summary_lines(results)


STUDY = OCTStudy()


def _timing(ctx: RunContext) -> dict[str, float]:
    """Seconds per stage, with each student's runs summed under ``student <name>`` (as the report shows)."""
    timing: dict[str, float] = {"data": ctx.timing.get("data", 0.0)}
    for name, seconds in ctx.timing.items():
        if name.startswith("student-") and name.count("-") >= 2 or name == "data":
            continue
        key = f"student {name[len('student-'):]}" if name.startswith("student-") else name
        timing[key] = round(timing.get(key, 0.0) + seconds, 2)
    return timing


def _results(ctx: RunContext) -> dict[str, Any]:
    from kd_keras.evaluation.report import environment

    config = ctx.config
    evaluation, exports = ctx.outputs["evaluation"], ctx.outputs["export"]
    students = {name: ctx.outputs[f"student-{name}"] for name in config.students}
    out_students = {}
    for name, info in students.items():
        by_key = {r["key"]: r for r in info["runs"]}
        runs = [{"key": r["key"], "method": r["method"], "fraction": r["fraction"],
                 "objective": r["objective"], "best_val_accuracy": r["best_val_accuracy"],
                 "best_val_auc": r["best_val_auc"], "chosen_val_accuracy": r["chosen_val_accuracy"],
                 "chosen_val_auc": r["chosen_val_auc"], "learning_rate": r["best"]["learning_rate"],
                 "best_epoch": r["best"]["best_epoch"], "test_auc": r["test_auc"], "path": r["path"],
                 "examples_per_epoch": r["examples_per_epoch"], "steps_per_epoch": r["steps_per_epoch"],
                 "seconds": r["seconds"], "grid": r["runs"]} for r in info["runs"]]
        entry = {"family": info["family"], "runs": runs,
                 "baseline": {"method": "baseline", "fraction": 0.0, "key": info["baseline_key"],
                              "eval": evaluation["students"][name]["baseline"]}}
        if info["student_teacher_key"]:
            chosen = by_key[info["student_teacher_key"]]
            entry["student_teacher"] = {"method": chosen["method"], "fraction": chosen["fraction"],
                                        "key": chosen["key"], "objective": chosen["objective"],
                                        "eval": evaluation["students"][name]["student_teacher"]}
        deployed_key = info.get("deployed_key") or info["student_teacher_key"] or info["baseline_key"]
        entry["deployed"] = "baseline" if deployed_key == info["baseline_key"] else "student_teacher"
        entry["export"] = exports.get(name)
        out_students[name] = entry
    return {
        "study": "002 OCT student-teacher",
        "config": config.to_dict(),
        "seed": config.seed,
        "environment": environment(),
        "data": ctx.data.summary(),
        "teacher": {**ctx.outputs["teacher"], "eval": evaluation["teacher"],
                    "pretraining": ctx.outputs.get("teacher_pretraining")},
        "pseudo_labels": ctx.outputs["pseudo_labels"],
        "students": out_students,
        "latency": ctx.outputs["latency"],
        "timing_seconds": _timing(ctx),
        "resumed_stages": list(ctx.store.skipped),
    }


def run_study(config: OCTStudyConfig, out: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole study and write every output under ``out``; returns the ``results.json`` content.

    Args:
        config: the run's :class:`OCTStudyConfig`.
        out: output folder.
        resume: skip the stages a previous run with the same settings finished, and resume a killed training
            from its checkpoint.
        overwrite: move an earlier run in ``out`` aside (to ``out/previous/``) and start anew; without it (and
            without ``resume``) such a folder is refused.
        progress: tqdm progress bars on the long steps (stderr).
        say: where the one-line progress messages go.

    Raises:
        RunError (StudyError), DataError, ImageReadError, WeightsUnavailableError, CacheError,
            NonFiniteLossError: each with a one-line message (the command prints it and exits with status 2).
    """
    from kd_keras.runner import run_study as run

    return run(STUDY, config, out, resume=resume, overwrite=overwrite, progress=progress, say=say)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The one-screen summary printed at the end of a run."""
    return oct_report.summary_lines(results)
