"""Study 004 on the Kermany chest X-rays over several seeds: does attention transfer (AT) beat the transfer-learning
baseline (TL) more at small training sizes than at large ones? (issue 21, item 1; ``docs/attention_cxr.md``)

Runs ``kd-keras run attention --data <cxr> --seed S --out <work>/sS ...`` (the protocol below) for each seed, one
after the other (never two at once), recording the wall time and the 1-minute load average every 5 s while it
runs, then writes from the runs' ``results.json`` alone:

- ``<out>/summary.md`` and ``summary.json``: per seed and training size, the test AUC of TL and of AT (the beta
  chosen on validation) with 95% CIs from the patient-clustered bootstrap over test patients, AT - TL; per size,
  the mean +- SD over seeds; the train-validation gap (training-image AUC of the selected checkpoint minus its
  validation AUC) and where the validation curves peaked; the teacher; the time and load of each run; and the
  answer, computed: whether AT - TL is positive at the smallest size and larger there than at the largest size,
  per seed;
- ``<out>/learning_curves.png`` (validation AUC against step, TL and AT, every seed, one panel per size) and
  ``<out>/auc_vs_size.png`` (test AUC against training images, mean +- SD over seeds).

Usage (repository root)::

    python benchmarks/cxr_004_seeds.py --data ../shared/data/kermany-cxr/train --seeds 0 1 2 \
        --work /tmp/h004/runs --out docs/attention_cxr
    python benchmarks/cxr_004_seeds.py --seeds 0 1 2 --work /tmp/h004/runs --out docs/attention_cxr --table-only
    python benchmarks/cxr_004_seeds.py --data ../shared/data/kermany-cxr/train --seeds 0 --work /tmp/h004/probe \
        -- --set epochs=1   # more options

A seed whose run finished (``<work>/sS/results.json`` and ``<work>/sS.run.json``) is not run again; a killed one
is resumed (``--resume``). A note written by hand to ``<work>/sS.note`` is shown with the seed's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from timed_command import load_summary, run_timed

# The protocol of docs/attention_cxr.md (a 2-core CPU shared with other runs, under an hour for three seeds): the
# paper preset (its augmentation, L_AT and tap) with these changes: 2,400 images (whole patients, drawn per seed)
# split by patient 50/10/40, 64 px grey, a DenseNet-121 teacher trained here from random weights on the training
# split, DenseNet-40 students from random weights, TL and AT on 1%, 10% and 100% of the training split, one
# repetition per seed, a few epochs (at least 10 steps each), validation at curve points with BatchNorm statistics
# recomputed (a few dozen steps leave Keras' moving averages near their start).
PROTOCOL = [
    "--preset", "paper", "--set", "train_sizes=[]", "--repetitions", "1", "--validate-every", "curve_points",
    "--selection-metric", "auc", "--bn-recalibration-batches", "5",
    "--layout", "folders", "--task", "normal_vs_abnormal", "--limit", "2400",
    "--split", "0.5", "0.1", "0.4", "--image-size", "64", "--channels", "1", "--teacher-weights", "none",
    "--teacher-epochs", "3", "--teacher-lr", "1e-3", "--students", "densenet40", "--student-weights", "none",
    "--betas", "1", "--train-fractions", "0.01", "0.1", "1.0", "--epochs", "4", "--min-steps-per-epoch", "10",
    "--batch-size", "32", "--learning-rate", "1e-3", "--halve-every-epochs", "2", "--curve-points", "5",
    "--n-boot", "500",
]


def run_seed(seed: int, work: Path, options: list[str]) -> dict[str, Any]:
    """One study run with its wall time and the 1-minute load average sampled every 5 s while it ran."""
    out = work / f"s{seed}"
    command = ["kd-keras", "run", "attention", *options, "--seed", str(seed), "--out", str(out), "--no-progress"]
    resume = (out / "config.yaml").is_file()
    record = {"seed": seed, "command": " ".join(command),
              **run_timed([*command, "--resume"] if resume else command, work / f"s{seed}.log", append=True)}
    (work / f"s{seed}.run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ------------------------------------------------------------------------------------------------ summary


def _auc(run: dict[str, Any]) -> dict[str, float]:
    auc = run["test"]["auc"]
    return auc if isinstance(auc, dict) else {"estimate": auc}


def seed_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per training size of one run: TL and the selected AT run (test AUC with its CI, validation AUC, training
    AUC, where the validation curve peaked and how far it fell after)."""
    rows = []
    sizes = results["config"].get("train_sizes") or results["config"]["train_fractions"]
    for size in sizes:
        pair = {r["method"]: r for r in results["runs"] if r.get("selected") and r.get("size", r.get("fraction")) ==
                size and r.get("repetition", 0) == 0}
        row: dict[str, Any] = {"size": size, "train": pair["tl"]["train"]}
        for method, run in pair.items():
            curve = run["log"]["curve"]
            best = max(range(len(curve)), key=lambda i: curve[i][1]) if curve else None
            row[method] = {
                "test_auc": _auc(run), "val_auc": run["val_auc"], "train_auc": run.get("train_auc"),
                "beta": run["beta"], "steps_per_epoch": run.get("steps_per_epoch"), "curve": curve,
                "best_step": curve[best][0] if curve else None,
                "drop_after_best": curve[best][1] - curve[-1][1] if curve else None,
            }
        row["difference"] = row["at"]["test_auc"]["estimate"] - row["tl"]["test_auc"]["estimate"]
        tl, at = row["tl"]["test_auc"], row["at"]["test_auc"]
        row["ci_apart"] = ("low" in tl and "low" in at) and (at["low"] > tl["high"] or tl["low"] > at["high"])
        rows.append(row)
    return rows


