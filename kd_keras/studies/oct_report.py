"""The report of the OCT student-teacher study (002): tables in the shape of its Table 2, the time-vs-accuracy
and accuracy-vs-fraction figures, ROC curves, and a plain recommendation of which student to deploy.

Everything here reads the ``results`` dict that :mod:`kd_keras.studies.oct_student_teacher` writes to
``results.json``, so a report can be regenerated from a finished run without retraining.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kd_keras.evaluation.plots import plot_accuracy_vs_fraction, plot_roc_curves, plot_time_vs_accuracy
from kd_keras.evaluation.report import batch_norm_sentence, format_ci, markdown_table
from kd_keras.studies.data_checks import data_checks_section


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


def _models(results: dict) -> list[tuple[str, dict]]:
    """(label, evaluations) of the teacher, each baseline and each best student-teacher run, in table order."""
    out = [(f"{results['teacher']['name']} (teacher)", results["teacher"]["eval"])]
    for name, st in results["students"].items():
        out.append((name, st["baseline"]["eval"]))
        if st.get("student_teacher"):
            out.append((f"{name}+ST", st["student_teacher"]["eval"]))
    return out


def table_per_class(results: dict, set_name: str) -> str:
    """Multi-class: each class's one-vs-rest sensitivity and specificity (95% clustered CIs) and AUC on
    ``set_name``, for every model."""
    classes = results["data"]["class_names"]
    headers = ["model"] + [f"{c} {m}" for c in classes for m in ("sensitivity", "specificity", "AUC")]
    rows = []
    for label, evals in _models(results):
        per_class = evals.get(set_name, {}).get("per_class") or []
        row = [label]
        for j in range(len(classes)):
            entry = per_class[j] if j < len(per_class) else {}
            row += [format_ci(entry.get("sensitivity")), format_ci(entry.get("specificity")),
                    "-" if entry.get("auc") is None else f"{entry['auc']:.3f}"]
        rows.append(row)
    return markdown_table(headers, rows)


def table_confusion(results: dict, set_name: str) -> str:
    """Multi-class: the confusion matrix (rows: true class, columns: predicted) of every model on ``set_name``."""
    classes = results["data"]["class_names"]
    blocks = []
    for label, evals in _models(results):
        matrix = evals.get(set_name, {}).get("confusion_matrix")
        if matrix:
            rows = [[f"true {c}", *map(str, matrix[i])] for i, c in enumerate(classes)]
            blocks += [f"**{label}**", "", markdown_table(["", *(f"pred {c}" for c in classes)], rows), ""]
    return "\n".join(blocks)


def multiclass_section(results: dict) -> list[str]:
    """The per-class tables and confusion matrices of a multi-class run (empty for a binary one)."""
    if results["config"].get("task", "binary") != "multiclass":
        return []
    lines = []
    for set_name in results["data"]["test_sets"] or ["validation"]:
        lines += [f"## Per class on `{set_name}` (one-vs-rest of the most probable class; 95% clustered CIs)", "",
                  table_per_class(results, set_name), "", f"## Confusion matrices on `{set_name}`", "",
                  table_confusion(results, set_name), ""]
    return lines


def _run_label(r: dict) -> str:
    label = f"{r['method']} {int(round(100 * r['fraction']))}%"
    objective = r.get("objective") or {}
    if "temperature" in objective:
        label += f" (T={objective['temperature']:g}, alpha={objective['alpha']:g})"
    return label


def table_fractions(results: dict) -> str:
    """Every student run: best validation accuracy and AUC (over epochs, learning rates and runs; 002 Fig. 4 as
    numbers) and the AUC of the chosen epoch's model on each test set (point estimates)."""
    tests = results["data"]["test_sets"]
    headers = ["student", "run", "images per epoch", "best val accuracy", "best val AUC",
               *[f"{t} AUC" for t in tests], "learning rate", "epoch"]
    rows = []
    for name, st in results["students"].items():
        for r in st["runs"]:
            rows.append([name, _run_label(r), r.get("examples_per_epoch", "-"), _pct(r.get("best_val_accuracy")),
                         _num(r.get("best_val_auc")), *[_num(r.get("test_auc", {}).get(t)) for t in tests],
                         f"{r.get('learning_rate', 0):g}", r.get("best_epoch", "-")])
    return markdown_table(headers, rows)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


