"""The quick default on several seeds: does validation deploy the right model of each student? (issue 20, item 4)

Runs ``kd-keras run oct --seed S --out <work>/sS --no-progress`` for each seed, one after the other (never two at
once), records the wall time and the machine's load while it runs (the 1-minute load average every 5 s, and any
other kd-keras or pytest process seen), then writes the table from the runs' ``results.json``: per seed and
student, the validation AUC that chose (best epoch) and the held-out test AUC of the baseline and of the
student-teacher model, which one was deployed and whether that was right (the one with the higher test AUC),
with each run's time per stage.

Usage (repository root)::

    python benchmarks/quick_default_seeds.py --seeds 0 1 2 --work /tmp/q20 --out docs/quick_default/seeds
    python benchmarks/quick_default_seeds.py --seeds 0 1 2 --work /tmp/q20 --out docs/quick_default/seeds \
        --table-only      # the table again from finished runs

A note written by hand to ``<work>/sS.note`` (what was seen running beside the run) is shown with it.
A seed whose run finished already (``<work>/sS/results.json`` and ``<work>/sS.run.json``) is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from timed_command import load_summary, run_timed

TEST_SET = "synthetic_test"


def _others(own: int) -> list[str]:
    """Command lines of the processes that are not ``own`` or its children: kd-keras and pytest ones, and any
    other that has used at least 20% of a core over its life (``ps``' %CPU), e.g. another study's script."""
    found = subprocess.run(["pgrep", "-af", "kd_keras|kd-keras|pytest"], capture_output=True, text=True).stdout
    busy = subprocess.run(["ps", "-eo", "pid=,pcpu=,args="], capture_output=True, text=True).stdout
    mine = {os.getpid(), own}
    children = subprocess.run(["pgrep", "-P", str(own)], capture_output=True, text=True).stdout.split()
    mine.update(int(pid) for pid in children)
    lines = []
    candidates = [line.strip().partition(" ")[::2] for line in found.splitlines()]
    for line in busy.splitlines():
        pid, cpu, command = line.split(None, 2) if len(line.split(None, 2)) == 3 else (line, "0", "")
        if float(cpu) >= 20 and command.startswith(("python", "/root/.pyenv")):
            candidates.append((pid, command))
    for pid, command in candidates:
        if int(pid) not in mine and "pgrep" not in command and "quick_default_seeds" not in command:
            lines.append(command)
    return lines


def _short(command: str) -> str | None:
    """A process named for the table: ``pytest <test file>``, ``kd-keras run <out>``; wrappers and the latency
    workers of other runs are left out (their parents are listed)."""
    words = command.split()
    if not words or words[0] in ("timeout", "nice") or words[0].endswith("/time") or "--worker" in words:
        return None
    if "pytest" in command:
        return "pytest " + next((w for w in words if w.startswith("tests/")), "(a test's subprocess)")
    if "experiments/" in command:
        return next(w for w in words if "experiments/" in w)
    if "kd-keras" in command:
        return "kd-keras run" + (f" --out {words[words.index('--out') + 1]}" if "--out" in words[:-1] else "")
    return " ".join(words[:3])[:80]


def run_seed(seed: int, work: Path, extra: list[str]) -> dict[str, Any]:
    """One quick-default run with its wall time, the load samples taken while it ran and the other processes
    seen then."""
    out = work / f"s{seed}"
    command = ["kd-keras", "run", "oct", "--seed", str(seed), "--out", str(out), "--no-progress", "--overwrite",
               *extra]
    others: set[str] = set()
    record = {"seed": seed, "command": " ".join(command),
              **run_timed(command, work / f"s{seed}.log", on_sample=lambda pid: others.update(_others(pid)))}
    record["other_processes"] = sorted(others)
    (work / f"s{seed}.run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _auc(entry: dict[str, Any], split: str) -> float | None:
    return ((entry or {}).get("eval", {}).get(split, {}).get("auc") or {}).get("estimate")


def student_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per student: the validation score that chose, the test AUC of both models, the deployed one, and whether
    it was right (the student-teacher model whenever it is better on the test set, else the baseline)."""
    rows = []
    for name, info in results["students"].items():
        runs = {run["key"]: run for run in info["runs"]}
        baseline, transfer = info.get("baseline") or {}, info.get("student_teacher") or {}
        chooser = {side: runs.get(entry.get("key"), {}).get("chosen_val_auc") for side, entry in
                   (("baseline", baseline), ("student_teacher", transfer))}
        test = {"baseline": _auc(baseline, TEST_SET), "student_teacher": _auc(transfer, TEST_SET)}
        better = None
        if None not in test.values():
            better = "student_teacher" if test["student_teacher"] > test["baseline"] else "baseline"
        rows.append({"student": name, "validation_auc": chooser, "test_auc": test, "deployed": info["deployed"],
                     "better_on_test": better, "right": better is not None and info["deployed"] == better})
    return rows


def _clusters_of(run_dir: Path, split: str, indices: np.ndarray) -> np.ndarray:
    """The cluster (volume) of each prediction: from the file (runs since session 10), else from the data."""
    from kd_keras.studies.oct_config import OCTStudyConfig
    from kd_keras.studies.oct_data import prepare_data

    results = json.loads((run_dir / "results.json").read_text())
    config = OCTStudyConfig.from_preset(results["config"].get("preset", "quick"), seed=results["seed"])
    data = prepare_data(config, say=lambda *_: None)
    records = data.validation if split == "validation" else data.tests[split]
    return data.clusters(records)[indices]


def paired_differences(run_dir: Path, student: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """AUC(student-teacher) - AUC(baseline) on validation and on the test set, each with its 95% CI by a paired
    clustered bootstrap (the same resampled volumes for both models), from the run's saved predictions."""
    from kd_keras.evaluation.bootstrap import clustered_bootstrap
    from kd_keras.evaluation.metrics import binary_auc
    from kd_keras.evaluation.replicate_metrics import binary_auc_per_replicate

    out: dict[str, Any] = {}
    for split in ("validation", TEST_SET):
        files = [run_dir / "predictions" / f"{student}__{side}__{split}.npz"
                 for side in ("baseline", "student_teacher")]
        if not all(f.is_file() for f in files):
            return {}
        base, transfer = (np.load(f) for f in files)
        if not np.array_equal(base["indices"], transfer["indices"]):
            raise ValueError(f"{files[0]} and {files[1]}: predictions in another order")
        try:
            clusters = base["clusters"]
        except (KeyError, ValueError):  # older runs: none saved, or saved as objects (not loaded: pickle)
            clusters = _clusters_of(run_dir, split, base["indices"])
        interval = clustered_bootstrap(
            lambda y, t, b: binary_auc(y, t) - binary_auc(y, b), (base["labels"], transfer["scores"], base["scores"]),
            clusters, n_boot=n_boot, seed=seed,
            replicate_metric=lambda y, t, b, counts: (binary_auc_per_replicate(y, t, counts)
                                                       - binary_auc_per_replicate(y, b, counts)))
        out[split] = {"estimate": interval.estimate, "low": interval.low, "high": interval.high}
    return out


def summarise(work: Path, seeds: list[int]) -> dict[str, Any]:
    seeds_out = []
    for seed in seeds:
        results = json.loads((work / f"s{seed}" / "results.json").read_text())
        run = json.loads((work / f"s{seed}.run.json").read_text())
        data = results["data"]
        seeds_out.append({
            "seed": seed, "command": run["command"].replace(" --overwrite", ""), "wall_s": run["wall_s"],
            "timing_seconds": results["timing_seconds"],
            "load_1min": load_summary(run),
            "other_processes": sorted({n for n in map(_short, run["other_processes"]) if n}),
            "note": (work / f"s{seed}.note").read_text().strip() if (work / f"s{seed}.note").is_file() else "",
            "students": [{**row, "paired_difference": paired_differences(work / f"s{seed}", row["student"])}
                         for row in student_rows(results)],
            "data": {k: data[k] for k in ("labeled_train", "validation", "validation_patients", "train_patients")},
            "test_size": data["test_sizes"].get(TEST_SET)})
    return {"seeds": seeds_out}


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _difference(row: dict[str, Any], split: str) -> str:
    d = (row.get("paired_difference") or {}).get(split)
    return "-" if not d else f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| seed | student | val AUC baseline | val AUC student-teacher | test AUC baseline | "
             "test AUC student-teacher | deployed | better on test | decision right | "
             "val difference [95% CI] | test difference [95% CI] |",
             "|---:|---|---:|---:|---:|---:|---|---|---|---|---|"]
    for entry in summary["seeds"]:
        for row in entry["students"]:
            lines.append(f"| {entry['seed']} | {row['student']} | {_f(row['validation_auc']['baseline'])} | "
                         f"{_f(row['validation_auc']['student_teacher'])} | {_f(row['test_auc']['baseline'])} | "
                         f"{_f(row['test_auc']['student_teacher'])} | {row['deployed']} | "
                         f"{row['better_on_test']} | {'yes' if row['right'] else '**no**'} | "
                         f"{_difference(row, 'validation')} | {_difference(row, TEST_SET)} |")
    stages = list(summary["seeds"][0]["timing_seconds"])
    lines += ["", "| seed | wall s | load 1-min (before / mean / max) | other kd-keras or pytest processes | "
              + " | ".join(f"{s} s" for s in stages) + " |", "|---:|---:|---|---|" + "---:|" * len(stages)]
    for entry in summary["seeds"]:
        load = entry["load_1min"]
        others = "; ".join(entry["other_processes"]) or "none"
        if entry["note"]:
            others += f" ({entry['note']})"
        lines.append(f"| {entry['seed']} | {entry['wall_s']:.0f} | {load['before']:.2f} / {load['mean']:.2f} / "
                     f"{load['max']:.2f} | {others} | "
                     + " | ".join(f"{entry['timing_seconds'].get(s, 0):.0f}" for s in stages) + " |")
    first = summary["seeds"][0]
    right = sum(r["right"] for e in summary["seeds"] for r in e["students"])
    total = sum(len(e["students"]) for e in summary["seeds"])
    lines += ["", f"Validation {first['data']['validation']} B-scans from {first['data']['validation_patients']} "
              f"patients, {first['data']['labeled_train']} labeled training B-scans from "
              f"{first['data']['train_patients']} patients, test {first['test_size']} B-scans. "
              f"Right decisions: {right} of {total}.",
              "", "Differences: AUC of the student-teacher model minus the baseline's, on the best-epoch models "
              "evaluated after training (validation: the checkpoints' own set, so the chosen epoch flatters each "
              "model a little), 95% CI by a paired bootstrap over volumes (2,000 replicates; the same volumes "
              "resampled for both models).", "", "Commands:", ""]
    lines += [f"    {entry['command']}" for entry in summary["seeds"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/q20", help="run folders <work>/s<seed> and their run records")
    parser.add_argument("--out", default="docs/quick_default/seeds", help="table as <out>.md and <out>.json")
    parser.add_argument("--table-only", action="store_true", help="write the table from finished runs")
    parser.add_argument("extra", nargs="*", help="more kd-keras run oct options (after --)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in args.seeds:
            if (work / f"s{seed}" / "results.json").is_file() and (work / f"s{seed}.run.json").is_file():
                continue
            record = run_seed(seed, work, args.extra)
            print(f"seed {seed}: exit {record['exit_code']}, {record['wall_s']} s, load "
                  f"{min(record['load_1min_samples'] or [0]):.2f}-{max(record['load_1min_samples'] or [0]):.2f}",
                  flush=True)
            if record["exit_code"]:
                print(f"seed {seed} failed: see {work / f's{seed}.log'}", file=sys.stderr)
                return 1
    summary = summarise(work, args.seeds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
