"""The report of study 000: Tables 1 and 2 (accuracy and AUC per student and training method, mean ± SD over
folds), the paper's numbers beside them, the ordering check and a Fig. 3-like plot.

Example:

```python
summary = summarise(per_fold, config)
print(table({"summary": summary}, config, "accuracy"))
```
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd_keras.engine.predict import estimate
from kd_keras.evaluation.report import batch_norm_sentence, format_ci, markdown_table
from kd_keras.studies.dr_config import STUDENT_TITLES, VARIANTS, DRKDConfig

__all__ = ["PAPER_ACCURACY", "PAPER_AUC", "finding", "finding_sentence", "holdout_lines", "mean_sd", "ordering", "pct",
           "plot_methods", "summarise", "summary_lines", "table", "table_ci", "write_report"]

# Tables 1 and 2 of the paper (percent), for the report's side-by-side.
PAPER_ACCURACY = {"base": (72.11, 73.58, 73.37), "kd": (73.89, 75.37, 76.84),
                  "ul": (76.95, 79.58, 78.63), "kd_ul": (79.16, 82.32, 79.89)}
PAPER_AUC = {"base": (78.52, 80.18, 78.60), "kd": (79.49, 81.59, 83.63),
             "ul": (83.34, 87.09, 85.17), "kd_ul": (85.95, 88.92, 86.65)}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd", "values"}`` over folds (sd with ddof=1; 0 for one value)."""
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(np.mean(arr)) if len(arr) else float("nan"),
        "sd": float(np.std(arr, ddof=1)) if len(arr) > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


def pct(summary: dict[str, Any]) -> str:
    """``{"mean", "sd"}`` as a percentage ``"76.84 ± 1.20"``."""
    return f"{100 * summary['mean']:.2f} ± {100 * summary['sd']:.2f}"


