"""The report of the OCT student-teacher study (002): tables in the shape of its Table 2, the time-vs-accuracy
and accuracy-vs-fraction figures, ROC curves, and a plain recommendation of which student to deploy.

Everything here reads the ``results`` dict that :mod:`kd_keras.studies.oct_student_teacher` writes to
``results.json``, so a report can be regenerated from a finished run without retraining.
"""

from __future__ import annotations

from pathlib import Path

from kd_keras.evaluation.plots import plot_accuracy_vs_fraction, plot_roc_curves, plot_time_vs_accuracy
from kd_keras.evaluation.report import format_ci, markdown_table

TEACHER_FAMILY = "teacher (resnet50)"


def _sets(results: dict) -> list[str]:
    """Evaluation sets in report order: validation first, then each test set."""
    return ["validation", *results["data"]["test_sets"]]


def _row(label: str, evals: dict, sets: list[str]) -> list[str]:
    row = [label]
    for s in sets:
        e = evals.get(s, {})
        row += [format_ci(e.get("auc")), format_ci(e.get("sensitivity")), format_ci(e.get("specificity"))]
    return row


def table_sensitivity_specificity(results: dict) -> str:
    """Table 2 of 002: AUC, sensitivity and specificity with 95% clustered-bootstrap CIs per evaluation set, for
    the teacher and each student with and without the student-teacher framework (``+ST``)."""
    sets = _sets(results)
    headers = ["model"]
    for s in sets:
        headers += [f"{s} AUC [95% CI]", f"{s} sensitivity", f"{s} specificity"]
    rows = [_row(f"{results['teacher']['name']} (teacher)", results["teacher"]["eval"], sets)]
    for name, st in results["students"].items():
        rows.append(_row(name, st["baseline"]["eval"], sets))
        best = st.get("student_teacher")
        if best:
            rows.append(_row(f"{name}+ST ({best['method']}, {int(100 * best['fraction'])}% unlabeled)",
                             best["eval"], sets))
    return markdown_table(headers, rows)


def table_fractions(results: dict) -> str:
    """Best validation accuracy of each student at each unlabeled fraction and method (002 Fig. 4 as numbers)."""
    columns = sorted({(r["method"], r["fraction"]) for st in results["students"].values() for r in st["runs"]},
                     key=lambda mf: (mf[0] != "baseline", mf[0], mf[1]))
    headers = ["student"] + [f"{m} {int(100 * f)}%" for m, f in columns]
    rows = []
    for name, st in results["students"].items():
        best = {}
        for r in st["runs"]:
            key = (r["method"], r["fraction"])
            best[key] = max(best.get(key, 0.0), r["best_val_accuracy"])
        rows.append([name] + [f"{100 * best[c]:.2f}" if c in best else "-" for c in columns])
    return markdown_table(headers, rows)


def table_latency(results: dict) -> str:
    """Per-volume inference time of every model in every runtime, with the speed-up over the teacher."""
    lat = results.get("latency", {})
    if not lat:
        return "(latency not measured)"
    runtimes = sorted({rt for m in lat["models"].values() for rt in m["seconds_per_volume"]})
    headers = ["model", "parameters", "multiply-adds"] + [f"{rt} s/volume (speed-up)" for rt in runtimes]
    rows = []
    for name, m in lat["models"].items():
        row = [name, f"{m['params']:,}", f"{m['macs'] / 1e6:,.1f} M"]
        for rt in runtimes:
            t = m["seconds_per_volume"].get(rt)
            su = m.get("speedup", {}).get(rt)
            row.append("-" if t is None else f"{t:.3f}" + (f" ({su:.2f}x)" if su else ""))
        rows.append(row)
    return markdown_table(headers, rows)


def recommend(results: dict) -> str:
    """A plain recommendation: the student with the highest test AUC (validation if no test set) among those
    faster than the teacher, with its speed-up, and how far it is from the teacher."""
    sets = results["data"]["test_sets"] or ["validation"]
    key_set = sets[0]
    runtime = results.get("latency", {}).get("primary_runtime")
    teacher_auc = results["teacher"]["eval"][key_set]["auc"]["estimate"]
    candidates = []
    for name, st in results["students"].items():
        best = st.get("student_teacher") or st["baseline"]
        auc = best["eval"][key_set]["auc"]["estimate"]
        speed = None
        if runtime:
            speed = results["latency"]["models"].get(name, {}).get("speedup", {}).get(runtime)
        candidates.append((auc, speed, name, best))
    if not candidates:
        return "No student was trained."
    auc, speed, name, best = max(candidates, key=lambda c: (c[0], c[1] or 0))
    how = "labeled images only" if best.get("method", "baseline") == "baseline" else (
        f"the student-teacher framework ({best['method']} labels, {int(100 * best['fraction'])}% of the unlabeled "
        "pool)")
    text = (f"Deploy **{name}**, trained with {how}: AUC {auc:.3f} on `{key_set}` against the teacher's "
            f"{teacher_auc:.3f}")
    if speed:
        text += f", and {speed:.1f}x faster than the teacher per volume in {runtime}"
    text += "."
    gap = teacher_auc - auc
    if gap > 0.02:
        text += (f" It still trails the teacher by {gap:.3f} AUC: more unlabeled images or a larger student may "
                 "close the gap; check its sensitivity at the operating point before clinical use.")
    return text