def table_latency(results: dict) -> str:
    """Per-volume inference time of every model in every runtime, with the speed-up over the teacher."""
    lat = results.get("latency", {})
    if not lat:
        return "(latency not measured)"
    runtimes = sorted({rt for m in lat["models"].values() for rt in m["seconds_per_volume"]})
    headers = ["model", "parameters", "multiply-adds"] + [f"{rt} s/volume (speed-up)" for rt in runtimes]
    fastest = any("fastest" in m for m in lat["models"].values())
    if fastest:  # each model in its fastest file that passed parity, against the teacher in its own
        headers.append("fastest passing file (speed-up over the teacher's fastest)")
    rows = []
    for name, m in lat["models"].items():
        params, macs = m.get("params"), m.get("macs")  # absent when no file of the model could be timed
        row = [name, "-" if params is None else f"{params:,}", "-" if macs is None else f"{macs / 1e6:,.1f} M"]
        for rt in runtimes:
            t = m["seconds_per_volume"].get(rt)
            su = m.get("speedup", {}).get(rt)
            failed = (m.get("parity_passed") or {}).get(rt) is False
            row.append("-" if t is None else f"{t:.3f}" + (f" ({su:.2f}x)" if su else "")
                       + (" parity failed" if failed else ""))
        if fastest:
            best = m.get("fastest") or {}
            row.append(f"{best['runtime']} {best['precision']} {best['median_s']:.3f} s"
                       + (f" ({best['speedup']:.1f}x)" if best.get("speedup") else "") if best else "-")
        rows.append(row)
    return markdown_table(headers, rows)


def _estimate(evals: dict, set_name: str, metric: str) -> float | None:
    value = evals.get(set_name, {}).get(metric)
    if isinstance(value, dict):
        value = value.get("estimate")
    return None if value is None or value != value else float(value)


def recommend(results: dict) -> str:
    """A plain recommendation: the student whose deployed model (its baseline or its student-teacher model,
    whichever validated better) has the highest validation AUC, ties broken by speed - chosen on validation so
    that the test sets stay untouched - with its figures on the first test set (validation when there is none),
    its speed-up over the teacher, and whether the unlabeled images helped it."""
    sets = results["data"]["test_sets"] or ["validation"]
    key_set = sets[0]
    runtime = results.get("latency", {}).get("primary_runtime")
    teacher_auc = _estimate(results["teacher"]["eval"], key_set, "auc")
    candidates = []
    for name, st in results["students"].items():
        best = st[st.get("deployed") or ("student_teacher" if st.get("student_teacher") else "baseline")]
        val_auc = _estimate(best["eval"], "validation", "auc")
        speed = None
        if runtime:
            speed = results["latency"]["models"].get(name, {}).get("speedup", {}).get(runtime)
        candidates.append((val_auc if val_auc is not None else -1.0, speed or 0.0, name, best, st))
    if not candidates:
        return "No student was trained."
    _, speed, name, best, st = max(candidates, key=lambda c: (round(c[0], 3), c[1]))
    auc = _estimate(best["eval"], key_set, "auc")
    if auc is None:
        return f"Deploy **{name}** (no AUC on `{key_set}`)."
    how = "labeled images only" if best.get("method", "baseline") == "baseline" else (
        f"the student-teacher framework ({best['method']} targets, {int(round(100 * best['fraction']))}% of the "
        "unlabeled pool)")
    sens = _estimate(best["eval"], key_set, "sensitivity")
    spec = _estimate(best["eval"], key_set, "specificity")
    text = f"Deploy **{name}**, trained with {how}: AUC {auc:.3f} on `{key_set}`"
    if teacher_auc is not None:
        text += f" (teacher {teacher_auc:.3f})"
    if sens is not None and spec is not None and results["config"].get("task", "binary") == "multiclass":
        text += f", mean per-class sensitivity {100 * sens:.1f}% and specificity {100 * spec:.1f}%"
    elif sens is not None and spec is not None:
        text += (f", sensitivity {100 * sens:.1f}% and specificity {100 * spec:.1f}% at probability >= "
                 f"{results['config']['threshold']}")
    if speed:
        text += f", {speed:.1f}x faster than the teacher per volume in {runtime}"
    text += "."
    baseline_auc = _estimate(st["baseline"]["eval"], key_set, "auc")
    transfer = st.get("student_teacher")
    transfer_auc = _estimate(transfer["eval"], key_set, "auc") if transfer else None
    if best is not st["baseline"] and baseline_auc is not None:
        change = auc - baseline_auc
        text += (f" The unlabeled images {'raised' if change > 0 else 'did not raise'} its AUC "
                 f"({baseline_auc:.3f} with the labeled images alone, {change:+.3f}).")
    elif transfer_auc is not None and baseline_auc is not None:
        text += " Its best student-teacher model validated no better than its baseline, so the baseline is deployed"
        if transfer_auc > baseline_auc:
            # Say so when the test set disagrees with validation: the choice is noisy, not the method useless.
            size = results["data"].get("validation")
            text += (f", although it scored higher on `{key_set}` ({transfer_auc:.3f} vs {baseline_auc:.3f}): "
                     f"{f'{size} validation images' if size else 'the validation set'} decided it; a larger "
                     "validation set would make the choice surer.")
        else:
            text += (f"; the unlabeled images did not help it on `{key_set}` either ({transfer_auc:.3f} vs "
                     f"{baseline_auc:.3f}).")
    if teacher_auc is not None and teacher_auc - auc > 0.02:
        text += (f" It trails the teacher by {teacher_auc - auc:.3f} AUC: more unlabeled images, more epochs or a "
                 "larger student may close the gap.")
    text += (" Check the sensitivity at the operating point on data from the deployment site before clinical "
             "use.")
    return text


