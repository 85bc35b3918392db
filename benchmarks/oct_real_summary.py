"""Tables of the main job's runs on real OCT over seeds (docs/oct_real.md): mean, spread and clustered CIs.

Reads the ``results.json`` of each run folder given, groups the runs by task, teacher pretraining and labeled
fraction, and writes markdown: per group and model, the test AUC of the teacher and of each student run
(baseline, pseudo-labels, soft targets) as mean +- standard deviation over the seeds with each seed's value, the
95% patient-clustered bootstrap CI of each seed's teacher and baseline, the pseudo-labels' agreement with the
pool's hidden labels, and the run time.

Usage::

    python benchmarks/oct_real_summary.py runs/oct_real/* --out docs/oct_real/summary.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _method(run: dict) -> str:
    if run["method"] == "baseline":
        return "baseline (labeled only)"
    pool = f", {int(round(100 * run['fraction']))}% of the pool" if run["fraction"] > 0 else ", labeled only"
    if run["method"] == "pseudo":
        return "pseudo-labels" + pool
    objective = run.get("objective") or {}
    if "temperature" in objective:
        return f"soft targets (T={objective['temperature']:g}, alpha={objective['alpha']:g}){pool}"
    return run["method"] + pool


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {spread:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def _ci(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def load_runs(folders: list[Path]) -> list[dict]:
    runs = []
    for folder in folders:
        path = folder / "results.json"
        if path.is_file():
            result = json.loads(path.read_text())
            result["_folder"] = str(folder)
            runs.append(result)
    return runs


def summarize(runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        c = r["config"]
        groups[(c.get("task", "binary"), c.get("teacher_pretraining", "none"), c["labeled_fraction"])].append(r)
    lines = []
    for (task, pretraining, fraction), members in sorted(groups.items()):
        members.sort(key=lambda r: r["seed"])
        test = members[0]["data"]["test_sets"][0]
        d = members[0]["data"]
        lines += [f"### {task}, {int(round(100 * fraction))}% of the training patients labeled, teacher "
                  f"pretraining: {pretraining} (seeds {', '.join(str(r['seed']) for r in members)})", "",
                  f"{d['labeled_train']} labeled training B-scans ({d['train_patients']} patients), {d['unlabeled']}"
                  f" unlabeled, {d['validation']} validation, {d['test_sizes'][test]} test (seed "
                  f"{members[0]['seed']}; other seeds split other patients). Test AUC on `{test}` "
                  "(macro one-vs-rest for multiclass): mean +- SD over seeds (each seed).", ""]
        rows = [["teacher " + members[0]["teacher"]["name"],
                 _fmt([r["teacher"]["eval"][test]["auc"]["estimate"] for r in members])]]
        by_model: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in members:
            for name, st in r["students"].items():
                for run in st["runs"]:
                    by_model[(name, _method(run))].append(run["test_auc"][test])
        rows += [[f"{name}: {method}", _fmt(values)] for (name, method), values in by_model.items()]
        lines += ["| model | test AUC |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows), ""]
        lines += ["Per seed, with 95% CIs by clustered bootstrap over test patients:", "",
                  "| seed | teacher | " + " | ".join(f"{n} baseline | {n} deployed" for n in members[0]["students"])
                  + " | pseudo-label agreement | minutes |",
                  "|---|---|" + "---|---|" * len(members[0]["students"]) + "---|---|"]
        for r in members:
            cells = [str(r["seed"]), _ci(r["teacher"]["eval"][test]["auc"])]
            for st in r["students"].values():
                deployed = st[st.get("deployed", "baseline")]
                label = "baseline" if st.get("deployed", "baseline") == "baseline" else deployed.get("method")
                cells += [_ci(st["baseline"]["eval"][test]["auc"]),
                          f"{label}: {_ci(deployed['eval'][test]['auc'])}"]
            truth = r["pseudo_labels"].get("truth_check") or {}
            agreement = truth.get("pseudo_label_accuracy")
            cells.append("-" if agreement is None else f"{100 * agreement:.1f}%")
            timing = r["timing_seconds"]
            cells.append(f"{timing.get('total', sum(timing.values())) / 60:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = summarize(load_runs(args.folders))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