def write_plots(results: dict, out_dir: Path, roc_data: dict | None = None) -> list[Path]:
    """Time vs accuracy (Fig. 2/3), accuracy vs unlabeled fraction (Fig. 4), ROC curves on the first test set."""
    out_dir = Path(out_dir)
    written = []
    lat = results.get("latency", {})
    runtime = lat.get("primary_runtime")
    if runtime:
        points = []
        t_lat = lat["models"].get(results["teacher"]["name"], {}).get("seconds_per_volume", {}).get(runtime)
        if t_lat is not None:
            val = results["teacher"]["eval"]["validation"]["accuracy"]
            points.append({"name": results["teacher"]["name"], "family": TEACHER_FAMILY,
                           "seconds_per_volume": t_lat, "accuracy": val["estimate"],
                           "low": val.get("low"), "high": val.get("high"), "marker": "s"})
        for name, st in results["students"].items():
            s_lat = lat["models"].get(name, {}).get("seconds_per_volume", {}).get(runtime)
            if s_lat is None:
                continue
            for kind, marker in (("baseline", "o"), ("student_teacher", "^")):
                ev = st.get(kind)
                if ev:
                    acc = ev["eval"]["validation"]["accuracy"]
                    points.append({"name": name + ("+ST" if kind != "baseline" else ""), "family": st["family"],
                                   "seconds_per_volume": s_lat, "accuracy": acc["estimate"],
                                   "low": acc.get("low"), "high": acc.get("high"), "marker": marker})
        written.append(plot_time_vs_accuracy(points, out_dir / "time_vs_accuracy.png",
                                             f"Per-volume time ({runtime}) vs validation accuracy"))
    curves = {}
    for name, st in results["students"].items():
        pts = {}
        for r in st["runs"]:
            if r["method"] in ("baseline", "pseudo"):
                pts[r["fraction"]] = max(pts.get(r["fraction"], 0.0), r["best_val_accuracy"])
        curves[name] = [{"fraction": f, "accuracy": a} for f, a in sorted(pts.items())]
    written.append(plot_accuracy_vs_fraction(curves, out_dir / "accuracy_vs_unlabeled_fraction.png"))
    if roc_data:
        written.append(plot_roc_curves(roc_data, out_dir / "roc.png", "ROC on " + next(iter(_sets(results)[1:]),
                                                                                       "validation")))
    return written


def write_report(results: dict, out_dir: Path, roc_data: dict | None = None) -> Path:
    """Write ``report.md`` (and the plots) under ``out_dir``."""
    out_dir = Path(out_dir)
    plots = write_plots(results, out_dir, roc_data)
    cfg = results["config"]
    d = results["data"]
    lines = [
        "# OCT student-teacher study",
        "",
        f"Data: `{d['source']}`; {d['labeled_train']} labeled training images, {d['validation']} validation, "
        f"{d['unlabeled']} unlabeled; test sets: "
        + (", ".join(f"`{k}` ({v})" for k, v in d["test_sizes"].items()) or "none") + ".",
        f"Preset `{cfg['preset']}`, image size {cfg['image_size']}, seed {cfg['seed']}, teacher "
        f"`{results['teacher']['name']}` (weights: {cfg['teacher_weights']}).",
    ]
    if d.get("skipped_files"):
        lines.append(f"Skipped {len(d['skipped_files'])} unreadable files (listed in results.json).")
    lines += ["", "## Recommendation", "", recommend(results), "",
              "## Sensitivity and specificity (95% clustered-bootstrap CIs)", "",
              f"Operating point: positive-class probability >= {cfg['threshold']}. Clusters: "
              f"{d.get('cluster_unit', 'patient')}.", "", table_sensitivity_specificity(results), "",
              "## Best validation accuracy by unlabeled fraction", "", table_fractions(results), "",
              "## Per-volume inference", "",
              f"{results.get('latency', {}).get('images_per_volume', '-')} images per volume.", "",
              table_latency(results), "", "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