def _roc_data(results: dict, out_dir: Path) -> dict:
    """``name -> (labels, scores)`` on the first test set from the saved predictions."""
    sets = results["data"]["test_sets"] or ["validation"]
    folder = Path(out_dir) / "predictions"
    curves = {}
    labels = [(results["teacher"]["name"], f"{results['teacher']['name']} (teacher)")]
    for name, st in results["students"].items():
        labels.append((f"{name}__baseline", name))
        if st.get("student_teacher"):
            labels.append((f"{name}__student_teacher", f"{name}+ST"))
    for stem, label in labels:
        path = folder / f"{stem}__{sets[0]}.npz"
        if path.is_file():
            with np.load(path) as saved:
                truth, scores = saved["labels"], saved["scores"]
            if scores.ndim == 2:  # multi-class: the normal-vs-abnormal curve, abnormal score = 1 - p(normal)
                names = list(results["data"]["class_names"])
                normal = names.index(results["config"].get("normal_class", "NORMAL")) if results["config"].get(
                    "normal_class", "NORMAL") in names else 0
                truth, scores = (truth != normal).astype(np.int64), 1.0 - scores[:, normal]
            curves[label] = (truth, scores)
    return curves


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
            points.append({"name": results["teacher"]["name"], "family": f"teacher ({results['teacher']['name']})",
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
            if r["method"] in ("baseline", "pseudo") and r.get("best_val_accuracy") is not None:
                pts[r["fraction"]] = max(pts.get(r["fraction"], 0.0), r["best_val_accuracy"])
        curves[name] = [{"fraction": f, "accuracy": a} for f, a in sorted(pts.items())]
    written.append(plot_accuracy_vs_fraction(curves, out_dir / "accuracy_vs_unlabeled_fraction.png"))
    roc_data = roc_data if roc_data is not None else _roc_data(results, out_dir)
    if roc_data:
        first = (results["data"]["test_sets"] or ["validation"])[0]
        written.append(plot_roc_curves(roc_data, out_dir / "roc.png", f"ROC on {first}"))
    return written


def table_pseudo_labels(results: dict) -> str:
    p = results.get("pseudo_labels", {})
    rows = [["unlabeled images", p.get("pool_size", "-")],
            ["pseudo-labels per class", ", ".join(f"{k}: {v}" for k, v in p.get("pseudo_label_counts", {}).items())],
            ["mean teacher confidence", _num(p.get("mean_confidence"))],
            ["teacher accuracy on its labeled training images", _pct(p.get("teacher_accuracy_on_labeled"))]]
    truth = p.get("truth_check")
    if truth:
        rows += [["agreement with the pool's true labels (analysis only)",
                  f"{_pct(truth['pseudo_label_accuracy'])}% of {truth['examples']}"],
                 ["pseudo-label sensitivity / specificity",
                  f"{_pct(truth.get('pseudo_label_sensitivity'))}% / {_pct(truth.get('pseudo_label_specificity'))}%"]]
    return markdown_table(["", ""], rows)


def table_export(results: dict) -> str:
    rows = []
    for name, st in results["students"].items():
        export = st.get("export") or {}
        for f in export.get("files", []):
            parity = f.get("parity") or {}
            verdict = "yes" if parity.get("passed") else "NO: " + "; ".join(parity.get("failures") or ["no report"])
            rows.append([name, Path(f["path"]).name, f.get("variant") or "-",
                         "-" if parity.get("max_relative_diff") is None else f"{parity['max_relative_diff']:.1e}",
                         _pct(parity.get("decision_agreement")), verdict])
        if export.get("error") and not any(f.get("parity") for f in export.get("files", [])):
            rows.append([name, "(export error)", "-", "-", "-", export["error"]])
    if not rows:
        return "(no exported files)"
    return markdown_table(["student", "file", "variant", "max relative diff", "decision agreement (%)",
                           "parity passed"], rows)


def predict_command(results: dict) -> str | None:
    """The ``kd-keras predict`` line for the recommended student's smallest file that passed its parity gate
    (int8, then fp16, dynamic, fp32 TFLite, then ONNX): what to run on a volume beside the instrument."""
    order = {"int8": 0, "fp16": 1, "dynamic": 2, "fp32": 3}
    candidates = []
    for name, student in results.get("students", {}).items():
        for f in (student.get("export") or {}).get("files", []):
            if (f.get("parity") or {}).get("passed"):
                rank = order.get(f.get("variant"), 4) if f.get("format") != "onnx" else 5
                candidates.append((name != _recommended(results), rank, f["path"]))
    if not candidates:
        return None
    return f"kd-keras predict {min(candidates)[2]} VOLUME_FOLDER_OR_TIFF ... --out predictions/"


def _recommended(results: dict) -> str | None:
    text = recommend(results)
    return next((name for name in results.get("students", {}) if f"Deploy **{name}**" in text), None)


def write_report(results: dict, out_dir: Path, roc_data: dict | None = None) -> Path:
    """Write ``report.md`` (and the plots) under ``out_dir``."""
    out_dir = Path(out_dir)
    plots = write_plots(results, out_dir, roc_data)
    cfg = results["config"]
    d = results["data"]
    lat = results.get("latency", {})
    lines = [
        "# OCT student-teacher study (002)",
        "",
        f"Data: {d['source']}; {d['labeled_train']} labeled training images ({d['train_patients']} patients), "
        f"{d['validation']} validation ({d['validation_patients']} patients), {d['unlabeled']} unlabeled; test "
        "sets: " + (", ".join(f"`{k}` ({v})" for k, v in d["test_sizes"].items()) or "none") + ".",
        f"Preset `{cfg['preset']}`, image size {cfg['image_size']}, seed {cfg['seed']}, teacher "
        f"`{results['teacher']['name']}` (weights: {cfg['teacher_weights']}), students "
        + ", ".join(f"`{s}`" for s in results["students"]) + f"; best epoch chosen by validation {cfg['monitor']}.",
        batch_norm_sentence(cfg["bn_recalibration_batches"]),
    ]
    pretraining = results["teacher"].get("pretraining")
    if pretraining:
        lines.append(f"The teacher was pretrained with SimCLR on {pretraining['images']} labeled and unlabeled "
                     f"images (labels unused; {pretraining['epochs']} epochs x {pretraining['steps_per_epoch']} "
                     f"steps, {pretraining['seconds']:.0f} s) before its supervised training.")
    if cfg.get("geometry", "resize") != "resize":
        lines.append(f"B-scan geometry: `{cfg['geometry']}` (recorded in the exported files' sidecars).")
    if cfg.get("task", "binary") == "multiclass":
        point = ("Multi-class (" + ", ".join(d["class_names"]) + "): AUC is the macro one-vs-rest AUC, "
                 "sensitivity and specificity the macro means of the per-class rates below (the most probable "
                 "class is the prediction).")
    else:
        point = f"Operating point: abnormal probability >= {cfg['threshold']}."
    lines += ["", data_checks_section(results), "", "## Recommendation", "", recommend(results), "",
              "## Sensitivity and specificity (95% clustered-bootstrap CIs)", "",
              f"{point} Clusters: {d.get('cluster_unit')}; "
              f"{cfg['n_boot']} bootstrap replicates. `+ST`: the student's best student-teacher run by validation "
              f"{cfg['monitor']}.", "", table_sensitivity_specificity(results), "",
              *multiclass_section(results),
              "## Every student run", "", table_fractions(results), "",
              "## Pseudo-labels", "", table_pseudo_labels(results), "",
              "## Per-volume inference", "",
              f"{lat.get('images_per_volume', '-')} images per volume, batch {lat.get('batch_size', '-')}, "
              f"{lat.get('threads', '-')} threads, median of {lat.get('repeats', '-')} volumes; load average before: "
              f"{(lat.get('conditions') or {}).get('load_average_1_5_15')}.", "",
              table_latency(results), "", "## Exported files", "", table_export(results), ""]
    command = predict_command(results)
    if command:
        lines += ["Flag the B-scans of interest in whole volumes with the edge runtime alone (no TensorFlow; the "
                  "preprocessing comes from the file's sidecar):", "", f"    {command}", ""]
    lines += ["## Time", "", ", ".join(f"{k} {v:.0f} s" for k, v in results.get("timing_seconds", {}).items()), "",
              "## Figures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def summary_lines(results: dict) -> list[str]:
    """One screen: each model's AUC and sensitivity/specificity on the first test set, per-volume time and
    speed-up, the recommendation and where the outputs are."""
    sets = results["data"]["test_sets"] or ["validation"]
    key_set = sets[0]
    lat = results.get("latency", {})
    runtime = lat.get("primary_runtime")

    def timing(name):
        m = lat.get("models", {}).get(name, {})
        t = m.get("seconds_per_volume", {}).get(runtime)
        s = m.get("speedup", {}).get(runtime)
        return "-" if t is None else f"{t:.3f}s" + (f" ({s:.1f}x)" if s and s != 1.0 else "")

    def row(label, evals, name):
        auc = _estimate(evals, key_set, "auc")
        sens = _estimate(evals, key_set, "sensitivity")
        spec = _estimate(evals, key_set, "specificity")
        val = _estimate(evals, "validation", "auc")
        return (f"{label:<34} {_num(val):>8} {_num(auc):>8} {_pct(sens):>7} {_pct(spec):>7}  {timing(name)}")

    lines = [f"{'model':<34} {'val AUC':>8} {'test AUC':>8} {'sens%':>7} {'spec%':>7}  s/volume ({runtime}, "
             "speed-up)", "-" * 96]
    teacher = results["teacher"]["name"]
    lines.append(row(f"{teacher} (teacher)", results["teacher"]["eval"], teacher))
    for name, st in results["students"].items():
        lines.append(row(f"{name}", st["baseline"]["eval"], name))
        if st.get("student_teacher"):
            best = st["student_teacher"]
            lines.append(row(f"{name}+ST ({best['method']} {int(round(100 * best['fraction']))}%)",
                             best["eval"], name))
    lines += ["", f"test set: {key_set}", "", recommend(results).replace("**", "")]
    return lines
