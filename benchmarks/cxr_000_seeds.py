"""Study 000 on the Kermany chest X-rays over several seeds (issue 21 item 1): the runs, one after another, and
the summary written from their ``results.json``.

Runs ``kd-keras run dr <PROTOCOL> --seed S --out <root>/seedS --no-progress`` for each seed, never two at once,
with each output line time-stamped into ``<root>/seedS.log``; records the wall time, ``uptime`` before and after
and the 1-minute load average every 10 s in ``<root>/seedS.run.json``. Then writes the summary
(``--summary``, markdown, and a ``.json`` beside it): per seed the teacher's AUC per fold on the fold's test
patients and on the hold-out patients (in no fold); per student and variant the AUC mean ± SD over folds x seeds;
per seed and fold the AUC with its 95% CI over patients (patient-clustered bootstrap); how often Base < KD < UL <
KD+UL held per (seed, fold); and the paired differences between the variants (mean ± SD over folds x seeds, how
many positive, and a 95% t-interval over the seed means, the seeds being the independent replicates). With
``--doc``, the headline tables also replace the block between ``<!-- cxr000:start -->`` and
``<!-- cxr000:end -->`` of that file, so no number there is typed by hand.

A seed whose run finished (``results.json`` and ``seedS.run.json``) is not run again; a killed one goes on with
``--resume``. Extra study options after ``--`` are appended to PROTOCOL (the last of a repeated option wins).

Usage (repository root)::

    python benchmarks/cxr_000_seeds.py --data ../shared/data/kermany-cxr/train --seeds 0 1 2 --root /tmp/h000/cxr000 \
        --summary docs/dr_kd_unlabeled_cxr/summary.md --doc docs/dr_kd_unlabeled_cxr.md
    python benchmarks/cxr_000_seeds.py --seeds 0 1 2 --root /tmp/h000/cxr000 --summary-only \
        --summary docs/dr_kd_unlabeled_cxr/summary.md --doc docs/dr_kd_unlabeled_cxr.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The protocol of every seed (the settings and their reasons: docs/dr_kd_unlabeled_cxr.md).
PROTOCOL = ["--layout", "folders", "--limit", "450", "--holdout-fraction", "0.2", "--channels", "1",
            "--no-fundus-crop", "--image-size", "48", "--folds", "3", "--students", "simple10",
            "--teacher-weights", "none", "--teacher-epochs", "10", "--ul-epochs", "2", "--kd-epochs", "2",
            "--hard-epochs", "5", "--set", "student_epochs=null",  # the paper preset's 300 epochs per variant: off
            "--pool-size", "300", "--batch-size", "16", "--n-boot", "200"]
ORDER = ("base", "kd", "ul", "kd_ul")
TITLES = {"base": "Base", "kd": "+KD", "ul": "+UL", "kd_ul": "+KD+UL"}
STUDENTS = {"simple10": "Simple10", "vgg16_d2": "VGG/2", "vgg16_d4": "VGG/4"}
DIFFERENCES = (("kd", "base"), ("ul", "kd"), ("kd_ul", "ul"), ("ul", "base"), ("kd_ul", "base"))
SETS = (("metrics", "fold's test patients"), ("holdout_metrics", "hold-out patients"))


# ----------------------------------------------------------------------------------------------------- running
def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run_seed(seed: int, root: Path, extra: list[str]) -> dict[str, Any]:
    """One seed's run (``--resume`` when a killed one is there), time-stamped log and timing record."""
    out = root / f"seed{seed}"
    argv = [sys.executable, "-m", "kd_keras", "run", "dr", *PROTOCOL, *extra, "--seed", str(seed), "--out",
            str(out), "--no-progress"]
    if (out / "config.yaml").exists():
        argv.append("--resume")
    record: dict[str, Any] = {"seed": seed, "argv": argv[1:], "start_utc": time.strftime("%H:%M:%S", time.gmtime()),
                              "uptime_start": _uptime(), "load_samples": []}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(10.0):
            record["load_samples"].append(_load())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    with open(root / f"seed{seed}.log", "a") as log:
        log.write(f"{time.strftime('%H:%M:%S', time.gmtime())} $ {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(f"{time.strftime('%H:%M:%S', time.gmtime())} {line}")
            log.flush()
        code = proc.wait()
    done.set()
    record.update(returncode=code, wall_seconds=round(time.monotonic() - started, 1),
                  end_utc=time.strftime("%H:%M:%S", time.gmtime()), uptime_end=_uptime())
    if code == 0:
        (root / f"seed{seed}.run.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


# ------------------------------------------------------------------------------------------------- summarising
def _auc(metrics: dict[str, Any] | None) -> float:
    value = (metrics or {}).get("auc")
    if isinstance(value, dict):
        return float(value["estimate"])
    return float("nan") if value is None else float(value)


def _ci(metrics: dict[str, Any] | None) -> str:
    value = (metrics or {}).get("auc")
    if not isinstance(value, dict):
        return "-" if value is None else f"{100 * value:.1f}"
    if value.get("low") is None or math.isnan(value.get("low", math.nan)):
        return f"{100 * value['estimate']:.1f}"
    return f"{100 * value['estimate']:.1f} [{100 * value['low']:.1f}, {100 * value['high']:.1f}]"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def _pct(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def _t_interval(values: list[float]) -> tuple[float, float]:
    """95% t-interval of the mean of ``values`` (independent replicates)."""
    from scipy.stats import t

    mean, sd = _mean_sd(values)
    half = t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean - half, mean + half


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def load_runs(root: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Each finished seed: ``{"seed", "results", "run"}`` (``run``: the timing record, or ``{}``)."""
    runs = []
    for seed in seeds:
        path = root / f"seed{seed}" / "results.json"
        if not path.exists():
            continue
        timing = root / f"seed{seed}.run.json"
        runs.append({"seed": seed, "results": json.loads(path.read_text()),
                     "run": json.loads(timing.read_text()) if timing.exists() else {}})
    return runs


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the summary, JSON-ready: per (seed, fold) AUCs of the teacher and every student x variant on
    both test sets, orderings and paired differences."""
    config = runs[0]["results"]["config"]
    students = list(config["students"])
    sets = [key for key, _ in SETS if all(key in f["teacher"] for r in runs for f in r["results"]["folds"])]
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {key: {} for key in sets}
    for key in sets:
        for r in runs:
            for fold in r["results"]["folds"]:
                at = {"seed": r["seed"], "fold": fold["fold"]}
                cells[key].setdefault("teacher", []).append({**at, "auc": _auc(fold["teacher"][key])})
                for s in students:
                    for v in ORDER:
                        metrics = fold["students"][f"{s}/{v}"][key]
                        cells[key].setdefault(f"{s}/{v}", []).append({**at, "auc": _auc(metrics)})
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "students": students, "sets": sets, "auc": cells,
                           "ordering": {}, "differences": {}}
    for key in sets:
        for s in students:
            per_case = list(zip(*[[c["auc"] for c in cells[key][f"{s}/{v}"]] for v in ORDER], strict=True))
            held = [all(a < b for a, b in zip(case, case[1:], strict=False)) for case in per_case]
            seed_means = {seed: [_mean_sd([c["auc"] for c in cells[key][f"{s}/{v}"] if c["seed"] == seed])[0]
                                 for v in ORDER] for seed in out["seeds"]}
            overall = [_mean_sd([c["auc"] for c in cells[key][f"{s}/{v}"]])[0] for v in ORDER]
            out["ordering"][f"{key}/{s}"] = {
                "per_fold_held": sum(held), "cases": len(held),
                "per_seed_mean_held": {seed: all(a < b for a, b in zip(m, m[1:], strict=False))
                                       for seed, m in seed_means.items()},
                "overall_mean_held": all(a < b for a, b in zip(overall, overall[1:], strict=False))}
            for upper, lower in DIFFERENCES:
                diffs = [a["auc"] - b["auc"] for a, b in zip(cells[key][f"{s}/{upper}"], cells[key][f"{s}/{lower}"],
                                                             strict=True)]
                by_seed = [_mean_sd([d for d, c in zip(diffs, cells[key][f"{s}/{upper}"], strict=True)
                                     if c["seed"] == seed])[0] for seed in out["seeds"]]
                mean, sd = _mean_sd(diffs)
                out["differences"][f"{key}/{s}/{upper}-{lower}"] = {
                    "mean": mean, "sd": sd, "positive": sum(d > 0 for d in diffs), "cases": len(diffs),
                    "seed_means": by_seed, "t95_over_seeds": list(_t_interval(by_seed))}
    return out


def _difference_verdict(d: dict[str, Any]) -> str:
    low, high = d["t95_over_seeds"]
    if math.isnan(low):
        return "one seed"
    if low > 0:
        return "above 0"
    if high < 0:
        return "below 0"
    return "interval spans 0"


def headline(runs: list[dict[str, Any]], numbers: dict[str, Any]) -> list[str]:
    """The tables the doc shows: teacher per seed, students' four variants over folds x seeds, orderings and
    differences."""
    seeds = numbers["seeds"]
    lines = [f"Seeds {', '.join(map(str, seeds))}; {len(runs[0]['results']['folds'])} folds each; AUC in %.", ""]
    teacher_rows = []
    for seed in seeds:
        row = [str(seed)]
        for key in numbers["sets"]:
            values = [c["auc"] for c in numbers["auc"][key]["teacher"] if c["seed"] == seed]
            row += [" / ".join(f"{100 * v:.1f}" for v in values), _pct(values)]
        teacher_rows.append(row)
    row = ["all"]
    for key in numbers["sets"]:
        row += ["", _pct([c["auc"] for c in numbers["auc"][key]["teacher"]])]
    teacher_rows.append(row)
    headers = ["seed"]
    for key, name in SETS:
        if key in numbers["sets"]:
            headers += [f"per fold, {name}", "mean ± SD"]
    lines += ["**Teacher (VGG16 from random weights)**, AUC per fold and mean ± SD over folds:", "",
              _table(headers, teacher_rows), ""]
    n_cases = len(numbers["auc"]["metrics"]["teacher"])
    variant_rows = []
    for s in numbers["students"]:
        for v in ORDER:
            row = [STUDENTS.get(s, s), TITLES[v]]
            for key in numbers["sets"]:
                row.append(_pct([c["auc"] for c in numbers["auc"][key][f"{s}/{v}"]]))
            variant_rows.append(row)
    headers = ["student", "variant", *[f"AUC, {name}" for key, name in SETS if key in numbers["sets"]]]
    lines += [f"**Students**, AUC mean ± SD over the {n_cases} (seed, fold) cases:", "",
              _table(headers, variant_rows), ""]
    order_rows = []
    for s in numbers["students"]:
        for key, name in SETS:
            if key not in numbers["sets"]:
                continue
            o = numbers["ordering"][f"{key}/{s}"]
            per_seed = ", ".join(f"{seed}: {'yes' if held else 'no'}" for seed, held in
                                 o["per_seed_mean_held"].items())
            order_rows.append([STUDENTS.get(s, s), name, f"{o['per_fold_held']} of {o['cases']}", per_seed,
                               "yes" if o["overall_mean_held"] else "no"])
    lines += ["**Base < KD < UL < KD+UL** (strictly, in AUC): in how many (seed, fold) cases; for each seed's mean "
              "over folds; for the mean over all cases:", "",
              _table(["student", "test set", "per (seed, fold)", "per seed (mean over folds)", "overall mean"],
                     order_rows), ""]
    diff_rows = []
    for s in numbers["students"]:
        for key, name in SETS:
            if key not in numbers["sets"]:
                continue
            for upper, lower in DIFFERENCES:
                d = numbers["differences"][f"{key}/{s}/{upper}-{lower}"]
                low, high = d["t95_over_seeds"]
                diff_rows.append([STUDENTS.get(s, s), name, f"{TITLES[upper]} − {TITLES[lower]}",
                                  f"{100 * d['mean']:+.1f} ± {100 * d['sd']:.1f}", f"{d['positive']} of {d['cases']}",
                                  " / ".join(f"{100 * m:+.1f}" for m in d["seed_means"]),
                                  f"[{100 * low:+.1f}, {100 * high:+.1f}]", _difference_verdict(d)])
    lines += ["**Paired differences** in AUC (points; same seed and fold): mean ± SD over the (seed, fold) cases, "
              "cases above 0, each seed's mean, and the 95% t-interval over the seed means (the seeds are the "
              "independent replicates; the folds of one seed share their images):", "",
              _table(["student", "test set", "difference", "mean ± SD", "> 0", "per seed", "95% t over seeds",
                      "verdict"], diff_rows), ""]
    return lines


def runs_table(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in runs:
        t, data = r["run"], r["results"]["data"]
        samples = t.get("load_samples") or [math.nan]
        folds = data["folds"]
        rows.append([str(r["seed"]), f"{t.get('start_utc', '?')}–{t.get('end_utc', '?')}",
                     f"{t.get('wall_seconds', float('nan')):.0f}",
                     f"{min(samples):.2f} / {sum(samples) / len(samples):.2f} / {max(samples):.2f}",
                     " / ".join(f"{f['train']}+{f['test']}" for f in folds),
                     str(data.get("holdout", {}).get("images", "-")),
                     t.get("uptime_start", "?").split("load average:")[-1].strip(),
                     t.get("uptime_end", "?").split("load average:")[-1].strip()])
    return [_table(["seed", "UTC", "wall s", "1-min load min / mean / max (every 10 s)", "train+test per fold",
                    "hold-out", "uptime load before", "uptime load after"], rows)]


def per_seed_cis(runs: list[dict[str, Any]], numbers: dict[str, Any]) -> list[str]:
    lines = []
    for r in runs:
        folds = r["results"]["folds"]
        for key, name in SETS:
            if key not in numbers["sets"]:
                continue
            size = (f"{' / '.join(str(f['test']) for f in folds)} images" if key == "metrics"
                    else f"{r['results']['data']['holdout']['images']} images, the same for every fold's models")
            rows = [["Teacher", " / ".join(_ci(f["teacher"][key]) for f in folds)]]
            for s in numbers["students"]:
                for v in ORDER:
                    rows.append([f"{STUDENTS.get(s, s)} {TITLES[v]}",
                                 " / ".join(_ci(f["students"][f"{s}/{v}"][key]) for f in folds)])
            lines += [f"Seed {r['seed']}, {name} ({size}): AUC [95% CI] per fold", "",
                      _table(["model", " / ".join(f"fold {f['fold']}" for f in folds)], rows), ""]
    return lines


def write_summary(root: Path, seeds: list[int], summary: Path, doc: Path | None) -> dict[str, Any]:
    runs = load_runs(root, seeds)
    if not runs:
        raise SystemExit(f"error: no finished run under {root} for seeds {seeds}")
    numbers = aggregate(runs)
    config = runs[0]["results"]["config"]
    commands = [" ".join(["kd-keras", *r["run"]["argv"][2:]]) if r["run"] else "?" for r in runs]
    settings = ", ".join(f"{k}={config.get(k)}" for k in (
        "limit", "holdout_fraction", "image_size", "channels", "clahe", "folds", "students", "teacher",
        "teacher_weights", "teacher_epochs", "teacher_lr", "ul_epochs", "kd_epochs", "hard_epochs", "student_lr",
        "batch_size", "pool_size", "kd_objective", "temperature", "n_boot"))
    text = [
        "# Study 000 on Kermany chest X-rays: the seeds' summary",
        "",
        f"Generated by `python benchmarks/cxr_000_seeds.py --seeds {' '.join(map(str, seeds))} --root {root} "
        "--summary-only ...` from each run's `results.json`; do not edit by hand.",
        "",
        "## Commands (one after another, on this 2-core machine shared with other engineers' runs)",
        "",
        *[f"```\n{command}\n```" for command in commands],
        "",
        f"Settings: {settings}.",
        "",
        *runs_table(runs),
        "",
        "## Headline",
        "",
        *headline(runs, numbers),
        "## Per seed: AUC [95% CI over patients, clustered bootstrap] per fold",
        "",
        *per_seed_cis(runs, numbers),
    ]
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text("\n".join(text).rstrip("\n") + "\n")
    summary.with_suffix(".json").write_text(json.dumps(
        {"numbers": numbers, "runs": [{"seed": r["seed"], **r["run"]} for r in runs]}, indent=1) + "\n")
    if doc is not None:
        block = "\n".join(["<!-- cxr000:start -->", f"(generated by `benchmarks/cxr_000_seeds.py`; all tables: "
                           f"[{summary.name}]({summary.parent.name}/{summary.name}))", "",
                           *headline(runs, numbers), "<!-- cxr000:end -->"])
        current = doc.read_text()
        pattern = re.compile(r"<!-- cxr000:start -->.*?<!-- cxr000:end -->", re.S)
        if not pattern.search(current):
            raise SystemExit(f"error: {doc} has no <!-- cxr000:start --> ... <!-- cxr000:end --> block")
        doc.write_text(pattern.sub(lambda _: block, current))
    return numbers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="the Kermany chest X-ray class folders (NORMAL/, PNEUMONIA/), "
                        "e.g. the shared kermany-cxr/train; needed unless --summary-only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=Path("/tmp/h000/cxr000"), help="the runs' folder")
    parser.add_argument("--summary", type=Path, default=REPO / "docs" / "dr_kd_unlabeled_cxr" / "summary.md")
    parser.add_argument("--doc", type=Path, default=None, help="replace its <!-- cxr000:start/end --> block")
    parser.add_argument("--summary-only", action="store_true", help="no run; the summary from finished runs")
    args = parser.parse_args(own)
    if not args.summary_only and (args.data is None or not args.data.is_dir()):
        parser.error(f"--data {args.data}: not a folder; pass the chest X-ray class folders "
                     "(NORMAL/, PNEUMONIA/), or --summary-only")
    args.root.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for seed in args.seeds:
            if (args.root / f"seed{seed}" / "results.json").exists() and (args.root / f"seed{seed}.run.json").exists():
                print(f"seed {seed}: finished already")
                continue
            record = run_seed(seed, args.root, ["--data", str(args.data), *extra])
            print(f"seed {seed}: exit {record['returncode']}, {record['wall_seconds']} s", flush=True)
            if record["returncode"] != 0:
                return record["returncode"]
    write_summary(args.root, args.seeds, args.summary, args.doc)
    print(f"wrote {args.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
