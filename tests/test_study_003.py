"""Study 003 (SimCLR + distillation) on the runner: the ``--demo --tiny`` script runs every stage and baseline;
a run killed mid-training (SIGKILL) and resumed from its ``config.yaml`` ends with the same numbers; the legacy
options resolve to the presets, and bad settings are refused with one line.

The full runs go in subprocesses: the study turns on deterministic ops for its process, which must not leak into
the rest of the test session."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kill_and_resume import kill_then_resume, numbers

from kd_keras.cli import main, resolve_run

REPO = Path(__file__).resolve().parents[1]
STAGES = ["simclr", "teacher_finetune", "pseudo_labels", "student_pseudo", "student_finetune",
          "baseline-supervised", "baseline-fixmatch", "baseline-mixmatch", "evaluation", "tsne"]

# The old script's DEMO dict and DEMO_PATIENTS (experiments/simclr_distill.py before the port), written out here
# as the independent expectation of what `--demo` runs.
OLD_DEMO = dict(image_size=64, teacher_weights=None, student_weights=None, labeled_fraction=0.2, simclr_epochs=3,
                finetune_epochs=4, student_epochs=3, student_finetune_epochs=3, baseline_epochs=4, batch_size=16,
                simclr_lr=1e-3, finetune_lr=1e-3, student_lr=1e-2, baseline_lr=1e-3, n_boot=100, tsne_points=200,
                synthetic_patients=60)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("simclr") / "run"
    env = {"KD_KERAS_TINY": "1", "PATH": "/usr/bin:/bin", "HOME": str(out.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "simclr_distill.py"), "--demo", "--out", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_simclr_distill_demo_runs_every_stage_and_baseline(smoke_run):
    out, proc = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert "keras" in results["environment"]["packages"] and results["config"]["labeled_fraction"] == 0.3
    assert results["config"]["preset"] == "smoke"  # --demo with KD_KERAS_TINY=1
    assert sorted(p.stem for p in (out / "stages").glob("*.json")) == sorted([*STAGES, "config"])
    stages = results["stages"]
    assert list(stages) == ["simclr", "teacher_finetune", "student_pseudo", "student_finetune",
                            "supervised", "fixmatch", "mixmatch"]
    assert stages["simclr"]["objective"]["name"] == "simclr" and len(stages["simclr"]["loss"]) == 2
    assert stages["fixmatch"]["objective"]["name"] == "fixmatch"
    assert stages["mixmatch"]["objective"]["name"] == "mixmatch"
    for name, stage in stages.items():
        assert stage["loss"] and all(math.isfinite(v) for v in stage["loss"]), name
    split = results["split"]
    pseudo = results["pseudo_labels"]
    assert pseudo["total"] == split["pool"] and 0 <= pseudo["positive"] <= pseudo["total"]
    assert pseudo["rule"] == "positive-class probability > 0.5"
    assert sum(pseudo["pseudo_label_counts"].values()) == pseudo["total"]
    for method in ("supervised", "fixmatch", "mixmatch", "teacher", "student"):
        auc = results["test"][method]["test"]["auc"]["estimate"]
        # A constant predictor scores exactly 0.5: the bug this demo once had (stale BatchNorm statistics).
        assert 0.0 <= auc <= 1.0 and auc != 0.5, (method, auc)
        assert (out / "models" / f"{method}.keras").is_file()
    assert results["test"]["teacher"]["test"]["auc"]["estimate"] > 0.5  # the teacher learned something
    assert (out / "tsne.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "AUC (%)" in report and "Proposed: SimCLR + KD student" in proc.stdout


def test_killed_mid_training_and_resumed_from_config_ends_with_the_same_numbers(smoke_run, tmp_path):
    a, _ = smoke_run
    b = tmp_path / "replay"
    # Checkpoint 1 is the end of SimCLR's first of two epochs: the kill lands in the middle of that training.
    killed, resumed = kill_then_resume(["run", "simclr", "--config", str(a / "config.yaml"), "--out", str(b),
                                        "--no-progress"], kill_at=1)
    assert f"{b / 'runs' / 'simclr'}" in killed.stdout
    first, second = (json.loads((out / "results.json").read_text()) for out in (a, b))
    skip = ("seconds", "path", "cache", "cache_build", "file", "started", "finished")
    for key in ("split", "stages", "pseudo_labels", "test"):
        assert numbers(second[key], skip) == numbers(first[key], skip), key
    assert second["config"] == first["config"]
    assert second["run"]["resumed_stages"] == []  # nothing had finished: SimCLR went on from its checkpoint


def test_legacy_options_are_the_presets(monkeypatch):
    monkeypatch.delenv("KD_KERAS_TINY", raising=False)
    _, demo, _ = resolve_run("simclr", ["--demo"])
    _, preset_demo, _ = resolve_run("simclr", ["--preset", "demo"])
    assert demo == preset_demo and demo.preset == "demo"
    for key, value in OLD_DEMO.items():
        assert getattr(demo, key) == value, key
    assert (demo.teacher, demo.student, demo.fundus_crop, demo.seed) == ("resnet50", "densenet121", True, 0)
    _, tiny, _ = resolve_run("simclr", ["--demo", "--tiny"])
    _, smoke, _ = resolve_run("simclr", ["--preset", "smoke"])
    assert tiny == smoke and (smoke.teacher, smoke.student, smoke.image_size) == ("simple10", "vgg16_d4", 32)
    monkeypatch.setenv("KD_KERAS_TINY", "1")
    assert resolve_run("simclr", ["--demo"])[1] == smoke
    # Explicit options win over the preset --demo picks; the legacy spellings map to the settings.
    _, mine, _ = resolve_run("simclr", ["--demo", "--simclr-epochs", "5", "--baselines", "fixmatch",
                                        "--extra-test", "m2.csv:img", "--teacher-weights", "none"])
    assert (mine.preset, mine.simclr_epochs, mine.baselines, mine.extra_tests) == (
        "smoke", 5, ("fixmatch",), ("m2.csv:img",))
    assert mine.teacher_weights is None and mine.image_size == 32
    _, paper, _ = resolve_run("simclr", ["--data", "x", "--no-fundus-crop", "--baselines"])
    assert (paper.preset, paper.image_size, paper.fundus_crop, paper.baselines) == ("paper", 299, False, ())


def test_print_config_and_one_line_refusals(tmp_path, capsys):
    assert main(["run", "simclr", "--preset", "smoke", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "study: simclr" in printed and "preset: smoke" in printed and "teacher: simple10" in printed
    for argv, words in ((["--preset", "smoke", "--set", "simclr_epoch=3"], "unknown setting 'simclr_epoch'"),
                        (["--preset", "smoke", "--labeled-fraction", "1.5"], "--labeled-fraction"),
                        (["--preset", "smoke", "--student", "densenet999"], "--student 'densenet999'"),
                        (["--data", str(tmp_path / "missing")], "no such file"),
                        ([], "give --data")):
        out = tmp_path / f"out{len(words)}"
        assert main(["run", "simclr", *argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, (argv, err)
        assert not out.exists(), argv  # refused before anything is written


def test_no_import_of_the_old_common_module():
    for name in ("simclr_distill", "simclr_config", "simclr_stages"):
        source = (REPO / "kd_keras" / "studies" / f"{name}.py").read_text()
        assert "studies import common" not in source and "studies.common" not in source, name
    assert os.path.getsize(REPO / "experiments" / "simclr_distill.py") < 2000
