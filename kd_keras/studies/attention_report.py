"""The report of study 004 from its ``results.json``: test AUC by training-set size, the beta grid, the learning
curves (the paper's Fig. 4), AUC against training-set size (Fig. 3) and the over-fitting figures.

Every function reads only ``results`` (the settings are ``results["config"]``), so a report can be rebuilt from a
finished run's ``results.json``.

Example:

```python
import json
from kd_keras.studies import attention_report

results = json.loads(open("runs/attention_transfer/results.json").read())
attention_report.write_report(results, Path("runs/attention_transfer"))
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kd_keras.engine.predict import estimate
from kd_keras.evaluation.report import batch_norm_sentence, format_ci, intervals_apart, markdown_table

__all__ = ["finding", "finding_sentence", "plot_curves", "plot_sizes", "report_text", "selected", "sizes",
           "summary_lines", "table_betas", "table_sizes", "write_report"]


def selected(results: dict[str, Any], repetition: int | None = 0) -> list[dict[str, Any]]:
    """The runs whose test results are reported: TL and the AT run with the beta chosen on validation (of one
    repetition; ``None``: of every repetition)."""
    return [r for r in results["runs"] if r.get("selected")
            and (repetition is None or r.get("repetition", 0) == repetition)]


def sizes(results: dict[str, Any]) -> list[float]:
    """The training-set sizes of the sweep: ``train_sizes`` (image counts) or ``train_fractions``."""
    config = results["config"]
    return list(config.get("train_sizes") or config["train_fractions"])


def _size(run: dict[str, Any]) -> float:
    return run.get("size", run.get("fraction"))


def _mean_sd(results: dict[str, Any], size: float, student: str, method: str) -> str | None:
    """``mean +- SD (n=k)`` of the test AUC (%) over the repetitions, or ``None`` for a single repetition."""
    row = next((r for r in results.get("repeated", []) if r["size"] == size and r["student"] == student
                and r["method"] == method), None)
    if row is None or row["n"] < 2 or "auc" not in row:
        return None
    return f"{100 * row['auc']['mean']:.2f} +- {100 * row['auc']['sd']:.2f} (n={row['n']})"


def table_sizes(results: dict[str, Any]) -> str:
    """Table IV/V-like: test AUC [95% CI] per training size, student and method (TL; AT with the chosen beta);
    with repetitions, the mean +- SD of the repetitions' test AUC (the first repetition's CI is not shown)."""
    config = results["config"]
    headers = ["train images"]
    for s in config["students"]:
        headers += [f"{s} TL", f"{s} AT (beta)"]
    rows = []
    for size in sizes(results):
        runs = [r for r in selected(results) if _size(r) == size]
        row = [str(runs[0]["train"]) if runs else "?"]
        for s in config["students"]:
            tl = next((r for r in runs if r["student"] == s and r["method"] == "tl"), None)
            at = next((r for r in runs if r["student"] == s and r["method"] == "at"), None)
            tl_text = _mean_sd(results, size, s, "tl") or (format_ci(tl["test"]["auc"]) if tl else None)
            at_text = _mean_sd(results, size, s, "at") or (format_ci(at["test"]["auc"]) if at else None)
            row.append(tl_text or "-")
            row.append(f"{at_text} ({at['beta']:g})" if at else "-")
        rows.append(row)
    return markdown_table(headers, rows)


def table_betas(results: dict[str, Any]) -> str:
    """The best validation score of every beta of the grid (its mean over the repetitions), per size and
    student."""
    config = results["config"]
    headers = ["train images", "student", "TL", *[f"beta={b:g}" for b in config["betas"]]]
    rows = []
    for size in sizes(results):
        for s in config["students"]:
            runs = [r for r in results["runs"] if _size(r) == size and r["student"] == s]
            if not runs:
                continue
            scores: dict[Any, list[float]] = {}
            for r in runs:
                scores.setdefault("tl" if r["method"] == "tl" else r["beta"], []).append(r["val_auc"])
            cells = {k: sum(v) / len(v) for k, v in scores.items()}
            rows.append([runs[0]["train"], s, f"{100 * cells['tl']:.2f}",
                         *[f"{100 * cells[b]:.2f}" if b in cells else "-" for b in config["betas"]]])
    return markdown_table(headers, rows)


def finding(results: dict[str, Any]) -> dict[str, Any]:
    """Whether 004's finding (attention transfer regularises small-data training) held: per student, the test AUC
    of AT (the beta chosen on validation) above TL at the smallest training size (the mean over repetitions).

    Returns:
        ``{"verdict": "held" | "held in part" | "did not hold" | "not tested", "train": training images at the
        smallest size, "students": {student: {"at", "tl", "above", "ci_apart", "n"}}}``; ``ci_apart`` is ``None``
        with repetitions (their spread is in the table) or without CIs.

    Example:
        >>> finding(results)["students"]["densenet40"]["above"]
        True
    """
    size = min(sizes(results))
    runs = [r for r in selected(results, None) if _size(r) == size and "test" in r]
    students: dict[str, dict[str, Any]] = {}
    for s in results["config"]["students"]:
        by_method = {m: [r for r in runs if r["student"] == s and r["method"] == m] for m in ("tl", "at")}
        if not by_method["tl"] or not by_method["at"]:
            continue
        tl, at = (sum(estimate(r["test"], "auc") for r in by_method[m]) / len(by_method[m]) for m in ("tl", "at"))
        single = len(by_method["tl"]) == 1 and len(by_method["at"]) == 1
        at_auc, tl_auc = by_method["at"][0]["test"]["auc"], by_method["tl"][0]["test"]["auc"]
        apart = intervals_apart(at_auc, tl_auc) if single else None
        students[s] = {"at": at, "tl": tl, "above": bool(at > tl), "ci_apart": apart, "n": len(by_method["tl"]),
                       "beta": by_method["at"][0]["beta"]}
    above = [v["above"] for v in students.values()]
    verdict = ("not tested" if not above else "held" if all(above) else "held in part" if any(above)
               else "did not hold")
    return {"verdict": verdict, "train": runs[0]["train"] if runs else None, "students": students}


def finding_sentence(results: dict[str, Any]) -> str:
    """One sentence: did 004's finding hold on this run, with the numbers it was decided on.

    Example:
        >>> finding_sentence(results)
        "Paper's finding (attention transfer above transfer learning at the smallest training size, 44 images,
        test AUC): held on this run's 324 test images: densenet40 AT 81.30 (beta 1) vs TL 78.70 (above, 95% CIs
        overlap)."
    """
    result = finding(results)
    claim = ("Paper's finding (attention transfer above transfer learning at the smallest training size"
             + (f", {result['train']} images" if result["train"] else "") + ", test AUC)")
    if result["verdict"] == "not tested":
        return f"{claim}: not tested on this run (no TL and AT pair was evaluated at that size)."
    images = (results.get("split") or {}).get("test")
    parts = []
    for s, v in result["students"].items():
        if v["ci_apart"] is None:
            spread = f"mean of {v['n']} repetitions" if v["n"] > 1 else "no CIs"
        else:
            spread = "95% CIs apart" if v["ci_apart"] else "95% CIs overlap"
        parts.append(f"{s} AT {100 * v['at']:.2f} (beta {v['beta']:g}) vs TL {100 * v['tl']:.2f} "
                     f"({'above' if v['above'] else 'not above'}, {spread})")
    where = f"this run's {images} test images" if images else "this run's test set"
    within = any(v["above"] and v["ci_apart"] is False for v in result["students"].values())
    verdict = result["verdict"] + (" (in direction only where the 95% CIs overlap)" if within else "")
    return f"{claim}: {verdict} on {where}: " + "; ".join(parts) + "."


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Fig. 4: validation AUC against training step, TL vs AT (chosen beta), per student, smallest size."""
    plt = _pyplot()
    config = results["config"]
    students = config["students"]
    fraction = min(sizes(results))
    fig, axes = plt.subplots(1, len(students), figsize=(5 * len(students), 4), squeeze=False)
    for ax, s in zip(axes[0], students, strict=True):
        for r in selected(results):
            if _size(r) == fraction and r["student"] == s:
                steps, aucs = zip(*r["log"]["curve"], strict=True) if r["log"]["curve"] else ((), ())
                label = "TL" if r["method"] == "tl" else f"AT (beta={r['beta']:g})"
                ax.plot(steps, aucs, marker=".", label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {_metric(results)}")
        ax.set_title(f"{s}, {fraction} training images" if isinstance(fraction, int)
                     else f"{s}, {fraction:g} of the training set")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _metric(results: dict[str, Any]) -> str:
    """The validation score the runs were selected by (``val_metric`` of the runs; AUC for older results)."""
    metric = next((r["val_metric"] for r in results["runs"] if "val_metric" in r), "auc")
    return {"auc": "AUC", "weighted_f1": "weighted F1"}.get(metric, metric)


def plot_sizes(results: dict[str, Any], path: Path) -> Path:
    """Test AUC against training-set size (the paper's Fig. 3), TL and AT per student."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in results["config"]["students"]:
        for method in ("tl", "at"):
            runs = sorted((r for r in selected(results) if r["student"] == s and r["method"] == method),
                          key=lambda r: r["train"])
            ax.plot([r["train"] for r in runs], [estimate(r["test"], "auc") for r in runs], marker="o",
                    label=f"{s} {method.upper()}")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_text(results: dict[str, Any]) -> str:
    """``report.md``'s text: the size/method table, the beta grid, the figures and the over-fitting figures."""
    config = results["config"]
    delay = results["overfitting"]
    lines = [
        "# Study 004: attention transfer (DenseNet-121 teacher)",
        "",
        f"Split (images, whole patients) train/val/test: {results['split']}; {config['image_size']} px; teacher "
        f"weights "
        f"{config['teacher_weights'] if config['teacher_weights'] != 'none' else 'random'}, fine-tuned here for "
        f"{config['teacher_epochs']} epochs (test AUC {format_ci(results['teacher']['test']['auc'])}); students "
        f"{', '.join(config['students'])}; Adam {config['learning_rate']:g} halved every "
        f"{config['halve_every_epochs']} epochs, {config['epochs']} epochs, best "
        f"{'epoch' if config.get('validate_every') == 'epoch' else 'validation point'} by validation "
        f"{_metric(results)}; L_AT variant '{config['variant']}'; {config.get('repetitions', 1)} repetition(s); "
        f"augmentation '{config.get('augmentation', 'study')}'.",
        batch_norm_sentence(config["bn_recalibration_batches"]),
        "",
        f"## Test AUC (%) [95% CI] by training-set size (AT: beta chosen on validation; "
        f"{results.get('split', {}).get('test', '?')} test images)",
        "",
        table_sizes(results),
        "",
        finding_sentence(results),
        "",
        f"## Beta grid: best validation {_metric(results)} (%)",
        "",
        table_betas(results),
        "",
        "![learning curves](learning_curves.png) ![AUC vs size](auc_vs_size.png)",
        "",
        "## Regularising effect (validation curve): step of the best AUC, drop after it, SD in the second half",
        "",
        markdown_table(["run", "best step", "drop after best", "SD 2nd half"],
                       [[k, v["best_step"], f"{v['drop_after_best']:.3f}", f"{v['sd_second_half']:.3f}"]
                        for k, v in delay.items()]),
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: Path) -> Path:
    """``report.md``, ``learning_curves.png`` and ``auc_vs_size.png`` in ``out``."""
    out = Path(out)
    plot_curves(results, out / "learning_curves.png")
    plot_sizes(results, out / "auc_vs_size.png")
    path = out / "report.md"
    path.write_text(report_text(results))
    return path


def summary_lines(results: dict[str, Any]) -> list[str]:
    """What the run prints at the end: the report's tables (as the script printed them before the runner)."""
    return report_text(results).rstrip("\n").splitlines()
