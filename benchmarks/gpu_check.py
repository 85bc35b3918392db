"""The GPU check: the main job's smoke and quick presets on one GPU and on all GPUs, in float32 and mixed
precision, and the per-volume latency in Keras and ONNX Runtime CUDA, written to ``docs/gpu.md``.

Each configuration is one ``kd-keras run oct`` process (``--strategy default`` on one device, ``--strategy
mirrored`` on all; ``--precision float32`` and ``mixed_float16``), timed from the outside; its ``results.json``
gives the replicas and the students' test AUC. Then ``kd-keras latency`` times study 002's students against
ResNet50 per volume (128 B-scans at 224 px) with the runtimes ``keras-gpu`` and ``onnxruntime-cuda``.

Without a GPU it says so and runs the same logic on 2 logical CPU devices (``mirrored`` = the logical CPUs,
``mixed_bfloat16`` instead of ``mixed_float16``, the ``keras`` and ``onnxruntime`` CPU runtimes): the figures are
then CPU figures, labelled as such. ``--plan`` prints the commands and runs none.

Usage (repository root)::

    python benchmarks/gpu_check.py                      # smoke + quick, writes docs/gpu.md
    python benchmarks/gpu_check.py --presets smoke --out runs/gpu_check --md runs/gpu_check/gpu.md
    benchmarks/gpu_check.sh                             # the same
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "gpu_count", "main", "plan", "write_markdown"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# Study 002's students as the latency table of docs/latency.md, against its ResNet50 teacher.
LATENCY_TARGETS = ("squeezenet_v1_1", "mobilenet_wd2", "shufflenet_g1_wd2", "sqnxt23_w1")
# 002's figures (P100, per volume): 0.109-0.178 s for its students, 0.452 s for ResNet50.
PAPER_LATENCY = "0.109-0.178 s per volume for the students, 0.452 s for ResNet50 (P100, study 002)"


@dataclass(frozen=True)
class Check:
    """One ``kd-keras run oct`` configuration of the check."""

    preset: str
    devices: str  # "one" or "all"
    precision: str

    @property
    def name(self) -> str:
        return f"{self.preset}_{self.devices}_{self.precision}"

    def command(self, out: Path, gpus: int) -> list[str]:
        strategy = "default" if self.devices == "one" or (gpus == 1 and self.devices == "all") else "mirrored"
        args = [sys.executable, "-m", "kd_keras", "run", "oct", "--preset", self.preset, "--strategy", strategy,
                "--precision", self.precision, "--out", str(out / self.name), "--overwrite", "--no-progress"]
        if gpus == 0 and strategy == "mirrored":
            args += ["--logical-cpu-devices", "2"]
        return args


def gpu_count() -> int:
    """Visible GPUs (TensorFlow's count; 0 without a GPU or without a CUDA build)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def plan(presets: list[str], gpus: int) -> list[Check]:
    """The configurations: each preset on one device and on all, in float32 and in the machine's mixed precision
    (``mixed_float16`` on GPUs, ``mixed_bfloat16`` on CPU devices)."""
    mixed = "mixed_float16" if gpus else "mixed_bfloat16"
    return [Check(preset, devices, precision) for preset in presets for devices in ("one", "all")
            for precision in ("float32", mixed)]


def latency_command(out: Path, gpus: int, repeats: int) -> list[str]:
    runtimes = ["keras-gpu", "onnxruntime-cuda"] if gpus else ["keras", "onnxruntime"]
    return [sys.executable, "-m", "kd_keras", "latency", *LATENCY_TARGETS, "--teacher", "resnet50",
            "--runtimes", *runtimes, "--image-size", "224", "--channels", "3", "--repeats", str(repeats),
            "--out", str(out / "latency")]


def _run(command: list[str], timeout: float) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=REPO_ROOT)
        return done.returncode, time.perf_counter() - start, (done.stdout + done.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        return 124, time.perf_counter() - start, f"stopped after {timeout:.0f} s"


def _summary(results_json: Path) -> dict:
    if not results_json.is_file():
        return {}
    results = json.loads(results_json.read_text())
    aucs = [auc for student in results.get("students", {}).values() for run in student.get("runs", [])
            for auc in (run.get("test_auc") or {}).values()]
    return {"replicas": results.get("run", {}).get("replicas"),
            "test_auc_mean": round(sum(aucs) / len(aucs), 3) if aucs else None, "student_runs": len(aucs)}


def write_markdown(path: Path, device: str, rows: list[dict], latency_md: str | None, command: str) -> Path:
    """``docs/gpu.md``: the configurations' times and AUCs, then the latency table."""
    lines = ["# GPU check", "", f"Machine: {device}. Command: `{command}`.", "",
             "| preset | devices | precision | replicas | wall time (s) | mean test AUC | status |",
             "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        auc = row.get("test_auc_mean")
        status = "ok" if row["status"] == 0 else f"failed ({row['status']})"
        lines.append(f"| {row['preset']} | {row['devices']} | {row['precision']} | {row.get('replicas') or '-'} | "
                     f"{row['seconds']:.0f} | {'-' if auc is None else auc} | {status} |")
    lines += ["", f"For comparison: {PAPER_LATENCY}.", ""]
    if latency_md:
        lines += ["## Per-volume latency", "", latency_md.strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["smoke", "quick"])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "gpu_check")
    parser.add_argument("--md", type=Path, default=REPO_ROOT / "docs" / "gpu.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--plan", action="store_true", help="print the commands, run none")
    args = parser.parse_args(argv)

    gpus = gpu_count()
    if gpus:
        device = f"{gpus} GPU(s)"
    else:
        device = "no GPU (CPU figures on 2 logical CPU devices; mixed_bfloat16 instead of mixed_float16)"
        print("no GPU found: running the check's logic on 2 logical CPU devices; the figures are CPU figures",
              file=sys.stderr)
    checks = plan(args.presets, gpus)
    commands = [check.command(args.out, gpus) for check in checks]
    latency = None if args.no_latency else latency_command(args.out, gpus, args.latency_repeats)
    if args.plan:
        for command in [*commands, *([latency] if latency else [])]:
            print(" ".join(command[1:]).replace("-m kd_keras", "kd-keras", 1))
        return 0
    rows = []
    for check, command in zip(checks, commands, strict=True):
        status, seconds, tail = _run(command, args.timeout)
        row = {"preset": check.preset, "devices": check.devices, "precision": check.precision, "status": status,
               "seconds": seconds, **_summary(args.out / check.name / "results.json")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if status:
            print(tail, file=sys.stderr)
    latency_md = None
    if latency:
        status, _, tail = _run(latency, args.timeout)
        md = args.out / "latency.md"
        latency_md = md.read_text() if status == 0 and md.is_file() else f"latency failed: {tail[-500:]}"
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"written: {write_markdown(args.md, device, rows, latency_md, command.strip())}")
    return 0 if all(row["status"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
