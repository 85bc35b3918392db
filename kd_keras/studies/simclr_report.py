"""The report of study 003 from its ``results.json``: AUC [95% CI] of every method on every test set, the
pseudo-labels, the t-SNE, and one sentence saying whether the paper's finding held on the run.

The paper's finding, as tested here: the SimCLR + KD student scores a higher test AUC than supervised training on
the same labeled fraction, and so do FixMatch and MixMatch. :func:`finding` computes it from the numbers (so a run
where it fails says so) and :func:`finding_sentence` writes it.

Example:

```python
import json
from kd_keras.studies import simclr_report

results = json.loads(open("runs/simclr_distill/results.json").read())
print(simclr_report.finding_sentence(results))
```
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kd_keras.engine.predict import estimate
from kd_keras.evaluation.report import batch_norm_sentence, format_ci, intervals_apart, markdown_table
from kd_keras.studies.simclr_config import METHODS

__all__ = ["finding", "finding_sentence", "report_text", "summary_lines", "write_report"]

SEMI_SUPERVISED = ("fixmatch", "mixmatch")
TITLES = {"student": "the SimCLR + KD student", "fixmatch": "FixMatch", "mixmatch": "MixMatch"}


def finding(results: dict[str, Any], test: str = "test") -> dict[str, Any]:
    """Whether 003's finding held on the test set ``test``: each of the student, FixMatch and MixMatch (those run)
    against supervised training on the labeled fraction, by the AUC point estimates.

    Returns:
        ``{"verdict": "held" | "held in part" | "did not hold" | "not tested", "supervised": AUC,
        "comparisons": {method: {"auc", "above", "ci_apart"}}, "images": test images}``; ``"not tested"`` when
        the supervised baseline or the student was not run, or the supervised AUC is undefined.

    Example:
        >>> finding({"test": {"supervised": {"test": {"auc": 0.8}}, "student": {"test": {"auc": 0.9}}}})["verdict"]
        'held'
    """
    scores = results["test"]
    images = (results.get("split") or {}).get(test)
    if "supervised" not in scores or "student" not in scores:
        return {"verdict": "not tested", "supervised": None, "comparisons": {}, "images": images}
    supervised = scores["supervised"][test]["auc"]
    reference = estimate({"auc": supervised}, "auc")
    comparisons = {}
    for method in ("student", *SEMI_SUPERVISED):
        if method not in scores:
            continue
        auc = scores[method][test]["auc"]
        value = estimate({"auc": auc}, "auc")
        comparisons[method] = {"auc": value, "above": bool(value > reference),
                               "ci_apart": intervals_apart(auc, supervised)}
    if not math.isfinite(reference):
        verdict = "not tested"
    elif all(c["above"] for c in comparisons.values()):
        verdict = "held"
    elif any(c["above"] for c in comparisons.values()):
        verdict = "held in part"
    else:
        verdict = "did not hold"
    return {"verdict": verdict, "supervised": reference, "comparisons": comparisons, "images": images}


def finding_sentence(results: dict[str, Any], test: str = "test") -> str:
    """One sentence: did the paper's finding hold on this run, with the numbers it was decided on.

    Example:
        >>> finding_sentence(results)
        "Paper's finding (... above supervised training on the labeled fraction, test AUC): held in part on this
        run's 324 test images: the SimCLR + KD student 98.60 vs supervised 97.10 (95% CIs overlap); FixMatch
        90.00 (not above); MixMatch 36.40 (not above)."
    """
    result = finding(results, test)
    names = [TITLES[m] for m in result["comparisons"]] or [TITLES["student"]]
    methods = names[0] if len(names) == 1 else "each of " + ", ".join(names[:-1]) + " and " + names[-1]
    claim = f"Paper's finding ({methods} above supervised training on the labeled fraction, test AUC)"
    if result["verdict"] == "not tested" and result["supervised"] is None:
        return f"{claim}: not tested on this run (it needs the supervised baseline and the student)."
    where = f"this run's {result['images']} test images" if result["images"] else f"test set {test!r}"
    parts = []
    for method, c in result["comparisons"].items():
        ci = {True: "95% CIs apart", False: "95% CIs overlap", None: "no CIs"}[c["ci_apart"]]
        if method == "student":
            parts.append(f"{TITLES[method]} {100 * c['auc']:.2f} vs supervised {100 * result['supervised']:.2f} "
                         f"({'above' if c['above'] else 'not above'}, {ci})")
        else:
            parts.append(f"{TITLES[method]} {100 * c['auc']:.2f} ({'above' if c['above'] else 'not above'}, {ci})")
    within = any(c["above"] and c["ci_apart"] is False for c in result["comparisons"].values())
    verdict = result["verdict"] + (" (in direction only where the 95% CIs overlap)" if within else "")
    return f"{claim}: {verdict} on {where}: " + "; ".join(parts) + "."


def report_text(results: dict[str, Any]) -> str:
    """``report.md``: AUC [95% CI] of every method on every test set, the finding, the pseudo-labels, the
    t-SNE."""
    from kd_keras.studies.data_checks import data_checks_section

    config = results["config"]
    tests = [t for t in results["split"] if t not in ("labeled", "pool")]
    rows = [[METHODS.get(m, m), *[format_ci(results["test"][m][t]["auc"]) for t in tests]]
            for m in ("supervised", "supervised_full", "fixmatch", "mixmatch", "teacher", "student")
            if m in results["test"]]
    pl = results["pseudo_labels"]
    lines = [
        "# Study 003: SimCLR pretraining + knowledge distillation",
        "",
        f"Labeled fraction {config['labeled_fraction']:g} ({results['split']['labeled']} images), pool "
        f"{results['split']['pool']}; {config['image_size']} px; teacher {config['teacher']} (SimCLR "
        f"{config['simclr_epochs']} epochs), student {config['student']}"
        f"{'' if config['student'] == 'densenet161' else ' (the paper: DenseNet-161)'}; supervised baselines "
        f"{config.get('supervised_model') or config['teacher']}.",
        batch_norm_sentence(config["bn_recalibration_batches"]),
        "",
        "## AUC (%) [95% CI, patient-clustered bootstrap]",
        "",
        markdown_table(["Method", *[f"{t} ({results['split'][t]} images)" for t in tests]], rows),
        "",
        finding_sentence(results),
        "",
        f"Pseudo-labels: {pl['positive']} of {pl['total']} positive at the operating point "
        f"{pl.get('operating_point', 0.5)} (threshold {pl.get('threshold', 0.5):.3f}; labeled prevalence "
        f"{100 * pl.get('labeled_prevalence', float('nan')):.0f}%); agreement with the hidden labels "
        f"{100 * pl['agreement_with_hidden_labels']:.1f}%"
        + (f" (at the paper's 0.5: {pl['at_0.5']['positive']} positive, "
           f"{100 * pl['at_0.5']['agreement_with_hidden_labels']:.1f}%)." if "at_0.5" in pl else "."),
        "",
        "![t-SNE](tsne.png)",
        "",
        data_checks_section(results),
    ]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write ``report.md`` (:func:`report_text`) into ``out``; returns its path."""
    path = Path(out) / "report.md"
    path.write_text(report_text(results))
    return path


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The report as printed at the end of a run (its last line before the data checks is the finding)."""
    return report_text(results).rstrip("\n").splitlines()
