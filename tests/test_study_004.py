"""Study 004 (attention transfer): the --demo CLI runs end to end at CI size on a multi-label set with
uncertain (-1) labels, and the paper's learning-rate preset halves every 16 epochs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from kd_keras.studies import attention_transfer as study

REPO = Path(__file__).resolve().parents[1]


def test_paper_schedule_halves_every_16_epochs():
    config = study.ATConfig()
    lr = study.schedule(config, steps_per_epoch=10)
    assert math.isclose(float(lr(0)), 5e-5, rel_tol=1e-6)
    assert math.isclose(float(lr(159)), 5e-5, rel_tol=1e-6)
    assert math.isclose(float(lr(160)), 2.5e-5, rel_tol=1e-6)
    assert math.isclose(float(lr(320)), 1.25e-5, rel_tol=1e-6)


def test_attention_transfer_demo_multilabel_runs_and_writes_outputs(tmp_path):
    out = tmp_path / "run"
    env = {"KD_KERAS_TINY": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "attention_transfer.py"), "--demo", "--demo-task", "multilabel",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["records"]["task"] == "multilabel"
    assert "keras" in results["environment"]["packages"] and results["seed"] == 0
    runs = results["runs"]
    assert [(r["student"], r["method"], r["beta"]) for r in runs] == [("densenet40", "tl", None),
                                                                      ("densenet40", "at", 10.0)]
    at = runs[1]["log"]
    assert at["objective"]["name"] == "attention_transfer"
    assert at["objective"]["teacher_taps"] == [study.TEACHER_TAP] and at["objective"]["student_taps"] == ["stage3"]
    for r in runs:
        assert r["selected"]
        assert all(math.isfinite(v) for v in r["log"]["loss"])
        assert r["log"]["curve"] and all(0.0 <= auc <= 1.0 for _, auc in r["log"]["curve"])
        assert 0.0 <= r["test"]["auc"]["estimate"] <= 1.0
    report = (out / "report.md").read_text()
    assert "Beta grid" in report and "Test AUC" in report
    for name in ("learning_curves.png", "auc_vs_size.png", "models/densenet40_at_f1.keras",
                 "models/teacher_densenet121.keras"):
        assert (out / name).stat().st_size > 1000, name
