"""Outputs of the latency benchmark (:mod:`kd_keras.export.latency`): JSON, markdown tables and a plot.

Works on :class:`kd_keras.export.latency.LatencyResult` objects (or anything with the same attributes).

Example:

```python
from kd_keras.export.latency_report import best_table, markdown_table

print(markdown_table(results))            # one row per (model, runtime, precision)
print(best_table(results, "resnet50"))    # each model in its fastest file that passed parity
```
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

__all__ = ["best_files", "best_table", "conditions", "markdown_table", "plot", "write_outputs"]


def best_files(results: Sequence, teacher: str | None) -> list[dict]:
    """Each model in its fastest file that passed its parity gate (or was not checked) against the teacher in its.

    Returns:
        One dict per model: ``model``, ``runtime``, ``precision``, ``median_s``, ``parity_passed``, ``macs_ratio``,
        ``speedup`` (over the teacher's fastest passing file), ``speedup_vs_fp32_teacher`` (over the teacher's
        fastest fp32 file), and ``best_macs_fraction``: the largest speed-up over the teacher in the same
        runtime and precision divided by the MACs ratio, over the model's passing files.
    """
    usable = [r for r in results if r.median_s and r.parity_passed is not False]
    models = list(dict.fromkeys(r.model for r in usable))
    teacher_name = None if teacher is None else (Path(teacher).stem if Path(teacher).suffix else teacher)
    fastest = {m: min((r for r in usable if r.model == m), key=lambda r: r.median_s) for m in models}
    teacher_fp32 = [r.median_s for r in usable if r.model == teacher_name and r.precision == "fp32"]
    rows = []
    for model in models:
        best = fastest[model]
        fractions = [r.speedup / r.macs_ratio for r in usable if r.model == model and r.speedup and r.macs_ratio]
        row = {"model": model, "runtime": best.runtime, "precision": best.precision, "median_s": best.median_s,
               "parity_passed": best.parity_passed, "macs": best.macs, "macs_ratio": best.macs_ratio,
               "speedup": None, "speedup_vs_fp32_teacher": None,
               "best_macs_fraction": max(fractions) if fractions else None}
        if teacher_name in fastest:
            row["speedup"] = fastest[teacher_name].median_s / best.median_s
        if teacher_fp32:
            row["speedup_vs_fp32_teacher"] = min(teacher_fp32) / best.median_s
        rows.append(row)
    return rows


def best_table(results: Sequence, teacher: str | None) -> str:
    """Markdown of :func:`best_files`: each model's fastest passing file and its speed-ups."""
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| model | fastest passing file | s / volume | speed-up vs the teacher's fastest | speed-up vs fp32 "
             "teacher | MACs ratio | best speed-up / MACs ratio (same runtime and precision) |", "|" + "---|" * 7]
    for row in best_files(results, teacher):
        lines.append(f"| {row['model']} | {row['runtime']} {row['precision']} | {row['median_s']:.3f} | "
                     f"{fmt(row['speedup'], '.1f')} | {fmt(row['speedup_vs_fp32_teacher'], '.1f')} | "
                     f"{fmt(row['macs_ratio'], '.1f')} | {fmt(row['best_macs_fraction'], '.2f')} |")
    return "\n".join(lines)


def conditions() -> dict:
    """The machine and load a benchmark ran under (load average before and after is what says 'quiet')."""
    from kd_keras.export.sidecar import package_versions

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average_1_5_15": load, "python": sys.version.split()[0],
            "versions": package_versions()}


def markdown_table(results: Sequence) -> str:
    """One row per (model, runtime, precision): median s/volume [min-max], ms/image, speed-up over the teacher in
    the same runtime and precision, MACs ratio, parity, sizes, memory."""
    header = ("| model | runtime | precision | median s / volume [min, max] | ms / image | speed-up vs teacher | "
              "MACs ratio | parity | params | MMACs | file MB | peak RSS MB |")
    lines = [header, "|" + "---|" * 12]
    parity = {True: "passed", False: "FAILED", None: "-"}

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for r in sorted(results, key=lambda r: (r.runtime, r.precision, -(r.median_s or 0))):
        timing = (f"{r.median_s:.3f} [{r.min_s:.3f}, {r.max_s:.3f}]" if r.median_s is not None
                  else f"failed: {r.error}")
        lines.append(
            f"| {r.model} | {r.runtime} | {r.precision} | {timing} | {fmt(r.ms_per_image, '.2f')} | "
            f"{fmt(r.speedup, '.2f')} | {fmt(r.macs_ratio, '.2f')} | {parity[r.parity_passed]} | "
            f"{fmt(r.params, ',')} | "
            f"{fmt(None if r.macs is None else r.macs / 1e6, '.0f')} | "
            f"{fmt(None if r.file_bytes is None else r.file_bytes / 2**20, '.1f')} | {fmt(r.peak_rss_mb, '.0f')} |"
        )
    return "\n".join(lines)


def _series(result) -> str:
    return result.runtime if result.precision == "fp32" else f"{result.runtime} {result.precision}"


def plot(results: Sequence, path: str | os.PathLike, title: str = "") -> Path:
    """Left: median seconds per volume (bars, min-max whiskers) per runtime; right: speed-up vs MAC ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in results if r.median_s is not None]
    runtimes = sorted({_series(r) for r in timed})  # one bar series per runtime and precision
    models = list(dict.fromkeys(r.model for r in timed))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    width = 0.8 / max(len(runtimes), 1)
    for k, runtime in enumerate(runtimes):
        by_model = {r.model: r for r in timed if _series(r) == runtime}
        xs = [i + k * width for i, m in enumerate(models) if m in by_model]
        rows = [by_model[m] for m in models if m in by_model]
        medians = np.array([r.median_s for r in rows])
        errors = np.array([[r.median_s - r.min_s for r in rows], [r.max_s - r.median_s for r in rows]])
        left.bar(xs, medians, width, yerr=errors, capsize=2, label=runtime)
        ratios = [(r.macs_ratio, r.speedup) for r in rows if r.macs_ratio and r.speedup]
        if ratios:
            right.scatter(*zip(*ratios, strict=True), label=runtime)
    left.set_xticks([i + width * (len(runtimes) - 1) / 2 for i in range(len(models))])
    left.set_xticklabels(models, rotation=60, ha="right", fontsize=8)
    left.set_ylabel(f"seconds per volume of {timed[0].num_images if timed else '?'} images")
    left.set_yscale("log")
    left.legend()
    limit = max([r.macs_ratio or 1 for r in timed] + [2])
    right.plot([1, limit], [1, limit], "k--", linewidth=1, label="speed-up = MAC ratio")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("teacher MACs / student MACs")
    right.set_ylabel("speed-up over the teacher (same runtime)")
    right.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(results: Sequence, stem: str | os.PathLike, command: str | None = None,
                  extra: dict | None = None, teacher: str | None = None) -> dict[str, Path]:
    """Write ``<stem>.json`` (results, best files, conditions, command), ``<stem>.md`` (tables) and ``<stem>.png``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "conditions": conditions(), **(extra or {}),
              "best": best_files(results, teacher), "results": [asdict(r) for r in results]}
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["md"].write_text(markdown_table(results) + "\n\n" + best_table(results, teacher) + "\n")
    plot(results, paths["png"])
    return paths


