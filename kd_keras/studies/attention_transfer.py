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

   Adam from 5e-5, halved every 16 epochs (a ``LearningRateSchedule``); the best validation point by AUC is kept
   (paper: max 128 epochs); ``curve_points`` validations per run give the learning curves (AUC against step).
3. **Outputs**: test AUC (with patient-clustered CIs) per size, student and method; the beta grid; AUC against
   training step for TL and AT (the paper's Fig. 4, where AT delays over-fitting); AUC against training size.

Tasks: multi-label (CheXpert-style CSV; uncertain labels as the source's policy, ``-1`` ignored by the loss),
multi-class (DR grades) and binary. AUC: the mean of per-label AUCs (multi-label), macro one-vs-rest
(multi-class) or binary.

Stages (``kd-keras run attention``; each recorded under ``<out>/stages/``, so ``--resume`` skips finished ones and
a killed training resumes from its checkpoint under ``<out>/runs/``): ``teacher``; one per training-set size,
student and method, e.g. ``f0.5-densenet40-tl`` and ``f0.5-densenet40-at-beta100``; ``evaluation`` (beta chosen
on validation, TL and AT on the test set); ``curves`` (where each learning curve peaked).

The modules: settings and presets (:mod:`~kd_keras.studies.attention_config`), data and stages
(:mod:`~kd_keras.studies.attention_stages`), report (:mod:`~kd_keras.studies.attention_report`); this one puts them
in order for the runner (:mod:`kd_keras.runner`).

Example:

```python
from kd_keras.config import resolve_config
from kd_keras.runner import run_study
from kd_keras.studies.attention_transfer import PRESETS, STUDY, ATConfig

config = resolve_config(ATConfig, PRESETS, preset="paper", sets=["layout=chexpert", "data=CheXpert/train.csv"])
results = run_study(STUDY, config, "runs/at")
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kd_keras.runner import RunContext, Stage, Study, fingerprint_parts
from kd_keras.studies import attention_report
from kd_keras.studies.attention_config import (
    FLAGS,
    PRESETS,
    STUDENT_TAPS,
    TEACHER_TAP,
    ATConfig,
    StudyError,
    adjust_settings,
    schedule,
)
from kd_keras.studies.attention_stages import (
    ATData,
    check_teacher_file,
    curves_stage,
    evaluation_stage,
    prepare_data,
    student_stages,
    teacher_stage,
)

__all__ = ["PRESETS", "STUDENT_TAPS", "STUDY", "TEACHER_TAP", "ATConfig", "ATData", "AttentionStudy", "StudyError",
           "schedule"]


class AttentionStudy(Study):
    """Study 004 for the runner: data, teacher, student runs (TL and AT per beta and size), evaluation, curves.
    ``--preset paper`` runs 004 as published (docs/paper_presets.md: 8 betas x 2 students x 5k/50k/178k training
    images x 3 repetitions, up to 128 epochs at 256 px on CheXpert-sized data via --data): years on this 2-core
    CPU, weeks on one GPU."""

    name = "attention"
    title = "004 attention transfer teacher-student"
    description = __doc__.split("\n\n")[0]
    config_class = ATConfig
    presets = PRESETS
    default_out = "runs/attention_transfer"
    flags = FLAGS
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = (StudyError, FileNotFoundError)

    def adjust(self, values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
        return adjust_settings(values, explicit)

    def check(self, config: ATConfig) -> None:
        """Data and teacher refused before anything is written."""
        if not config.demo_patients:
            if not config.data:
                raise StudyError("give --data (and --layout), or --demo")
            if not Path(config.data).exists():
                raise StudyError(f"--data {config.data}: no such file or folder")
        check_teacher_file(config)

    def prepare(self, ctx: RunContext) -> ATData:
        data = prepare_data(ctx)
        records = data.records
        ctx.say(f"{len(records)} images, task {records.task}, classes {records.class_names}")
        return data


    def fingerprint(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        """The data's files: ``--resume`` after they changed computes every stage again."""
        return fingerprint_parts({"data": ctx.data.records})

    def stages(self, ctx: RunContext) -> list[Stage]:
        return [Stage("teacher", teacher_stage), *student_stages(ctx.config), Stage("evaluation", evaluation_stage),
                Stage("curves", curves_stage)]

    def results(self, ctx: RunContext) -> dict[str, Any]:
        from kd_keras.config import config_to_dict
        from kd_keras.evaluation.report import environment

        config: ATConfig = ctx.config
        data: ATData = ctx.data
        teacher = ctx.outputs["teacher"]
        return {
            "study": "004_attention_transfer",
            "config": config_to_dict(config),
            "seed": config.seed,
            "environment": environment(),
            "data": {"records": data.records.summary(), "demo": bool(config.demo_patients),
                     "demo_task": config.demo_task if config.demo_patients else None, **data.check_summary()},
            "split": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
            "teacher": {"log": teacher["log"], "test": teacher["test"], "path": teacher["path"]},
            "runs": ctx.outputs["evaluation"]["runs"],
            "repeated": ctx.outputs["evaluation"].get("repeated", []),
            "overfitting": ctx.outputs["curves"]["overfitting"],
            "timing_seconds": dict(ctx.timing),
        }

    def report(self, results: dict[str, Any], out: Path) -> None:
        from kd_keras.studies.data_checks import data_checks_section

        path = attention_report.write_report(results, out)
        path.write_text(f"{path.read_text().rstrip()}\n\n{data_checks_section(results)}\n")

    def summary_lines(self, results: dict[str, Any]) -> list[str]:
        return attention_report.summary_lines(results)


STUDY = AttentionStudy()
