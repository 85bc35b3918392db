"""Study 003 (SimCLR + distillation) on real chest X-rays, several seeds and labeled fractions (issue 21, item 1).

Three steps, each a subcommand (repository root):

``prepare``: a random subset of whole patients of a Kermany-style class-folder set (``NORMAL/``, ``PNEUMONIA/``,
patient id in each file name), each image read and preprocessed once as every run would (OpenCV area resize to
``--size``, grey; :func:`kd_keras.data.preprocess.load_image`) and written as an 8-bit PNG of the same stem (the
patient id survives). The runs then decode small PNGs instead of 1-2 megapixel JPEGs at every stage; their own
resize is the identity, so the only difference is the rounding to 8 bits. ``<out>.manifest.json`` (beside the
folder) records the subset.

``run``: ``kd-keras run simclr --data <prepared> --seed S --labeled-fraction F ...`` for each fraction and seed,
one after the other (never two at once), with :data:`PROTOCOL`'s settings then any options given after ``--``.
The seed sets the patient-level test split, the labeled/pool split and the initialisation. Records the wall time
and the 1-minute load average every 5 s in ``<work>/<run>.run.json``; a finished run is not run again; no run is
started after ``--deadline`` (UTC ``HH:MM``).

``table``: ``<out>.md`` and ``<out>.json`` from the finished runs: per run the test AUC [95% CI over test
patients, patient-clustered bootstrap] of every method, the pseudo-labels' agreement with the hidden labels at the
run's operating point and at the paper's 0.5, the run's verdict (:func:`kd_keras.studies.simclr_report.finding`);
per fraction the mean +- SD over seeds; run times with the load.

Usage::

    python benchmarks/cxr_003_seeds.py prepare --data ../shared/data/kermany-cxr/train --images 1600 \\
        --size 64 --out /tmp/h003/cxr64
    python benchmarks/cxr_003_seeds.py run --data /tmp/h003/cxr64 --fractions 0.1 0.02 --seeds 0 1 2 \\
        --work /tmp/h003/runs --deadline 10:40
    python benchmarks/cxr_003_seeds.py table --work /tmp/h003/runs --out docs/simclr_cxr/summary
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from timed_command import load_summary, run_timed

METHOD_ORDER = ("supervised", "fixmatch", "mixmatch", "teacher", "student")
# The paper's claims as pairs (better, worse): the student above supervised, FixMatch and MixMatch and its teacher;
# the SimCLR teacher above supervised.
CLAIMS = (("student", "supervised"), ("student", "fixmatch"), ("student", "mixmatch"), ("teacher", "supervised"),
          ("student", "teacher"))
METHOD_NAMES = {"supervised": "Supervised (fraction)", "fixmatch": "FixMatch", "mixmatch": "MixMatch",
                "teacher": "SimCLR teacher, fine-tuned", "student": "SimCLR + KD student (proposed)"}

# The paper preset, scaled to a 2-core CPU (docs/simclr_cxr.md says why each differs from the paper).
PROTOCOL = (
    "--preset", "paper", "--layout", "folders", "--task", "auto", "--image-size", "64", "--channels", "1",
    "--no-fundus-crop", "--test-fraction", "0.25", "--held-out-overlap", "drop", "--duplicate-labels", "drop",
    "--teacher", "mobilenet_wd2", "--teacher-weights", "none", "--student", "mobilenet_w3d4",
    "--student-weights", "none", "--supervised-model", "none",
    "--simclr-epochs", "10", "--simclr-lr", "1e-3", "--simclr-batch-size", "64", "--finetune-lr", "1e-3",
    "--pseudo-label-threshold", "prevalence", "--student-epochs", "5", "--student-lr", "1e-2",
    "--baselines", "supervised", "fixmatch", "mixmatch",
    # MixMatch keeps the preset's (published) 16,000-step ramp-up: ramped up over 70 steps, lambda_u = 100 made it
    # collapse to the majority class (docs/simclr_cxr.md).
    "--baseline-epochs", "4", "--baseline-lr", "1e-3", "--fixmatch-ratio", "1",
    "--batch-size", "32", "--bn-recalibration-batches", "5", "--n-boot", "1000", "--tsne-points", "100",
)




def labeled_epochs(fraction: float) -> int:
    """Epochs of the trainings on the labeled fraction only (teacher fine-tune, student fine-tune, supervised):
    ``2 / fraction`` (20 at 10%, 100 at 2%: the paper's student fine-tune), so they take about the same number of
    optimizer steps (2 passes' worth of the training set) at every fraction.

    Example:
        >>> labeled_epochs(0.1), labeled_epochs(0.02)
        (20, 100)
    """
    return max(1, round(2.0 / fraction))


def fraction_options(fraction: float) -> list[str]:
    """The options that depend on the labeled fraction."""
    epochs = str(labeled_epochs(fraction))
    return ["--labeled-fraction", f"{fraction:g}", "--finetune-epochs", epochs, "--student-finetune-epochs", epochs,
            "--supervised-epochs", epochs]


# ------------------------------------------------------------------------------------------------ prepare


def manifest_path(folder: Path) -> Path:
    """Where ``prepare`` records the subset: beside the folder (inside, it would be a stray file of the layout)."""
    return folder.parent / f"{folder.name}.manifest.json"


def choose_patients(paths: list[str], images: int, seed: int) -> list[str]:
    """Whole patients in a random order until at least ``images`` images: the subset's paths, sorted.

    Example:
        >>> choose_patients(["a/IM-0001-0001.jpeg", "a/IM-0001-0002.jpeg", "b/person1_virus_1.jpeg"], 1, 0)
    """
    import numpy as np

    from kd_keras.data.patients import patient_ids

    ids, _ = patient_ids(paths)
    patients = sorted(set(ids.tolist()))
    order = np.random.default_rng(seed).permutation(len(patients))
    by_patient: dict[str, list[str]] = {}
    for path, patient in zip(paths, ids.tolist(), strict=True):
        by_patient.setdefault(patient, []).append(path)
    chosen: list[str] = []
    for index in order:
        if len(chosen) >= images:
            break
        chosen += by_patient[patients[index]]
    return sorted(chosen)


def prepare(data: Path, out: Path, images: int, size: int, seed: int) -> dict[str, Any]:
    """Write the subset as ``out/<class>/<stem>.png`` (``size`` x ``size`` grey) and ``<out>.manifest.json``."""
    import cv2
    import numpy as np

    from kd_keras.data.patients import patient_ids
    from kd_keras.data.preprocess import PreprocessConfig, load_image

    start = time.perf_counter()
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    paths = sorted(str(p) for c in classes for p in (data / c).iterdir() if p.is_file())
    chosen = choose_patients(paths, images, seed)
    config = PreprocessConfig((size, size), channels=1)
    for path in chosen:
        target = out / Path(path).parent.name / (Path(path).stem + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.rint(load_image(path, config)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(target), pixels[:, :, 0])
    ids, rule = patient_ids(chosen)
    manifest = {
        "source": str(data), "source_images": len(paths), "images": len(chosen),
        "patients": len(set(ids.tolist())), "patient_rule": rule, "subset_seed": seed, "size": size,
        "per_class": {c: sum(Path(p).parent.name == c for p in chosen) for c in classes},
        "patients_per_class": {c: len({i for p, i in zip(chosen, ids.tolist(), strict=True)
                                       if Path(p).parent.name == c}) for c in classes},
        "preprocess": "kd_keras.data.preprocess.load_image(PreprocessConfig((size, size), channels=1)), rounded "
                      "to uint8, PNG",
        "seconds": round(time.perf_counter() - start, 1), "load_after": list(os.getloadavg())}
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------ run


def run_name(fraction: float, seed: int) -> str:
    """``f10_s0`` for 10% and seed 0; ``f2_s1`` for 2% and seed 1."""
    return f"f{round(100 * fraction):g}_s{seed}"


def run_one(data: Path, work: Path, fraction: float, seed: int, extra: list[str]) -> dict[str, Any]:
    """One ``kd-keras run simclr`` with its wall time and the load samples taken while it ran."""
    name = run_name(fraction, seed)
    command = ["kd-keras", "run", "simclr", *PROTOCOL, "--data", str(data), *fraction_options(fraction),
               "--seed", str(seed), *extra, "--out", str(work / name), "--no-progress", "--overwrite"]
    record = {"run": name, "fraction": fraction, "seed": seed, "command": " ".join(command[:-1]),
              **run_timed(command, work / f"{name}.log")}
    (work / f"{name}.run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def past(deadline: str | None) -> bool:
    """Whether the UTC time ``HH:MM`` has passed today (``None``: never)."""
    if not deadline:
        return False
    hour, minute = (int(v) for v in deadline.split(":"))
    now = dt.datetime.now(dt.UTC)
    return (now.hour, now.minute) >= (hour, minute)


# ------------------------------------------------------------------------------------------------ table


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample SD (n - 1; NaN for one value) of the finite ``values``.

    Example:
        >>> mean_sd([0.8, 0.9, 1.0])
        (0.9, 0.1)
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def stage_seconds(results: dict[str, Any], run_dir: Path) -> dict[str, float]:
    """Seconds per stage of a run. A stage read back by ``--resume`` or ``--rerun-from`` ran in an earlier
    invocation, so ``results.json`` has no time for it: the one its training recorded (``seconds`` in
    ``stages/<name>.json``) is used; stages without one are left out."""
    seconds = {}
    for name in results.get("run", {}).get("resumed_stages", []):
        path = run_dir / "stages" / f"{name.replace('/', '__')}.json"
        recorded = json.loads(path.read_text()).get("seconds") if path.is_file() else None
        if recorded is not None:
            seconds[name] = recorded
    executed = results["timing_seconds"]
    return {"data": executed.get("data", 0.0), **seconds, **{k: v for k, v in executed.items() if k != "data"}}


def _rerun_from(command: str) -> str | None:
    """The stage a ``--rerun-from`` invocation computed again from (``None``: the run's own invocation)."""
    words = command.split()
    return words[words.index("--rerun-from") + 1] if "--rerun-from" in words[:-1] else None


def run_summary(results: dict[str, Any], record: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """What the table needs from one run's ``results.json`` and its ``.run.json``."""
    from kd_keras.studies.simclr_report import finding

    test = results["test"]
    methods = {m: test[m]["test"]["auc"] for m in METHOD_ORDER if m in test}
    any_method = next(iter(test.values()))["test"]
    pl = results["pseudo_labels"]
    verdict = finding(results)
    simclr_loss = results["stages"]["simclr"]["loss"]
    return {
        "run": record["run"], "fraction": record["fraction"], "seed": record["seed"],
        "split": results["split"], "test_patients": any_method.get("clusters"),
        "auc": methods,
        "pseudo_labels": {"rule": pl.get("operating_point"), "threshold": pl.get("threshold"),
                          "positive": pl["positive"], "total": pl["total"],
                          "agreement": pl["agreement_with_hidden_labels"],
                          "labeled_prevalence": pl.get("labeled_prevalence"),
                          "at_0.5": pl.get("at_0.5")},
        "finding": {"verdict": verdict["verdict"],
                    "comparisons": {m: {"above": c["above"], "ci_apart": c["ci_apart"]}
                                    for m, c in verdict["comparisons"].items()}},
        "wall_s": record["wall_s"], "started_utc": record.get("started_utc"),
        "load_1min": load_summary(record),
        "timing_seconds": stage_seconds(results, run_dir), "command": record["command"],
        "rerun_from": _rerun_from(results.get("run", {}).get("command", "")),
        "data": results["config"]["data"],
        # NT-Xent of a batch of B pairs is ln(2B - 1) for an encoder that tells no two images apart.
        "simclr_loss": {"first": simclr_loss[0], "last": simclr_loss[-1],
                        "chance": math.log(2 * results["config"]["simclr_batch_size"] - 1)},
    }


def _difference(runs: list[dict[str, Any]], better: str, worse: str) -> dict[str, Any]:
    """AUC(better) - AUC(worse) over the runs: mean, SD, how many above, how many with the 95% CIs apart."""
    from kd_keras.evaluation.report import intervals_apart

    pairs = [(r["auc"][better], r["auc"][worse]) for r in runs if better in r["auc"] and worse in r["auc"]]
    values = [a["estimate"] - b["estimate"] for a, b in pairs]
    mean, sd = mean_sd(values)
    return {"mean": mean, "sd": sd, "values": values, "above": sum(v > 0 for v in values),
            "ci_apart_above": sum(bool(intervals_apart(a, b)) and a["estimate"] > b["estimate"] for a, b in pairs),
            "ci_apart_below": sum(bool(intervals_apart(a, b)) and a["estimate"] < b["estimate"] for a, b in pairs),
            "runs": len(values)}


def summarise(work: Path) -> dict[str, Any]:
    """Every finished run under ``work`` (``<run>.run.json`` with exit code 0 and ``<run>/results.json``)."""
    runs = []
    for record_path in sorted(work.glob("*.run.json")):
        record = json.loads(record_path.read_text())
        results_path = work / record["run"] / "results.json"
        if record["exit_code"] == 0 and results_path.is_file():
            runs.append(run_summary(json.loads(results_path.read_text()), record, work / record["run"]))
    runs.sort(key=lambda r: (-r["fraction"], r["seed"]))
    fractions = sorted({r["fraction"] for r in runs}, reverse=True)
    over_seeds = {}
    for fraction in fractions:
        these = [r for r in runs if r["fraction"] == fraction]
        over_seeds[f"{fraction:g}"] = {
            "seeds": [r["seed"] for r in these],
            "auc": {m: dict(zip(("mean", "sd"), mean_sd([(r["auc"].get(m) or {}).get("estimate") for r in these]),
                                strict=True)) for m in METHOD_ORDER},
            "agreement": dict(zip(("mean", "sd"), mean_sd([r["pseudo_labels"]["agreement"] for r in these]),
                                  strict=True)),
            "agreement_at_0.5": dict(zip(("mean", "sd"), mean_sd([(r["pseudo_labels"]["at_0.5"] or {}).get(
                "agreement_with_hidden_labels") for r in these]), strict=True)),
            "differences": {f"{a}-{b}": _difference(these, a, b) for a, b in CLAIMS},
            "student_above_supervised": sum(r["finding"]["comparisons"].get("student", {}).get("above", False)
                                            for r in these),
            "verdicts": [r["finding"]["verdict"] for r in these]}
    manifest = manifest_path(Path(runs[0]["data"])) if runs else None
    return {"runs": runs, "over_seeds": over_seeds, "protocol": list(PROTOCOL),
            "data": json.loads(manifest.read_text()) if manifest and manifest.is_file() else None}


def _ci(value: dict[str, Any] | None) -> str:
    if not value or value.get("estimate") is None or not math.isfinite(value["estimate"]):
        return "-"
    if value.get("low") is None or not math.isfinite(value["low"]):
        return f"{100 * value['estimate']:.1f}"
    return f"{100 * value['estimate']:.1f} [{100 * value['low']:.1f}, {100 * value['high']:.1f}]"


def _pm(entry: dict[str, float], scale: float = 100.0) -> str:
    if not math.isfinite(entry["mean"]):
        return "-"
    sd = f" ± {scale * entry['sd']:.1f}" if math.isfinite(entry["sd"]) else ""
    return f"{scale * entry['mean']:.1f}{sd}"


def markdown(summary: dict[str, Any]) -> str:
    """The tables of ``docs/simclr_cxr/summary.md``."""
    runs = summary["runs"]
    lines = ["# Study 003 on Kermany chest X-rays: the runs (generated by `benchmarks/cxr_003_seeds.py table`)", ""]
    if summary["data"]:
        d = summary["data"]
        lines += [f"Data: {d['images']} images of {d['patients']} patients ({d['per_class']}; patients "
                  f"{d['patients_per_class']}) drawn by patient (subset seed {d['subset_seed']}) from the "
                  f"{d['source_images']} images of `{d['source']}`, {d['size']} px grey.", ""]
    lines += ["## Test AUC % [95% CI over test patients] per run", "",
              "| fraction | seed | labeled / pool / test images (test patients) | "
              + " | ".join(METHOD_NAMES[m] for m in METHOD_ORDER) + " | verdict |",
              "|---:|---:|---|" + "---|" * len(METHOD_ORDER) + "---|"]
    for r in runs:
        s = r["split"]
        lines.append(f"| {100 * r['fraction']:g}% | {r['seed']} | {s['labeled']} / {s['pool']} / {s['test']} "
                     f"({r['test_patients']}) | " + " | ".join(_ci(r["auc"].get(m)) for m in METHOD_ORDER)
                     + f" | {r['finding']['verdict']} |")
    lines += ["", "## Mean ± SD over seeds (test AUC %)", "",
              "| fraction | seeds | " + " | ".join(METHOD_NAMES[m] for m in METHOD_ORDER)
              + " | student above supervised |", "|---:|---|" + "---:|" * len(METHOD_ORDER) + "---|"]
    for fraction, entry in summary["over_seeds"].items():
        lines.append(f"| {100 * float(fraction):g}% | {', '.join(map(str, entry['seeds']))} | "
                     + " | ".join(_pm(entry["auc"][m]) for m in METHOD_ORDER)
                     + f" | {entry['student_above_supervised']} of {len(entry['seeds'])} |")
    lines += ["", "## The paper's claims: AUC differences in points (mean ± SD over seeds; above / CIs apart)", "",
              "| fraction | " + " | ".join(f"{a} - {b}" for a, b in CLAIMS) + " |",
              "|---:|" + "---|" * len(CLAIMS)]
    for fraction, entry in summary["over_seeds"].items():
        cells = []
        for a, b in CLAIMS:
            d = entry["differences"][f"{a}-{b}"]
            cells.append(f"{_pm(d)} ({d['above']} of {d['runs']} above; CIs apart: {d['ci_apart_above']} above, "
                         f"{d['ci_apart_below']} below)")
        lines.append(f"| {100 * float(fraction):g}% | " + " | ".join(cells) + " |")
    lines += ["", "## Pseudo-labels: the teacher's operating point and the paper's 0.5 (same teacher outputs)", "",
              "| fraction | seed | rule | threshold | positive / pool | agreement % | labeled prevalence % | "
              "at 0.5: positive | at 0.5: agreement % |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        p, half = r["pseudo_labels"], r["pseudo_labels"]["at_0.5"] or {}
        lines.append(f"| {100 * r['fraction']:g}% | {r['seed']} | {p['rule']} | {p['threshold']:.3f} | "
                     f"{p['positive']} / {p['total']} | {100 * p['agreement']:.1f} | "
                     f"{100 * p['labeled_prevalence']:.0f} | {half.get('positive', '-')} | "
                     + (f"{100 * half['agreement_with_hidden_labels']:.1f}" if half else "-") + " |")
    for fraction, entry in summary["over_seeds"].items():
        lines.append(f"| {100 * float(fraction):g}% | mean ± SD | | | | {_pm(entry['agreement'])} | | | "
                     f"{_pm(entry['agreement_at_0.5'])} |")
    stages = [s for s in (runs[0]["timing_seconds"] if runs else {}) if s != "total"]
    rerun = any(r["rerun_from"] for r in runs)
    lines += ["", "## Run times (2 CPU cores shared with other engineers' runs)", "",
              "| run | started (UTC) | wall s | load 1-min (before / mean / max) | SimCLR loss first / last epoch "
              "(chance) | " + " | ".join(f"{s} s" for s in stages) + (" | rerun from (its wall s)" if rerun else "")
              + " |",
              "|---|---|---:|---|---|" + "---:|" * len(stages) + ("---|" if rerun else "")]
    for r in runs:
        load = r["load_1min"]
        again = f" | {r['rerun_from']} ({r['timing_seconds'].get('total', 0):.0f})" if r["rerun_from"] else ""
        lines.append(f"| {r['run']} | {r['started_utc']} | {r['wall_s']:.0f} | {load['before']:.2f} / "
                     f"{load['mean']:.2f} / {load['max']:.2f} | {r['simclr_loss']['first']:.3f} / "
                     f"{r['simclr_loss']['last']:.3f} ({r['simclr_loss']['chance']:.3f}) | "
                     + " | ".join(f"{r['timing_seconds'].get(s, 0):.0f}" for s in stages)
                     + (again or (" | -" if rerun else "")) + " |")
    if rerun:
        lines += ["", "Wall s: the run's own invocation. A run continued with `--rerun-from STAGE` recomputed that "
                  "stage and the later ones in a second invocation (last column); the stage columns show the time "
                  "of each stage where it last ran (the training stages read back record their own seconds)."]
    lines += ["", "Commands (the driver adds `--out <work>/<run> --no-progress --overwrite`):", ""]
    lines += [f"    {r['command']}" for r in runs]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="a patient subset, preprocessed once to small PNGs")
    p.add_argument("--data", type=Path, required=True, help="class-folder root (NORMAL/, PNEUMONIA/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=1600, help="at least this many images, whole patients")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--subset-seed", type=int, default=0)
    r = commands.add_parser("run", help="the runs, one after the other")
    r.add_argument("--data", type=Path, required=True, help="the prepared folder")
    r.add_argument("--work", type=Path, required=True, help="run folders <work>/f<percent>_s<seed>")
    r.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.02])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--deadline", help="UTC HH:MM after which no run starts")
    r.add_argument("extra", nargs="*", help="more kd-keras run simclr options (after --), after the protocol's")
    t = commands.add_parser("table", help="summary.md / summary.json from the finished runs")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--out", type=Path, default=Path("docs/simclr_cxr/summary"))
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.data, args.out, args.images, args.size, args.subset_seed), indent=2))
        return 0
    if args.command == "run":
        args.work.mkdir(parents=True, exist_ok=True)
        for fraction in args.fractions:
            for seed in args.seeds:
                name = run_name(fraction, seed)
                if (args.work / name / "results.json").is_file() and (args.work / f"{name}.run.json").is_file():
                    continue
                if past(args.deadline):
                    print(f"{name}: not started, past {args.deadline} UTC", flush=True)
                    return 0
                record = run_one(args.data, args.work, fraction, seed, args.extra)
                print(f"{name}: exit {record['exit_code']}, {record['wall_s']} s, load "
                      f"{record['load_before'][0]:.2f} then {min(record['load_1min_samples'] or [0]):.2f}-"
                      f"{max(record['load_1min_samples'] or [0]):.2f}", flush=True)
                if record["exit_code"]:
                    print(f"{name} failed: see {args.work / f'{name}.log'}", file=sys.stderr)
                    return 1
        return 0
    summary = summarise(args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