def summarise(per_fold: list[dict], config: DRKDConfig, key: str = "metrics") -> dict:
    """Mean and SD over folds of accuracy and AUC, per student and variant, and of the teacher; ``key``:
    ``"metrics"`` (each fold's test set) or ``"holdout_metrics"`` (the hold-out patients)."""
    summary = {"teacher": {m: mean_sd([estimate(f["teacher"][key], m) for f in per_fold])
                           for m in ("accuracy", "auc")}}
    for name in config.students:
        for variant in config.variants:
            name_variant = f"{name}/{variant}"
            summary[name_variant] = {
                m: mean_sd([estimate(f["students"][name_variant][key], m) for f in per_fold])
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
            text = pct(cell)
            cells.append(f"**{text}**" if cell["mean"] == best[s] else text)
        rows.append([VARIANTS[variant][0], *cells])
    rows.append([f"Teacher ({config.teacher})", *[pct(summary["teacher"][metric])] * len(config.students)])
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


ORDER = ("base", "kd", "ul", "kd_ul")


def finding(results: dict, config: DRKDConfig) -> dict[str, Any]:
    """Whether 000's finding, Base < KD < UL < KD+UL for every student (mean over folds), held in test accuracy
    (Table 1) and AUC (Table 2).

    Returns:
        ``{"verdict": "held" | "held in part" | "did not hold" | "not tested", "accuracy": {student: bool},
        "auc": {student: bool}, "folds": n, "test": test images per fold}``; ``"not tested"`` when a variant of
        the four was not run.

    Example:
        >>> finding(results, config)["accuracy"]
        {'simple10': True, 'vgg16_d2': False, 'vgg16_d4': False}
    """
    folds = results.get("folds") or []
    out = {"folds": len(folds), "test": sorted({f["test"] for f in folds if "test" in f}),
           "accuracy": ordering(results, config, "accuracy"), "auc": ordering(results, config, "auc")}
    held = [*out["accuracy"].values(), *out["auc"].values()]
    if not set(ORDER) <= set(config.variants) or not held:
        out["verdict"] = "not tested"
    else:
        out["verdict"] = "held" if all(held) else "held in part" if any(held) else "did not hold"
    return out


def finding_sentence(results: dict, config: DRKDConfig) -> str:
    """One sentence: did 000's finding hold on this run, per student and metric.

    Example:
        >>> finding_sentence(results, config)
        "Paper's finding (Base < KD < UL < KD+UL for every student, mean over 2 folds of 324 test images each):
        held in part on this run: in accuracy for Simple10, not for VGG/2, VGG/4; in AUC for Simple10, VGG/4,
        not for VGG/2."
    """
    result = finding(results, config)
    tests = "/".join(str(n) for n in result["test"]) or "?"
    claim = (f"Paper's finding (Base < KD < UL < KD+UL for every student, mean over {result['folds']} fold(s) of "
             f"{tests} test images each)")
    if result["verdict"] == "not tested":
        return f"{claim}: not tested on this run (it needs the variants {', '.join(ORDER)})."

    def students(by_student: dict[str, bool]) -> str:
        yes = [STUDENT_TITLES.get(s, s) for s, ok in by_student.items() if ok]
        no = [STUDENT_TITLES.get(s, s) for s, ok in by_student.items() if not ok]
        if not no:
            return "for every student"
        if not yes:
            return "for no student"
        return f"for {', '.join(yes)}, not for {', '.join(no)}"

    return (f"{claim}: {result['verdict']} on this run: in accuracy {students(result['accuracy'])}; in AUC "
            f"{students(result['auc'])}.")


def table_ci(results: dict, config: DRKDConfig, metric: str = "auc", key: str = "metrics") -> str:
    """``metric`` (%) [95% CI, patient-clustered bootstrap] on each fold's test set (``key="holdout_metrics"``:
    on the hold-out patients) per fold, folds separated by ``/``: rows are training methods, columns students."""
    folds = results["folds"]

    def cell(get) -> str:
        return " / ".join(format_ci(get(f)[key].get(metric)) for f in folds)

    rows = [[VARIANTS[v][0], *[cell(lambda f, s=s, v=v: f["students"][f"{s}/{v}"]) for s in config.students]]
            for v in config.variants]
    rows.append([f"Teacher ({config.teacher})", cell(lambda f: f["teacher"]), *[""] * (len(config.students) - 1)])
    return markdown_table(["Training method", *[STUDENT_TITLES.get(s, s) for s in config.students]], rows)


def holdout_lines(results: dict, config: DRKDConfig) -> list[str]:
    """The hold-out tables (AUC mean ± SD over folds, AUC [95% CI] per fold's models) when the run kept
    patients out of every fold (``holdout_fraction``); else no line.

    Example:
        >>> holdout_lines({"folds": [], "summary": {}}, config)  # a run without a hold-out
        []
    """
    if "summary_holdout" not in results:
        return []
    images = results.get("data", {}).get("holdout", {}).get("images", "?")
    return [
        f"## Hold-out ({images} images of patients in no fold): AUC (%), mean ± SD over the folds' models",
        "",
        table({"summary": results["summary_holdout"]}, config, "auc"),
        "",
        "AUC (%) [95% CI] on the hold-out, per fold's models",
        "",
        table_ci(results, config, "auc", "holdout_metrics"),
        "",
    ]


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
    """``report.md``: the two tables, the per-fold CIs, the finding, the paper's numbers and the choices we
    made."""
    plot = plot_methods(results, config, out_dir / "methods.png")
    folds = results["folds"]
    lines = [
        "# Study 000: knowledge distillation with unlabeled random images",
        "",
        f"{len(folds)} fold(s) of a {config.folds}-fold patient-level cross-validation; "
        f"{config.image_size}x{config.image_size} px; teacher {config.teacher} "
        f"(weights: {config.teacher_weights or 'random'}); epochs teacher {config.teacher_epochs}, "
        f"(a) UL {config.ul_epochs}, (b) KD {config.kd_epochs}, (c) hard {config.hard_epochs}.",
        batch_norm_sentence(config.bn_recalibration_batches),
        "",
        "## Table 1: accuracy (%), mean ± SD over folds",
        "",
        table(results, config, "accuracy"),
        "",
        "## Table 2: AUC (%), mean ± SD over folds",
        "",
        table(results, config, "auc"),
        "",
        f"## AUC (%) [95% CI, patient-clustered bootstrap] per fold ({' / '.join(str(f['test']) for f in folds)}"
        " test images)",
        "",
        table_ci(results, config, "auc"),
        "",
        *holdout_lines(results, config),
        f"![methods]({plot.name})",
        "",
        finding_sentence(results, config),
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


def summary_lines(results: dict, config: DRKDConfig) -> list[str]:
    """The one-screen summary printed at the end of a run: Tables 1 and 2, the per-fold CIs and the finding."""
    return [
        f"Study 000, {len(results['folds'])} fold(s): Table 1, accuracy (%), mean ± SD over folds",
        "",
        table(results, config, "accuracy"),
        "",
        "Table 2: AUC (%), mean ± SD over folds",
        "",
        table(results, config, "auc"),
        "",
        f"AUC (%) [95% CI] per fold ({' / '.join(str(f['test']) for f in results['folds'])} test images)",
        "",
        table_ci(results, config, "auc"),
        "",
        *holdout_lines(results, config),
        finding_sentence(results, config),
    ]
