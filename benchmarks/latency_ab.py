"""Before/after of each change to how the exported students run, side by side in one run (issue 20, item 3).

Each experiment loads every setting of a model in one process and times them in interleaved rounds
(:func:`kd_keras.export.latency_compare.interleaved_latency`), so the machine's load hits all settings alike;
the ratio of medians from the same run is what to quote.

Experiments (``--experiments``):

- ``onnx_rewrite``: ONNX Runtime on tf2onnx's graph as converted against the graph after the exact rewrites of
  :mod:`kd_keras.export.onnx_optimize` (channel shuffle as one Gather, input normalisation in NCHW);
- ``onnx_session``: the rewritten graph under graph optimisation levels ``all`` (default; NCHWc layout),
  ``extended`` and ``basic``, and ``all`` with the thread pool's spinning off;
- ``litert_xnnpack``: LiteRT fp32 with XNNPACK's defaults, its newest features
  (``experimental_default_delegate_latest_features``), and without the default delegate (reference kernels);
- ``batch``: images per call 1, 4, 16 and 32 in LiteRT fp32 and ONNX Runtime fp32 (rewritten graph).

Usage (repository root)::

    python benchmarks/latency_ab.py --models fdmobilenet_w1 shufflenetv2_w1 --out docs/latency/ab

writes ``<out>_<experiment>.json`` and ``.md``. Networks are untrained (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXPERIMENTS = ("onnx_rewrite", "onnx_session", "litert_xnnpack", "batch")


def _files(name: str, size: int, work: Path) -> dict[str, Path]:
    import keras

    from kd_keras.export.onnx_format import convert_onnx
    from kd_keras.export.onnx_optimize import optimize_onnx
    from kd_keras.export.tflite import convert_tflite
    from kd_keras.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(name, input_shape=(size, size, 3), num_classes=2)
    raw = convert_onnx(model, work / f"{name}_tf2onnx.onnx", optimize=False)
    rewritten = work / f"{name}.onnx"
    optimize_onnx(raw, rewritten)
    return {"onnx_raw": raw, "onnx": rewritten, "tflite": convert_tflite(model, work / f"{name}_fp32.tflite")}


def _settings(experiment: str, files: dict[str, Path], threads: int):
    from ai_edge_litert.interpreter import OpResolverType

    from kd_keras.export.latency_compare import Setting

    if experiment == "onnx_rewrite":
        return [Setting("tf2onnx graph", files["onnx_raw"], "onnxruntime", threads=threads),
                Setting("rewritten graph", files["onnx"], "onnxruntime", threads=threads)]
    if experiment == "onnx_session":
        return [Setting("level all (default)", files["onnx"], "onnxruntime", threads=threads),
                Setting("level extended (no NCHWc)", files["onnx"], "onnxruntime",
                        {"graph_optimization_level": "extended"}, threads=threads),
                Setting("level basic", files["onnx"], "onnxruntime", {"graph_optimization_level": "basic"},
                        threads=threads),
                Setting("all, no spinning", files["onnx"], "onnxruntime",
                        {"session_config": {"session.intra_op.allow_spinning": "0"}}, threads=threads)]
    if experiment == "litert_xnnpack":
        return [Setting("XNNPACK default", files["tflite"], "litert", threads=threads),
                Setting("XNNPACK latest features", files["tflite"], "litert",
                        {"experimental_default_delegate_latest_features": True}, threads=threads),
                Setting("no XNNPACK (builtin kernels)", files["tflite"], "litert",
                        {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES},
                        threads=threads)]
    if experiment == "batch":
        return [Setting(f"{runtime} batch {batch}", files[key], runtime, batch_size=batch, threads=threads)
                for runtime, key in (("litert", "tflite"), ("onnxruntime", "onnx")) for batch in (16, 1, 4, 32)]
    raise ValueError(f"unknown experiment {experiment!r}; expected any of {EXPERIMENTS}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["fdmobilenet_w1", "squeezenet_v1_1", "mobilenetv2_w1",
                                                         "shufflenetv2_w1"])
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-images", type=int, default=64, help="images per timed volume")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/latency/ab", help="output stem: <out>_<experiment>.json/.md")
    args = parser.parse_args(argv)

    from kd_keras.export.latency_compare import interleaved_latency, settings_table
    from kd_keras.export.latency_report import conditions

    records = {e: {"command": "python benchmarks/latency_ab.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "conditions": conditions(), "num_images": args.num_images, "repeats": args.repeats,
                   "models": {}} for e in args.experiments}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models:
            files = _files(name, args.size, Path(scratch))
            for experiment in args.experiments:
                rows = interleaved_latency(_settings(experiment, files, args.threads), num_images=args.num_images,
                                           repeats=args.repeats)
                records[experiment]["models"][name] = rows
                print(f"## {experiment}: {name} (load {rows[0]['load_before']} -> {rows[0]['load_after']})")
                print(settings_table(rows), flush=True)
            _write(records, args.out)  # after each model: a long run killed half-way keeps what it measured
    return 0


def _write(records: dict, out: str) -> None:
    from kd_keras.export.latency_compare import settings_table

    for experiment, record in records.items():
        stem = Path(f"{out}_{experiment}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        blocks = [f"{record['command']}", ""]
        for name, rows in record["models"].items():
            load = f"load average {rows[0]['load_before'][0]:.1f} -> {rows[0]['load_after'][0]:.1f}"
            blocks += [f"### {name} ({record['num_images']} images per volume, median of {record['repeats']}; "
                       f"{load})", "", settings_table(rows), ""]
        stem.with_suffix(".md").write_text("\n".join(blocks))


if __name__ == "__main__":
    sys.exit(main())
