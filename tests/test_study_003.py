"""Study 003 (SimCLR + distillation): the --demo CLI runs all four stages and the three baselines at CI size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_simclr_distill_demo_runs_every_stage_and_baseline(tmp_path):
    out = tmp_path / "run"
    env = {"KD_KERAS_TINY": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "simclr_distill.py"), "--demo", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert "keras" in results["environment"]["packages"] and results["config"]["labeled_fraction"] == 0.3
    stages = results["stages"]
    assert list(stages) == ["simclr", "teacher_finetune", "student_pseudo", "student_finetune",
                            "supervised", "fixmatch", "mixmatch"]
    assert stages["simclr"]["objective"]["name"] == "simclr"
    assert stages["fixmatch"]["objective"]["name"] == "fixmatch"
    assert stages["mixmatch"]["objective"]["name"] == "mixmatch"
    for name, stage in stages.items():
        assert stage["loss"] and all(math.isfinite(v) for v in stage["loss"]), name
    split = results["split"]
    pseudo = results["pseudo_labels"]
    assert pseudo["total"] == split["pool"] and 0 <= pseudo["positive"] <= pseudo["total"]
    for method in ("supervised", "fixmatch", "mixmatch", "teacher", "student"):
        auc = results["test"][method]["test"]["auc"]["estimate"]
        assert 0.0 <= auc <= 1.0 or math.isnan(auc), method
        assert (out / "models" / f"{method}.keras").is_file()
    assert (out / "tsne.png").stat().st_size > 1000
    assert "AUC (%)" in (out / "report.md").read_text()
