"""Where the time of an exported model goes: per operator in ONNX Runtime, per sub-graph in LiteRT.

- :func:`profile_onnx`: ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) over a few batches;
  :func:`aggregate_onnx_events` sums the kernel time of each node, by operator type and by node.
- :func:`profile_litert_segments`: LiteRT's Python API has no per-operator profiler (XNNPACK runs the whole graph
  as one delegate node), so the graph is cut at named layers: each prefix ``input -> layer`` is converted to an
  fp32 ``.tflite`` and timed; the time of a segment is the difference between consecutive prefixes.

Both return plain dicts (JSON-ready); :func:`op_table` and :func:`segment_table` render them as markdown.

Example:

```python
from kd_keras.export.profile import op_table, profile_onnx

profile = profile_onnx("shufflenetv2_w1.onnx", batch_size=16, num_batches=8, threads=2)
print(op_table(profile, top=8))   # Conv 41%, Transpose 22%, ...
```
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["aggregate_onnx_events", "op_table", "profile_litert_segments", "profile_main", "profile_markdown",
           "profile_model", "profile_onnx", "segment_table"]


def aggregate_onnx_events(events: Iterable[dict], num_batches: int) -> dict:
    """Sum ONNX Runtime profiler events (``cat == "Node"``, ``name`` ending ``_kernel_time``) per batch.

    Args:
        events: the profiler's JSON list (``session.end_profiling()`` file).
        num_batches: how many ``run`` calls the events cover (times are divided by it).

    Returns:
        ``{"kernel_ms_per_batch", "by_op_type": {op: {"ms", "share", "nodes"}}, "by_node": [{"node", "op_type",
        "ms"}], ...}``, op types and nodes sorted by time, largest first.

    Example:
        >>> events = [{"cat": "Node", "name": "c1_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}}]
        >>> aggregate_onnx_events(events, 1)["by_op_type"]["Conv"]["ms"]
        3.0
    """
    if num_batches < 1:
        raise ValueError("num_batches must be >= 1")
    per_node: dict[str, float] = defaultdict(float)
    node_type: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        per_node[node] += float(event.get("dur", 0)) / 1000.0  # microseconds -> ms
        node_type[node] = event.get("args", {}).get("op_name", "?")
    total = sum(per_node.values())
    by_type: dict[str, dict] = {}
    for node, ms in per_node.items():
        entry = by_type.setdefault(node_type[node], {"ms": 0.0, "nodes": 0})
        entry["ms"] += ms / num_batches
        entry["nodes"] += 1
    for entry in by_type.values():
        entry["share"] = entry["ms"] * num_batches / total if total else 0.0
    by_type = dict(sorted(by_type.items(), key=lambda item: -item[1]["ms"]))
    by_node = sorted(({"node": n, "op_type": node_type[n], "ms": ms / num_batches} for n, ms in per_node.items()),
                     key=lambda row: -row["ms"])
    return {"kernel_ms_per_batch": total / num_batches, "by_op_type": by_type, "by_node": by_node}


def profile_onnx(
    path: str | os.PathLike,
    *,
    batch_size: int = 16,
    num_batches: int = 8,
    warmup: int = 2,
    threads: int | None = 2,
    session_config: dict[str, str] | None = None,
) -> dict:
    """Per-operator kernel time of an ``.onnx`` file in ONNX Runtime (CPU), from its own profiler.

    Args:
        path: the ``.onnx`` file (float input ``(batch, H, W, C)`` as exported here).
        batch_size: images per ``run``.
        num_batches: profiled runs (after ``warmup`` runs that are profiled too but dropped).
        warmup: runs before the profiled ones.
        threads: intra-op threads (``None``: ONNX Runtime's default).
        session_config: extra ``SessionOptions.add_session_config_entry`` keys.

    Returns:
        :func:`aggregate_onnx_events` of the profiled runs, plus ``wall_ms_per_batch`` (``run`` wall time, the
        profiler's own overhead included) and the settings.
    """
    import onnxruntime as ort

    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort_profile")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        shape = [batch_size, *(int(d) for d in feed.shape[1:])]
        images = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        for _ in range(warmup):
            session.run(None, {feed.name: images})
        mark = time.perf_counter()
        for _ in range(num_batches):
            session.run(None, {feed.name: images})
        wall_ms = 1000 * (time.perf_counter() - mark) / num_batches
        events = json.loads(Path(session.end_profiling()).read_text())
    # Keep the last num_batches runs: the profiler also recorded the warm-up runs.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) >= num_batches:
        start = runs[-num_batches]["ts"]
        events = [e for e in events if e.get("ts", 0) >= start]
    profile = aggregate_onnx_events(events, num_batches)
    return {"file": str(path), "runtime": "onnxruntime", "batch_size": batch_size, "num_batches": num_batches,
            "threads": threads, "wall_ms_per_batch": wall_ms, **profile}


def _time_tflite(path: Path, batch_size: int, repeats: int, threads: int | None) -> float:
    from kd_keras.export.tflite import LiteRTRunner

    runner = LiteRTRunner(path, num_threads=threads)
    images = np.random.default_rng(0).uniform(0, 255, (batch_size, *runner.input_shape)).astype(np.float32)
    runner.run_batch(images)  # warm-up (allocation, XNNPACK packing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run_batch(images)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def profile_litert_segments(
    model,
    cut_layers: Sequence[str],
    *,
    batch_size: int = 16,
    repeats: int = 7,
    threads: int | None = 2,
    work_dir: str | os.PathLike | None = None,
) -> dict:
    """Time of each segment of ``model`` in LiteRT (fp32, XNNPACK), from prefixes cut at ``cut_layers``.

    Args:
        model: a Keras functional model (the zoo's).
        cut_layers: layer names in graph order; the last segment runs from the last cut to the logits.
        batch_size: images per ``invoke``.
        repeats: timed invokes per prefix (median).
        threads: LiteRT threads.
        work_dir: where the prefix files go (default: temporary).

    Returns:
        ``{"segments": [{"segment", "ms", "share", "prefix_ms"}], "total_ms", ...}``; a segment's ``ms`` is
        ``prefix_ms`` minus the previous prefix's (noise can make a tiny segment slightly negative).
    """
    import keras

    from kd_keras.export.tflite import convert_tflite

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(work_dir) if work_dir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        prefix_ms, names = [], [*cut_layers, "logits"]
        for name in names:
            outputs = model.outputs[0] if name == "logits" else model.get_layer(name).output
            prefix = keras.Model(model.inputs, outputs, name=f"{model.name}_to_{name}")
            path = convert_tflite(prefix, work / f"{prefix.name}.tflite", "fp32")
            prefix_ms.append(_time_tflite(path, batch_size, repeats, threads))
    total = prefix_ms[-1]
    segments, previous, start = [], 0.0, "input"
    for name, ms in zip(names, prefix_ms, strict=True):
        segments.append({"segment": f"{start} -> {name}", "ms": ms - previous, "prefix_ms": ms,
                         "share": (ms - previous) / total if total else 0.0})
        previous, start = ms, name
    return {"model": model.name, "runtime": "litert", "batch_size": batch_size, "threads": threads,
            "repeats": repeats, "total_ms": total, "segments": segments}


def op_table(profile: dict, top: int = 8) -> str:
    """Markdown: the ``top`` operator types of an :func:`profile_onnx` result, ms per batch and share."""
    lines = ["| op type | nodes | ms / batch | share |", "|---|---:|---:|---:|"]
    for op, entry in list(profile["by_op_type"].items())[:top]:
        lines.append(f"| {op} | {entry['nodes']} | {entry['ms']:.2f} | {entry['share']:.1%} |")
    lines.append(f"| all kernels | | {profile['kernel_ms_per_batch']:.2f} | 100% |")
    return "\n".join(lines)


def segment_table(profile: dict) -> str:
    """Markdown: one row per segment of a :func:`profile_litert_segments` result."""
    lines = ["| segment | ms / batch | share |", "|---|---:|---:|"]
    for row in profile["segments"]:
        lines.append(f"| {row['segment']} | {row['ms']:.2f} | {row['share']:.1%} |")
    lines.append(f"| whole model | {profile['total_ms']:.2f} | 100% |")
    return "\n".join(lines)


def _cut_layers(model) -> list[str]:
    """The input normalisation layer and the zoo's stage taps, in graph order, where the model has them."""
    names = [layer.name for layer in model.layers]
    cuts = [n for n in names if n == "normalization"]
    try:
        from kd_keras.models.registry import get_spec

        cuts += [t for t in get_spec(model.name).taps if t in names]
    except (KeyError, ValueError):
        pass
    return sorted(cuts, key=names.index)


def profile_model(model, work_dir: str | os.PathLike, *, batch_size: int = 16, threads: int | None = 2,
                  num_batches: int = 6, segments: bool = True) -> dict:
    """ONNX Runtime per-operator profile of ``model`` exported with and without the exact rewrites of
    :mod:`kd_keras.export.onnx_optimize`, and its LiteRT per-segment time (cut at :func:`_cut_layers`)."""
    from kd_keras.export.onnx_format import convert_onnx
    from kd_keras.models.profile import count_macs

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    record = {"model": model.name, "macs": count_macs(model), "batch_size": batch_size, "threads": threads}
    for label, optimize in (("onnxruntime_tf2onnx", False), ("onnxruntime", True)):
        path = convert_onnx(model, work / f"{model.name}_{label}.onnx", optimize=optimize)
        record[label] = profile_onnx(path, batch_size=batch_size, num_batches=num_batches, threads=threads)
    if segments:
        record["litert"] = profile_litert_segments(model, _cut_layers(model), batch_size=batch_size,
                                                   threads=threads, work_dir=work)
    return record


def profile_main(targets: Sequence[str], teacher: str | None, *, out: str | os.PathLike, image_size: int = 224,
                 channels: int = 3, num_classes: int = 2, batch_size: int = 16, threads: int | None = 2,
                 command: str | None = None) -> int:
    """``kd-keras latency --profile``: :func:`profile_model` of each target; writes ``<out>.json`` and ``<out>.md``."""
    from kd_keras.export.latency_report import conditions

    names = list(dict.fromkeys([*([teacher] if teacher else []), *targets]))
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            if name.endswith(".keras"):
                from kd_keras.export.exporter import load_keras_model

                model = load_keras_model(name)
            else:
                from kd_keras.models import build_model

                model = build_model(name, input_shape=(image_size, image_size, channels), num_classes=num_classes)
            records.append(profile_model(model, scratch, batch_size=batch_size, threads=threads))
            print(f"{model.name}: ONNX Runtime {records[-1]['onnxruntime']['kernel_ms_per_batch']:.1f} ms/batch "
                  f"(tf2onnx graph {records[-1]['onnxruntime_tf2onnx']['kernel_ms_per_batch']:.1f}), LiteRT "
                  f"{records[-1]['litert']['total_ms']:.1f} ms/batch", flush=True)
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for record in records:  # the per-node lists are long: keep the 15 slowest nodes
        for key in ("onnxruntime", "onnxruntime_tf2onnx"):
            record[key]["by_node"] = record[key]["by_node"][:15]
    stem.with_suffix(".json").write_text(json.dumps({"command": command, "conditions": conditions(),
                                                     "models": records}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(profile_markdown(records) + "\n")
    print(profile_markdown(records))
    return 0


def profile_markdown(records: Sequence[dict], top: int = 6) -> str:
    """Per model: the ONNX Runtime op-type table (rewritten graph, and tf2onnx's) and the LiteRT segment table."""
    blocks = []
    for record in records:
        ort_ms = record["onnxruntime"]["kernel_ms_per_batch"]
        raw_ms = record["onnxruntime_tf2onnx"]["kernel_ms_per_batch"]
        blocks += [f"### {record['model']} ({record['macs'] / 1e6:,.0f} M multiply-adds per image; batch "
                   f"{record['batch_size']}, {record['threads']} threads)", "",
                   f"ONNX Runtime, rewritten graph ({ort_ms:.1f} ms/batch of kernels; tf2onnx's graph {raw_ms:.1f}):",
                   "", op_table(record["onnxruntime"], top), "",
                   "ONNX Runtime, tf2onnx's graph as converted:", "", op_table(record["onnxruntime_tf2onnx"], top), ""]
        if "litert" in record:
            blocks += ["LiteRT (XNNPACK), time per segment:", "", segment_table(record["litert"]), ""]
    return "\n".join(blocks)
