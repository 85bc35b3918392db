"""Side-by-side latency of several ways to run a model, interleaved in one process (before/after comparisons).

On a shared machine the load changes from one minute to the next, so two settings timed one after the other
can differ by the load alone. :func:`interleaved_latency` loads every setting first, then times one volume of
each in turn, ``repeats`` rounds, in a rotating order; the ratio of two medians from the same run is what to
quote. Each setting is a :class:`Setting`: a file, its runtime, runner options and a batch size.

Example:

```python
from kd_keras.export.latency_compare import Setting, interleaved_latency

rows = interleaved_latency([Setting("tf2onnx graph", "raw.onnx", "onnxruntime"),
                            Setting("rewritten", "opt.onnx", "onnxruntime")], num_images=64, repeats=7)
print(rows[1]["ratio_to_first"])   # 1.7: the rewritten graph is 1.7x faster
```
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Setting", "interleaved_latency", "settings_table"]


@dataclass
class Setting:
    """One way to run a model: ``file`` in ``runtime`` (``litert`` or ``onnxruntime``) with runner ``options``."""

    label: str
    file: str | os.PathLike
    runtime: str
    options: dict = field(default_factory=dict)
    batch_size: int = 16
    threads: int | None = 2


def _runner(setting: Setting):
    if setting.runtime == "litert":
        from kd_keras.export.tflite import LiteRTRunner

        runner = LiteRTRunner(setting.file, num_threads=setting.threads, **setting.options)
        return runner, runner.quantize_input
    if setting.runtime == "onnxruntime":
        from kd_keras.export.onnx_format import OnnxRunner

        return OnnxRunner(setting.file, num_threads=setting.threads, **setting.options), lambda batch: batch
    raise ValueError(f"{setting.label}: unknown runtime {setting.runtime!r} (litert or onnxruntime)")


def interleaved_latency(settings: Sequence[Setting], *, num_images: int = 64, repeats: int = 7,
                        warmup: int = 1, seed: int = 0) -> list[dict]:
    """Median seconds per volume of each setting, timed in interleaved rounds.

    Args:
        settings: the ways to run (the first is the reference of ``ratio_to_first``).
        num_images: images per volume.
        repeats: timed rounds; in round ``k`` the settings run in an order rotated by ``k``.
        warmup: untimed rounds first.
        seed: of the random [0, 255] pixels.

    Returns:
        One dict per setting: ``label``, ``runtime``, ``options``, ``batch_size``, ``times_s``, ``median_s``,
        ``ratio_to_first`` (the first setting's median over this one's: above 1 means faster), and the load
        average before and after the run.
    """
    if not settings:
        raise ValueError("no settings to compare")
    loaded = [_runner(s) for s in settings]
    shapes = {tuple(r.input_shape) for r, _ in loaded}
    if len(shapes) != 1:
        raise ValueError(f"the settings take different inputs: {sorted(shapes)}")
    volume = np.random.default_rng(seed).uniform(0, 255, (num_images, *shapes.pop())).astype(np.float32)
    batches = [[prepare(volume[i : i + s.batch_size]) for i in range(0, num_images, s.batch_size)]
               for s, (_, prepare) in zip(settings, loaded, strict=True)]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    times = [[] for _ in settings]
    for round_index in range(warmup + repeats):
        order = np.roll(np.arange(len(settings)), -round_index)
        for k in order:
            runner = loaded[k][0]
            start = time.perf_counter()
            for batch in batches[k]:
                runner.run_batch(batch)
            if round_index >= warmup:
                times[k].append(time.perf_counter() - start)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    medians = [float(np.median(t)) for t in times]
    return [{"label": s.label, "runtime": s.runtime, "file": str(s.file), "options": {k: str(v) for k, v in
             s.options.items()}, "batch_size": s.batch_size, "threads": s.threads, "num_images": num_images,
             "times_s": t, "median_s": m, "ratio_to_first": medians[0] / m, "load_before": load_before,
             "load_after": load_after} for s, t, m in zip(settings, times, medians, strict=True)]


def settings_table(rows: Sequence[dict]) -> str:
    """Markdown: label, runtime, batch, median s/volume [min, max], speed ratio to the first setting."""
    lines = ["| setting | runtime | batch | median s / volume [min, max] | speed vs first |", "|---|---|---:|---|---:|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['runtime']} | {row['batch_size']} | {row['median_s']:.3f} "
                     f"[{min(row['times_s']):.3f}, {max(row['times_s']):.3f}] | {row['ratio_to_first']:.2f}x |")
    return "\n".join(lines)