def summarise(work: Path, seeds: list[int]) -> dict[str, Any]:
    """Everything the tables and plots show, from the runs' results and run records."""
    out = []
    for seed in seeds:
        results = json.loads((work / f"s{seed}" / "results.json").read_text())
        record_path = work / f"s{seed}.run.json"
        run = json.loads(record_path.read_text()) if record_path.is_file() else {}
        note = work / f"s{seed}.note"
        out.append({
            # "started": the key of the records written before timed_command.py
            "seed": seed, "command": run.get("command"), "started": run.get("started_utc", run.get("started")),
            "wall_s": run.get("wall_s"),
            "load_1min": load_summary(run) if run else dict.fromkeys(("before", "mean", "max"), float("nan")),
            "note": note.read_text().strip() if note.is_file() else "",
            "timing_seconds": results["timing_seconds"], "split": results["split"],
            "patients": results["data"]["records"]["patients"], "images": results["data"]["records"]["examples"],
            "class_counts": results["data"]["records"]["class_counts"],
            "teacher_auc": _auc(results["teacher"]), "rows": seed_rows(results),
        })
    return {"seeds": out, "answer": answer(out)}


def answer(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """The regularisation claim, computed: per seed, AT - TL at the smallest and the largest size; the verdict
    ``reproduced`` (AT above TL at the smallest size and the difference larger there than at the largest size, in
    every seed), ``not reproduced`` (neither holds in the mean over seeds) or ``partly``."""
    small = [s["rows"][0]["difference"] for s in seeds]
    large = [s["rows"][-1]["difference"] for s in seeds]
    above = [d > 0 for d in small]
    larger = [a > b for a, b in zip(small, large, strict=True)]
    if all(above) and all(larger):
        verdict = "reproduced"
    elif statistics.fmean(small) <= 0 and statistics.fmean(small) <= statistics.fmean(large):
        verdict = "not reproduced"
    else:
        verdict = "partly"
    return {"verdict": verdict, "difference_smallest": small, "difference_largest": large,
            "at_above_tl_smallest": f"{sum(above)} of {len(above)}", "larger_at_smallest": f"{sum(larger)} of "
            f"{len(larger)}", "smallest_train": seeds[0]["rows"][0]["train"],
            "largest_train": seeds[0]["rows"][-1]["train"]}


# ------------------------------------------------------------------------------------------------ markdown


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ci(auc: dict[str, float]) -> str:
    text = _pct(auc["estimate"])
    return text + (f" [{_pct(auc['low'])}, {_pct(auc['high'])}]" if "low" in auc else "")


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} +- {100 * sd:.1f}"


