"""Study 004 (attention transfer) on the runner: the settings and presets (``--demo`` is ``--preset demo``, ``--demo
--tiny`` is ``--preset smoke``, the demo's values as before the port), one-line refusals, the paper's learning-rate
schedule, the smoke run end to end on a multi-label set with uncertain (-1) labels, and a run killed in the middle
of an attention-transfer training that resumes to the same numbers as the uninterrupted run.

The full runs go in subprocesses: the study turns on deterministic ops for its process, which must not leak into
the rest of the test session."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kill_and_resume import kill_then_resume, numbers

from kd_keras.cli import main, resolve_run
from kd_keras.studies import attention_transfer as study

REPO = Path(__file__).resolve().parents[1]

# The script's DEMO and TINY dicts before the port (experiments/attention_transfer.py at 65c259b), with their
# patient counts; None was "no weights", now the setting "none". TINY trained 1 epoch; the smoke preset trains 2
# so that a killed student run resumes from an epoch-end checkpoint.
OLD_DEMO = dict(image_size=64, teacher_weights="none", teacher_epochs=4, teacher_lr=1e-3, student_weights="none",
                students=("densenet40",), betas=(1.0, 100.0), train_fractions=(0.5, 1.0), epochs=6, batch_size=16,
                learning_rate=1e-3, halve_every_epochs=4, curve_points=8, n_boot=100, demo_patients=60)
OLD_TINY = dict(image_size=32, teacher_weights="none", teacher_epochs=0, student_weights="none",
                students=("densenet40",), betas=(10.0,), train_fractions=(1.0,), epochs=2, batch_size=16,
                learning_rate=1e-3, halve_every_epochs=1, curve_points=2, n_boot=0, split=(0.6, 0.2, 0.2),
                demo_patients=12)


def settings(*argv: str) -> study.ATConfig:
    return resolve_run("attention", list(argv))[1]


def test_paper_schedule_halves_every_16_epochs():
    lr = study.schedule(study.ATConfig(), steps_per_epoch=10)
    assert math.isclose(float(lr(0)), 5e-5, rel_tol=1e-6)
    assert math.isclose(float(lr(159)), 5e-5, rel_tol=1e-6)
    assert math.isclose(float(lr(160)), 2.5e-5, rel_tol=1e-6)
    assert math.isclose(float(lr(320)), 1.25e-5, rel_tol=1e-6)


def test_presets_and_demo_flags(monkeypatch):
    monkeypatch.delenv("KD_KERAS_TINY", raising=False)
    defaults = {f.name: f.default for f in dataclasses.fields(study.ATConfig)}
    paper = dataclasses.asdict(settings())
    # The paper preset's own values: tests/test_paper_presets.py checks them against 004's text.
    assert paper == {**defaults, **study.PRESETS["paper"], "preset": "paper"}
    assert paper["learning_rate"] == 5e-5 and paper["halve_every_epochs"] == 16 and paper["epochs"] == 128
    demo = dataclasses.asdict(settings("--demo"))
    assert demo == {**defaults, **OLD_DEMO, "preset": "demo"}
    assert demo == dataclasses.asdict(settings("--preset", "demo"))
    smoke = dataclasses.asdict(settings("--demo", "--tiny"))
    assert smoke == {**defaults, **OLD_TINY, "preset": "smoke"}
    assert smoke == dataclasses.asdict(settings("--preset", "smoke"))
    monkeypatch.setenv("KD_KERAS_TINY", "1")
    assert settings("--demo").preset == "smoke"
    assert settings().preset == "paper"  # KD_KERAS_TINY only shrinks the demo, as before
    # The user's options win over --demo's preset, whichever order they come in.
    monkeypatch.delenv("KD_KERAS_TINY")
    config = settings("--betas", "1", "30", "--demo", "--demo-task", "multilabel", "--set", "epochs=3")
    assert (config.preset, config.betas, config.demo_task, config.epochs, config.image_size) == (
        "demo", (1.0, 30.0), "multilabel", 3, 64)


def test_print_config_replays_as_a_config_file(tmp_path, capsys):
    assert main(["run", "attention", "--demo", "--tiny", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "preset: smoke" in text and "demo_patients: 12" in text
    (tmp_path / "c.yaml").write_text(text)
    assert settings("--config", str(tmp_path / "c.yaml")) == settings("--preset", "smoke")


@pytest.mark.parametrize("argv, message", [
    (["--set", "betaz=[1]"], "unknown setting 'betaz' (did you mean 'betas'?)"),
    (["--students", "resnet50"], "--students must be among ('densenet121', 'densenet40')"),
    (["--demo", "--betas", "0"], "--betas must be positive numbers"),
    (["--demo", "--demo-task", "segmentation"], "--demo-task must be one of"),
    (["--demo", "--data", "x.csv"], "give either --data or the synthetic demo data"),
    (["--demo", "--split", "0.5", "0.6", "0.1"], "--split must be three positive fractions summing to 1"),
])
def test_bad_settings_are_refused_in_one_line(argv, message, tmp_path, capsys):
    assert main(["run", "attention", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "give --data (and --layout), or --demo"),
    (["--data", "no/such/folder"], "--data no/such/folder: no such file or folder"),
    (["--demo", "--teacher-weights", "missing.keras"], "--teacher-weights missing.keras: no such file"),
])
def test_missing_data_or_teacher_refused_before_anything_is_written(argv, message, tmp_path, capsys):
    assert main(["run", "attention", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("at") / "smoke"
    env = {**os.environ, "KD_KERAS_TINY": "1", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "attention_transfer.py"), "--demo", "--demo-task", "multilabel",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_multilabel_runs_and_writes_outputs(smoke_run):
    out, proc = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["preset"] == "smoke" and results["data"]["records"]["task"] == "multilabel"
    assert "keras" in results["environment"]["packages"] and results["seed"] == 0
    stages = sorted(p.stem for p in (out / "stages").glob("*.json"))
    assert stages == ["config", "curves", "evaluation", "f1-densenet40-at-beta10", "f1-densenet40-tl", "teacher"]
    runs = results["runs"]
    assert [(r["student"], r["method"], r["beta"]) for r in runs] == [("densenet40", "tl", None),
                                                                      ("densenet40", "at", 10.0)]
    at = runs[1]["log"]
    assert at["objective"]["name"] == "attention_transfer"
    assert at["objective"]["teacher_taps"] == [study.TEACHER_TAP] and at["objective"]["student_taps"] == ["stage3"]
    for r in runs:
        assert r["selected"]
        assert len(r["log"]["loss"]) == 2 and all(math.isfinite(v) for v in r["log"]["loss"])
        # 14 training images, batch 16: one step per epoch; curve_points=2 over 2 steps: a point per step.
        assert [step for step, _ in r["log"]["curve"]] == [1, 2]
        assert all(0.0 <= auc <= 1.0 for _, auc in r["log"]["curve"])
        assert r["val_auc"] == max(auc for _, auc in r["log"]["curve"])
        assert 0.0 <= r["test"]["auc"]["estimate"] <= 1.0
    assert set(results["overfitting"]) == {"densenet40/tl/f1", "densenet40/at/f1"}
    report = (out / "report.md").read_text()
    assert "Beta grid" in report and "Test AUC" in report
    assert "## Beta grid: best validation AUC (%)" in proc.stdout  # the tables are printed at the end, as before
    for name in ("learning_curves.png", "auc_vs_size.png", "models/densenet40_at_f1.keras",
                 "models/densenet40_tl_f1.keras", "models/teacher_densenet121.keras"):
        assert (out / name).stat().st_size > 1000, name
    assert "preset: smoke" in (out / "config.yaml").read_text()


def test_killed_mid_attention_training_resumes_to_the_same_numbers(smoke_run, tmp_path):
    out, _ = smoke_run
    resumed_out = tmp_path / "replay"
    # Checkpoints: the TL run saves 2 (one per epoch end), so the 3rd is the AT run's first epoch end, of 2.
    killed, resumed = kill_then_resume(["run", "attention", "--config", str(out / "config.yaml"),
                                        "--out", str(resumed_out), "--no-progress"], kill_at=3, timeout=900)
    assert "f1-densenet40-at-beta10" in killed.stdout.split("killing at checkpoint")[1]
    a = json.loads((out / "results.json").read_text())
    b = json.loads((resumed_out / "results.json").read_text())
    assert b["run"]["resumed_stages"] == ["teacher", "f1-densenet40-tl"]
    for name in ("teacher", "f1-densenet40-tl", "f1-densenet40-at-beta10", "evaluation", "curves"):
        left = json.loads((out / "stages" / f"{name}.json").read_text())
        right = json.loads((resumed_out / "stages" / f"{name}.json").read_text())
        assert numbers(left) == numbers(right), name
    # Everything but the run's own record and the data folder (under each run's --out) is the same.
    skip = ("seconds", "path", "cache", "file", "started", "finished", "root", "run")
    assert numbers(a, skip) == numbers(b, skip)
    assert a["runs"][1]["log"]["curve"] == b["runs"][1]["log"]["curve"]
