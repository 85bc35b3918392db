"""Study 003: SimCLR self-supervised pretraining + knowledge distillation for referable DR with few labels.

The four stages of its Fig. 1, on a binary task (referable DR, or any binary set):

1. **SimCLR** pretraining of a ResNet50 teacher on every training image without labels (NT-Xent between two
   strong augmentations, projection head; :class:`kd_keras.engine.objectives.SimCLR`).
2. **Teacher fine-tuning** on the small labeled fraction (2% by default, whole patients).
3. **Pseudo-labels**: the teacher labels the unlabeled pool (class 1 where its positive-class probability is
   above 0.5, or above an operating point chosen from the data: ``pseudo_label_threshold``,
   :mod:`~kd_keras.studies.simclr_semi`) and a **student** (DenseNet-161, ``densenet161``, in the paper preset)
   is trained on them.
4. **Student fine-tuning** on the labeled fraction.

Baselines on the same fraction and pool: supervised on the fraction and on every training label (the 100%
reference; Inception-V3 in the paper preset), FixMatch and MixMatch with separate labeled and unlabeled batches at
their papers' ratios (:mod:`kd_keras.engine.objectives_semi_supervised`). AUC with
patient-clustered 95% CIs on every test set, and a t-SNE of the student's and the teacher's embeddings (Fig. 4).

Run by ``kd-keras run simclr`` (or ``python experiments/simclr_distill.py``): stages ``simclr``,
``teacher_finetune``, ``pseudo_labels``, ``student_pseudo``, ``student_finetune``, ``baseline-<name>`` per
baseline, ``evaluation``, ``tsne``; each recorded so ``--resume`` skips finished ones and a killed training
resumes from its checkpoint. Settings and presets (``paper``, ``demo``, ``smoke``):
:mod:`~kd_keras.studies.simclr_config`; data and stages: :mod:`~kd_keras.studies.simclr_stages`.

Outputs under ``out/``: ``results.json``, ``report.md``, ``tsne.png``, ``models/*.keras``, ``config.yaml``.

Example:

```python
from kd_keras.config import resolve_config
from kd_keras.runner import run_study
from kd_keras.studies.simclr_distill import PRESETS, STUDY, SimCLRConfig

config = resolve_config(SimCLRConfig, PRESETS, preset="demo")
results = run_study(STUDY, config, "runs/simclr_demo")
print(results["test"]["student"]["test"]["auc"])
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kd_keras.runner import RunContext, Stage, Study, fingerprint_parts
from kd_keras.studies.simclr_config import (
    BASELINES,
    FLAGS,
    METHODS,
    PRESETS,
    SimCLRConfig,
    SimCLRError,
    adjust_settings,
)
from kd_keras.studies.simclr_report import report_text, summary_lines, write_report
from kd_keras.studies.simclr_stages import (
    SimCLRData,
    baseline_stage,
    evaluation_stage,
    model_stages,
    plot_tsne,
    prepare_data,
    pseudo_label_stage,
    simclr_stage,
    student_finetune_stage,
    student_pseudo_stage,
    teacher_finetune_stage,
    tsne_stage,
)

__all__ = ["BASELINES", "METHODS", "PRESETS", "STUDY", "SimCLRConfig", "SimCLRData", "SimCLRError", "SimCLRStudy",
           "plot_tsne", "report_text", "summary_lines", "write_report"]

TRAININGS = ("simclr", "teacher_finetune", "student_pseudo", "student_finetune")


class SimCLRStudy(Study):
    """Study 003 for the runner: SimCLR, fine-tune, pseudo-labels, student, baselines, evaluation, t-SNE.
    ``--preset paper`` runs 003 as published (docs/paper_presets.md: SimCLR ResNet50 100 epochs, DenseNet-161
    student 200 + 100 epochs, Inception-V3 baselines on 2% and 100% of the labels, FixMatch and MixMatch, 299 px,
    EyePACS via --data): months on this 2-core CPU, days on one GPU."""

    name = "simclr"
    title = "003 SimCLR pretraining + knowledge distillation"
    description = __doc__.split("\n\n")[0]
    config_class = SimCLRConfig
    presets = PRESETS
    default_out = "runs/simclr_distill"
    flags = FLAGS
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = (SimCLRError,)

    def adjust(self, values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
        return adjust_settings(values, explicit)

    def check(self, config: SimCLRConfig) -> None:
        """Refused before anything is written: no data, unknown networks, ImageNet weights that cannot be had
        (offline: the one-line weights message), missing extra test sets."""
        from kd_keras.models import get_spec
        from kd_keras.models.weights import NOTOP_WEIGHTS, resolve_backbone_weights

        if config.data is None and config.synthetic_patients < 1:
            raise SimCLRError("give --data (and --layout), or --demo (generated data)")
        supervised = [b for b in config.baselines if b in ("supervised", "supervised_full")]
        models = [("--teacher", config.teacher), ("--student", config.student)]
        models += [("--supervised-model", config.supervised_model)] if config.supervised_model and supervised else []
        for option, name in models:
            try:
                get_spec(name)
            except (KeyError, ValueError) as error:
                raise SimCLRError(f"{option} {name!r}: {str(error).strip(chr(39))}") from None
        paths = [("--data", config.data)] if config.data is not None else []
        paths += [("--extra-test", spec.partition(":")[0]) for spec in config.extra_tests]
        for option, path in paths:
            if not Path(path).exists():
                raise SimCLRError(f"{option} {path}: no such file or folder")
        if config.student_weights == "imagenet" and config.student not in NOTOP_WEIGHTS:
            raise SimCLRError(f"--student-weights imagenet: Keras has no ImageNet weights for {config.student!r}; "
                              f"use --student-weights none or a weights file")
        if config.teacher_weights == "imagenet":  # every network that starts from the teacher's weights
            for option, name in models[:1] + models[2:]:
                if name not in NOTOP_WEIGHTS:
                    raise SimCLRError(f"--teacher-weights imagenet: Keras has no ImageNet weights for {name!r} "
                                      f"({option}); use --teacher-weights none or a weights file")
                resolve_backbone_weights(name, "imagenet")
        if config.student_weights == "imagenet":
            resolve_backbone_weights(config.student, "imagenet")

    def prepare(self, ctx: RunContext) -> SimCLRData:
        data = prepare_data(ctx.config, ctx.out, ctx.say)
        ctx.say("data: " + ", ".join(f"{k} {v}" for k, v in data.split().items()))
        return data


    def fingerprint(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        """The data's files: ``--resume`` after they changed computes every stage again."""
        tests = {f"test:{name}": records for name, records in ctx.data.tests.items()}
        return fingerprint_parts({"data": ctx.data.records, "pool": ctx.data.pool, **tests})

    def stages(self, ctx: RunContext) -> list[Stage]:
        baselines = [Stage(f"baseline-{b}", lambda ctx, b=b: baseline_stage(ctx, b)) for b in ctx.config.baselines]
        return [Stage("simclr", simclr_stage), Stage("teacher_finetune", teacher_finetune_stage),
                Stage("pseudo_labels", pseudo_label_stage), Stage("student_pseudo", student_pseudo_stage),
                Stage("student_finetune", student_finetune_stage), *baselines,
                Stage("evaluation", evaluation_stage), Stage("tsne", tsne_stage)]

    def results(self, ctx: RunContext) -> dict[str, Any]:
        from kd_keras.config import config_to_dict
        from kd_keras.evaluation.report import environment

        config = ctx.config
        stages = {name: ctx.outputs[name] for name in TRAININGS}
        stages.update({b: ctx.outputs[f"baseline-{b}"] for b in config.baselines})
        return {
            "study": "003_simclr_distill",
            "config": config_to_dict(config),
            "seed": config.seed,
            "environment": environment(),
            "data": {"records": ctx.data.records.summary(), "preset": config.preset,
                     "synthetic": config.data is None, **ctx.data.check_summary()},
            "split": ctx.data.split(),
            "stages": stages,
            "pseudo_labels": ctx.outputs["pseudo_labels"],
            "models": {m: ctx.outputs[s]["path"] for m, s in model_stages(config).items()},
            "test": ctx.outputs["evaluation"],
            "tsne": ctx.outputs["tsne"]["path"],
            "timing_seconds": dict(ctx.timing),
        }

    def report(self, results: dict[str, Any], out: Path) -> None:
        write_report(results, out)

    def summary_lines(self, results: dict[str, Any]) -> list[str]:
        return summary_lines(results)


STUDY = SimCLRStudy()