def _size(row: dict[str, Any]) -> str:
    size = row["size"]
    return f"{size} images" if isinstance(size, int) else f"{100 * size:g}% ({row['train']} images)"


def markdown(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    first = seeds[0]
    lines = ["# Study 004 on the Kermany chest X-rays: attention transfer vs transfer learning, by training size", "",
             "(generated by `benchmarks/cxr_004_seeds.py` from the runs' `results.json`; AUC in %)", "",
             "## Test AUC [95% CI over test patients] per seed", "",
             "| seed | training set | TL | AT (beta) | AT - TL | CIs apart |", "|---:|---|---|---|---:|---|"]
    for s in seeds:
        for row in s["rows"]:
            lines.append(f"| {s['seed']} | {_size(row)} | {_ci(row['tl']['test_auc'])} | "
                         f"{_ci(row['at']['test_auc'])} ({row['at']['beta']:g}) | {100 * row['difference']:+.1f} | "
                         f"{'yes' if row['ci_apart'] else 'no'} |")
    lines += ["", "## Mean +- SD over seeds", "",
              "| training set | TL test AUC | AT test AUC | AT - TL | AT above TL | TL train - val AUC | "
              "AT train - val AUC |", "|---|---|---|---|---:|---|---|"]
    for index, row in enumerate(first["rows"]):
        rows = [s["rows"][index] for s in seeds]
        gap = {m: [r[m]["train_auc"] - r[m]["val_auc"] if r[m]["train_auc"] is not None else None for r in rows]
               for m in ("tl", "at")}
        size = _size(row) if len({r["train"] for r in rows}) == 1 else _size(row).split(" (")[0]
        lines.append(f"| {size} | {_mean_sd([r['tl']['test_auc']['estimate'] for r in rows])} | "
                     f"{_mean_sd([r['at']['test_auc']['estimate'] for r in rows])} | "
                     f"{_mean_sd([r['difference'] for r in rows])} | {sum(r['difference'] > 0 for r in rows)} of "
                     f"{len(rows)} | {_mean_sd(gap['tl'])} | {_mean_sd(gap['at'])} |")
    lines += ["", "Train - val: the AUC of the selected checkpoint on its own training images minus its (best) "
              "validation AUC; a regulariser should shrink it.", "",
              "## Validation curves: step of the best point / fall after it (AUC points), per seed", "",
              "| training set | steps per epoch | " + " | ".join(f"TL s{s['seed']} | AT s{s['seed']}" for s in seeds)
              + " |", "|---|---:|" + "---|---|" * len(seeds)]
    for index, row in enumerate(first["rows"]):
        cells = []
        for s in seeds:
            for m in ("tl", "at"):
                r = s["rows"][index][m]
                cells.append(f"{r['best_step']} / {_pct(r['drop_after_best'])}")
        lines.append(f"| {_size(row).split(' (')[0]} | {row['tl']['steps_per_epoch']} | " + " | ".join(cells) + " |")
    a = summary["answer"]
    lines += ["", "## The claim, computed", "",
              f"AT - TL at the smallest size ({a['smallest_train']} images in seed {first['seed']}): "
              + ", ".join(f"{100 * d:+.1f}" for d in a["difference_smallest"])
              + f"; at the largest ({a['largest_train']} images): "
              + ", ".join(f"{100 * d:+.1f}" for d in a["difference_largest"])
              + f" (seeds {', '.join(str(s['seed']) for s in seeds)}). AT above TL at the smallest size in "
              f"{a['at_above_tl_smallest']} seeds; the difference larger at the smallest size than at the largest in "
              f"{a['larger_at_smallest']}. Verdict: **{a['verdict']}**.", "",
              "## Data, teacher and run time per seed", "",
              "| seed | split train / val / test images | teacher test AUC | started | wall s | load 1-min "
              "(before / mean / max) | note |", "|---:|---|---|---|---:|---|---|"]
    for s in seeds:
        split = s["split"]
        load = s["load_1min"]
        wall = "-" if s["wall_s"] is None else f"{s['wall_s']:.0f}"
        lines.append(f"| {s['seed']} | {split['train']} / {split['val']} / {split['test']} | "
                     f"{_ci(s['teacher_auc'])} | {s['started'] or '-'} | {wall} | {load['before']:.2f} / "
                     f"{load['mean']:.2f} / {load['max']:.2f} | {s['note'] or ''} |")
    stages = list(first["timing_seconds"])
    lines += ["", "Seconds per stage:", "", "| seed | " + " | ".join(stages) + " |", "|---:|" + "---:|" * len(stages)]
    for s in seeds:
        lines.append(f"| {s['seed']} | " + " | ".join(f"{s['timing_seconds'].get(k, 0):.0f}" for k in stages) + " |")
    counts = ", ".join(f"{k} {v}" for k, v in first["class_counts"].items())
    lines += ["", f"{first['images']} images of {first['patients']} patients ({counts}), split by patient per seed "
              "(train / validation / test: no patient in two parts).", "", "Commands:", ""]
    lines += [f"    {s['command']}" for s in seeds if s["command"]]
    lines += ["", "![validation curves](learning_curves.png)", "", "![test AUC against size](auc_vs_size.png)"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots


def plot(summary: dict[str, Any], out: Path) -> None:
    """``learning_curves.png`` (a panel per size: validation AUC against step, TL and AT, every seed) and
    ``auc_vs_size.png`` (test AUC against training images, mean +- SD over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = summary["seeds"]
    rows = seeds[0]["rows"]
    colours = {"tl": "tab:blue", "at": "tab:orange"}
    fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.6), squeeze=False)
    for index, ax in enumerate(axes[0]):
        for k, s in enumerate(seeds):
            for m in ("tl", "at"):
                curve = s["rows"][index][m]["curve"]
                if curve:
                    steps, aucs = zip(*curve, strict=True)
                    ax.plot(steps, aucs, marker=".", color=colours[m], alpha=0.8, linestyle=("-", "--", ":")[k % 3],
                            label=f"{m.upper()} seed {s['seed']}")
        ax.set_title(_size(rows[index]))
        ax.set_xlabel("training step")
        ax.set_ylabel("validation AUC")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in ("tl", "at"):
        xs = [statistics.fmean(s["rows"][i]["train"] for s in seeds) for i in range(len(rows))]
        values = [[s["rows"][i][m]["test_auc"]["estimate"] for s in seeds] for i in range(len(rows))]
        means = [statistics.fmean(v) for v in values]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, color=colours[m], label=f"{m.upper()} (mean +- SD)")
        for v, x in zip(values, xs, strict=True):
            ax.scatter([x] * len(v), v, color=colours[m], s=8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("test AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "auc_vs_size.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the Kermany chest X-ray class folders (NORMAL/, PNEUMONIA/), e.g. "
                        "the shared kermany-cxr/train; needed unless --table-only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="/tmp/h004/runs", help="run folders <work>/s<seed> and their run records")
    parser.add_argument("--out", default="docs/attention_cxr", help="folder of summary.md, summary.json, plots")
    parser.add_argument("--table-only", action="store_true", help="the summary again from finished runs")
    parser.add_argument("extra", nargs="*", help="more kd-keras run attention options (after --), e.g. --set k=v")
    args = parser.parse_args(argv)
    if not args.table_only and (args.data is None or not Path(args.data).is_dir()):
        parser.error(f"--data {args.data}: not a folder; pass the chest X-ray class folders "
                     "(NORMAL/, PNEUMONIA/), or --table-only")
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in args.seeds:
            if (work / f"s{seed}" / "results.json").is_file() and (work / f"s{seed}.run.json").is_file():
                continue
            record = run_seed(seed, work, [*PROTOCOL, "--data", args.data, *args.extra])
            samples = record["load_1min_samples"] or [0.0]
            print(f"seed {seed}: exit {record['exit_code']}, {record['wall_s']} s, load {min(samples):.2f}-"
                  f"{max(samples):.2f}", flush=True)
            if record["exit_code"]:
                print(f"seed {seed} failed: see {work / f's{seed}.log'}", file=sys.stderr)
                return 1
    summary = summarise(work, args.seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    plot(summary, out)
    print(f"wrote {out / 'summary.md'}: verdict {summary['answer']['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
