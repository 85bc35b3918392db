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

The modules: settings and presets (:mod:`~kd_keras.studies.dr_config`), data (:mod:`~kd_keras.studies.dr_data`),
training stages (:mod:`~kd_keras.studies.dr_stages`), tables and report (:mod:`~kd_keras.studies.dr_report`);
this one puts them in order for the runner (:mod:`kd_keras.runner`): stages ``fold<k>/teacher`` and
``fold<k>/<student>/<variant>`` (sub-steps ``.../ul``, ``.../kd``, ``.../hard``), each recorded under
``<out>/stages/`` so ``--resume`` skips finished ones and a killed training continues from its checkpoint.

Outputs in ``--out``: ``results.json`` (settings, seed, package versions, per-fold metrics and stage logs),
``report.md`` (the tables), ``methods.png``, ``models/fold<k>/*.keras``, ``config.yaml`` (replays the run).

Example:

```python
from kd_keras.cli import main

main(["run", "dr", "--preset", "demo", "--out", "runs/dr_kd_demo"])     # = experiments/dr_kd_unlabeled.py --demo
main(["run", "dr", "--layout", "messidor", "--data", "messidor.csv", "--image-dir", "messidor/",
      "--pool", "natural_images/", "--out", "runs/dr_kd"])
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from kd_keras.runner import RunContext, Stage, Study, fingerprint_parts
from kd_keras.studies import dr_report
from kd_keras.studies.data_checks import data_checks_section
from kd_keras.studies.dr_config import (
    FLAGS,
    PRESETS,
    STUDENT_TITLES,
    VARIANTS,
    DRError,
    DRKDConfig,
    adjust_settings,
)
from kd_keras.studies.dr_data import DRData, check_paths, prepare_data
from kd_keras.studies.dr_report import PAPER_ACCURACY, PAPER_AUC, ordering, plot_methods, summarise, table, write_report
from kd_keras.studies.dr_stages import student_stage, teacher_stage

__all__ = ["PAPER_ACCURACY", "PAPER_AUC", "PRESETS", "STUDENT_TITLES", "STUDY", "VARIANTS", "DRData", "DRError",
           "DRKDConfig", "DRKDStudy", "ordering", "plot_methods", "prepare_data", "summarise", "table",
           "write_report"]


def _expected() -> tuple[type[BaseException], ...]:
    from kd_keras.data.preprocess import ImageReadError
    from kd_keras.data.validate import DataError
    from kd_keras.engine import NonFiniteLossError
    from kd_keras.models.weights import WeightsUnavailableError

    # Raised inside a stage, these are still the user's to fix (one line, exit status 2), not a failed stage.
    return (DRError, WeightsUnavailableError, DataError, ImageReadError, NonFiniteLossError)


class DRKDStudy(Study):
    """Study 000 for the runner: per fold, the teacher, then every student x variant. ``--preset paper`` runs 000
    as published (docs/paper_presets.md: 5 folds, ImageNet VGG16 teacher, 3 students x 4 variants x 300 epochs at
    300 px, 20,000 random images via --pool): months on this 2-core CPU, days on one GPU."""

    name = "dr"
    title = "000 KD with transfer learning and unlabeled random images (diabetic retinopathy)"
    description = __doc__.split("\n\n")[0]
    config_class = DRKDConfig
    presets = PRESETS
    default_out = "runs/dr_kd_unlabeled"
    flags = FLAGS
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = _expected()

    def adjust(self, values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
        return adjust_settings(values, explicit)

    def check(self, config: DRKDConfig) -> None:
        """Unknown model names and a missing ``data`` refused before anything is written."""
        from kd_keras.models import get_spec

        for option, names in (("--teacher", [config.teacher]), ("--students", list(config.students))):
            for name in names:
                try:
                    get_spec(name)
                except (KeyError, ValueError) as error:
                    raise DRError(f"{option} {name!r}: {str(error).strip(chr(39))}") from None
        if config.layout != "synthetic" and not config.data:
            raise DRError("give --data (and --layout), or --demo")
        check_paths(config)

    def prepare(self, ctx: RunContext) -> DRData:
        data = prepare_data(ctx.config, ctx.out, ctx.say)
        holdout = "" if data.holdout is None else f", hold-out {len(data.holdout)} ({data.holdout.class_counts()})"
        ctx.say(f"labeled {len(data.labeled)} ({data.labeled.class_counts()}), pool {len(data.pool)}, "
                f"{len(data.folds)} of {ctx.config.folds} folds{holdout}")
        return data


    def fingerprint(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        """The data's files: ``--resume`` after they changed computes every stage again."""
        return fingerprint_parts({"labeled": ctx.data.labeled, "pool": ctx.data.pool})

    def stages(self, ctx: RunContext) -> list[Stage]:
        config, stages = ctx.config, []
        for k in range(len(ctx.data.folds)):
            stages.append(Stage(f"fold{k}/teacher", lambda ctx, k=k: teacher_stage(ctx, k)))
            for student in config.students:
                for variant in config.variants:
                    stages.append(Stage(f"fold{k}/{student}/{variant}",
                                        lambda ctx, k=k, s=student, v=variant: student_stage(ctx, k, s, v)))
        return stages

    def results(self, ctx: RunContext) -> dict[str, Any]:
        from kd_keras.config import config_to_dict
        from kd_keras.evaluation.report import environment

        config = ctx.config
        per_fold = []
        for k in range(len(ctx.data.folds)):
            teacher = ctx.outputs[f"fold{k}/teacher"]
            per_fold.append({
                "fold": k, "train": teacher["train"], "test": teacher["test"],
                "teacher": {name: teacher[name] for name in ("metrics", "holdout_metrics", "log", "path")
                            if name in teacher},
                "students": {f"{s}/{v}": ctx.outputs[f"fold{k}/{s}/{v}"]
                             for s in config.students for v in config.variants},
            })
        results = {"study": "000_dr_kd_unlabeled", "config": config_to_dict(config), "seed": config.seed,
                   "environment": environment(), "data": ctx.data.summary(), "folds": per_fold,
                   "summary": summarise(per_fold, config)}
        if ctx.data.holdout is not None:  # the same models on the patients of no fold
            results["summary_holdout"] = summarise(per_fold, config, "holdout_metrics")
        results["ordering_accuracy"] = ordering(results, config, "accuracy")
        results["ordering_auc"] = ordering(results, config, "auc")
        results["timing_seconds"] = dict(ctx.timing)
        return results

    def report(self, results: dict[str, Any], out: Path) -> None:
        config = DRKDConfig(**results["config"])
        text = dr_report.write_report(results, config, Path(out)).rstrip("\n")
        (Path(out) / "report.md").write_text(f"{text}\n\n{data_checks_section(results)}\n")

    def summary_lines(self, results: dict[str, Any]) -> list[str]:
        return dr_report.summary_lines(results, DRKDConfig(**results["config"]))


STUDY = DRKDStudy()
