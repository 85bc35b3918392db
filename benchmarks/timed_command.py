"""Run one command as a timed benchmark: its output to a log file, its wall time, and the machine's 1-minute load
average sampled while it ran.

Every run time in ``docs/`` is read against the load it ran under (2 shared CPU cores), so the seed drivers
(``quick_default_seeds.py``, ``cxr_003_seeds.py``, ``cxr_004_seeds.py``) record each run through
:func:`run_timed` and summarise the samples with :func:`load_summary`.

Example::

    record = run_timed(["kd-keras", "run", "oct", "--out", "/tmp/q"], Path("/tmp/q.log"))
    record["exit_code"], record["wall_s"], load_summary(record)["mean"]
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_summary", "run_timed"]


def run_timed(command: Sequence[str], log_path: Path, *, append: bool = False, interval_s: float = 5.0,
              on_sample: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``command`` to its end with stdout and stderr written to ``log_path``.

    Args:
        command: the program and its arguments (no shell).
        log_path: the log file; overwritten unless ``append``.
        append: add to an existing log (a resumed run keeps the killed run's lines).
        interval_s: seconds between two samples of the 1-minute load average.
        on_sample: called with the child's pid at every sample (e.g. to note which other processes ran).

    Returns:
        ``exit_code``, ``started_utc`` (``YYYY-MM-DD HH:MM:SS``), ``wall_s``, ``load_before`` and ``load_after``
        (the 1-, 5- and 15-minute averages), ``load_1min_samples`` and ``cpus``.
    """
    samples: list[float] = []
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    start = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log_path, "a" if append else "w") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(interval_s):
                samples.append(os.getloadavg()[0])
                if on_sample is not None:
                    on_sample(process.pid)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
    return {"exit_code": code, "started_utc": started, "wall_s": round(time.perf_counter() - start, 1),
            "load_before": list(load_before), "load_after": list(os.getloadavg()), "load_1min_samples": samples,
            "cpus": os.cpu_count()}


def load_summary(record: dict[str, Any]) -> dict[str, float]:
    """The 1-minute load before the run and its mean and maximum while it ran (before, when no sample was taken).

    Example:
        >>> load_summary({"load_before": [0.5, 0.4, 0.3], "load_1min_samples": [1.0, 3.0]})
        {'before': 0.5, 'mean': 2.0, 'max': 3.0}
    """
    before = float(record["load_before"][0])
    samples = record.get("load_1min_samples") or [before]
    return {"before": before, "mean": sum(samples) / len(samples), "max": max(samples)}
