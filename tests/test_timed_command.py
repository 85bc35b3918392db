"""benchmarks/timed_command.py: the timing record every seed driver writes beside its runs."""

from __future__ import annotations

import sys

from timed_command import load_summary, run_timed


def test_run_timed_logs_output_times_the_run_and_samples_the_load(tmp_path):
    log = tmp_path / "run.log"
    seen: list[int] = []
    record = run_timed([sys.executable, "-c", "import time; print('first line'); time.sleep(0.5)"], log,
                       interval_s=0.1, on_sample=seen.append)
    assert record["exit_code"] == 0
    assert log.read_text() == "first line\n"
    assert 0.5 <= record["wall_s"] < 30
    assert len(record["load_1min_samples"]) >= 2 and len(set(seen)) == 1  # the child's pid at every sample
    assert len(record["load_before"]) == 3 and len(record["load_after"]) == 3


def test_run_timed_reports_a_failure_and_appends_to_a_resumed_log(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("killed run\n")
    record = run_timed([sys.executable, "-c", "import sys; print('resumed'); sys.exit(3)"], log, append=True)
    assert record["exit_code"] == 3
    assert log.read_text() == "killed run\nresumed\n"
    run_timed([sys.executable, "-c", "print('fresh')"], log)
    assert log.read_text() == "fresh\n"


def test_load_summary_before_mean_and_max():
    assert load_summary({"load_before": [0.5, 0.4, 0.3], "load_1min_samples": [1.0, 3.0]}) == {
        "before": 0.5, "mean": 2.0, "max": 3.0}
    # a run shorter than one interval: the load before stands for the run
    assert load_summary({"load_before": [1.5, 1.0, 1.0], "load_1min_samples": []}) == {
        "before": 1.5, "mean": 1.5, "max": 1.5}
