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
# Issue 21: 150 (smoke: 3) test-only patients, more test images and no more training labels.
OLD_DEMO["demo_test_patients"] = 150
OLD_TINY["demo_test_patients"] = 3


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
        assert r["steps_per_epoch"] == 1 and (r["train_auc"] is None or 0.0 <= r["train_auc"] <= 1.0)
    assert set(results["overfitting"]) == {"densenet40/tl/f1", "densenet40/at/f1"}
    # 12 patients (24 images) split train/val/test, and 3 test-only patients: 6 more test images.
    assert sum(results["split"].values()) == 24 + 6 and results["split"]["test"] >= 6
    report = (out / "report.md").read_text()
    assert "Paper's finding (attention transfer above transfer learning at the smallest training size" in report
    assert "Paper's finding (attention transfer" in proc.stdout
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


# ---- 004 as the paper ran it: selection over all epochs, repetitions, sizes as counts, its augmentation -------


def _records(patients: list[int]):
    import numpy as np

    from kd_keras.data.records import Records

    n = len(patients)
    return Records(paths=np.array([f"/x/{k}.png" for k in range(n)]), labels=np.arange(n) % 2,
                   patients=np.array([f"p{p}" for p in patients]), class_names=("no", "yes"), task="binary")


def test_training_sizes_as_counts_take_whole_patients_nested_and_refuse_too_many():
    from kd_keras.studies.attention_stages import subset_of_size

    train = _records([k // 3 for k in range(30)])  # 10 patients of 3 images
    small, large = subset_of_size(train, 7, seed=0), subset_of_size(train, 20, seed=0)
    assert (len(small), len(large)) == (7, 20)
    assert set(small.paths) <= set(large.paths)  # the smaller set inside the larger one
    counts = {p: list(small.patients).count(p) for p in set(small.patients)}
    assert sorted(counts.values()) == [1, 3, 3]  # two whole patients and the last one cut to the count
    with pytest.raises(study.StudyError, match="31 images asked for, but the training set holds 30"):
        subset_of_size(train, 31, seed=0)


def test_repetitions_get_their_own_stages_and_seeds():
    from kd_keras.studies.attention_stages import run_key, student_stages

    config = settings("--preset", "smoke", "--set", "repetitions=3", "--set", "train_sizes=[8, 4]",
                      "--set", "betas=[1, 10]")
    assert config.sizes() == (4, 8)  # counts replace the fractions, sorted
    names = [s.name for s in student_stages(config)]
    assert len(names) == len(set(names)) == 3 * 2 * 3  # repetitions x sizes x (TL + 2 betas)
    assert names[:3] == ["n4-densenet40-tl", "n4-densenet40-at-beta1", "n4-densenet40-at-beta10"]
    assert run_key(4, "densenet40", "tl", None, 2) == "n4-densenet40-tl-rep3" and names[-1].endswith("-rep3")
    seeds = [s.run.__defaults__[0][4] for s in student_stages(config)]  # (size, name, method, beta, seed, rep)
    groups = {(a[0], a[5]): a[4] for a in (s.run.__defaults__[0] for s in student_stages(config))}
    assert len(set(groups.values())) == len(groups) == 6  # every (size, repetition) group has its own seed
    assert len(seeds) == 18


def test_repeated_summary_is_the_mean_and_sample_sd():
    import numpy as np

    from kd_keras.studies.attention_stages import repeated_summary

    aucs = [0.7, 0.8, 0.9]
    runs = [{"size": 5000, "fraction": None, "student": "densenet40", "method": "tl", "beta": None, "selected": True,
             "repetition": r, "test": {"auc": {"estimate": a}}} for r, a in enumerate(aucs)]
    runs.append({**runs[0], "selected": False, "test": {"auc": {"estimate": 0.1}}})  # not selected: left out
    (row,) = repeated_summary(runs)
    assert (row["size"], row["n"]) == (5000, 3)
    assert row["auc"]["mean"] == pytest.approx(0.8) and row["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))


def test_selection_metric_and_paper_augmentation():
    import keras
    import numpy as np

    from kd_keras.studies.attention_stages import _augmenter

    paper = settings("--preset", "paper")
    assert paper.monitor("multiclass") == "weighted_f1" and paper.monitor("multilabel") == "auc"
    assert settings("--preset", "smoke").monitor("multiclass") == "auc"
    assert paper.preprocess().geometry == "center_crop" and settings("--demo").preprocess().geometry == "resize"
    layers = {type(layer).__name__: layer for layer in _augmenter(paper).layers}
    assert set(layers) - {"ClipPixels"} == {"RandomFlip", "RandomRotation"}  # no shift, brightness, contrast
    assert tuple(np.ravel(layers["RandomRotation"].factor)) in ((15 / 360,), (-15 / 360, 15 / 360))
    assert layers["RandomFlip"].mode == "horizontal"
    assert isinstance(_augmenter(paper), keras.Sequential)


@pytest.mark.parametrize("setting,words", [("repetitions=0", "--repetitions"), ("train_sizes=[1]", "--train-sizes"),
                                           ("validate_every=step", "--validate-every"),
                                           ("selection_metric=f1", "--selection-metric"),
                                           ("augmentation=heavy", "--augmentation"),
                                           ("min_steps_per_epoch=-1", "--min-steps-per-epoch"),
                                           ("limit=-1", "--limit")])
def test_bad_paper_settings_are_one_line(setting, words, tmp_path, capsys):
    assert main(["run", "attention", "--demo", "--set", setting, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_min_steps_per_epoch_cycles_small_training_sets_only():
    from kd_keras.studies.attention_stages import epoch_steps

    config = settings("--preset", "smoke", "--set", "batch_size=32", "--set", "min_steps_per_epoch=10")
    assert [epoch_steps(n, config) for n in (13, 65, 320, 321, 1300)] == [10, 10, 10, 11, 41]
    assert epoch_steps(13, settings("--preset", "smoke", "--set", "batch_size=32")) == 1  # default 0: one pass


def test_limit_draws_whole_patients_before_the_split(tmp_path):
    import cv2
    import numpy as np

    from kd_keras.runner import RunContext
    from kd_keras.studies.attention_stages import prepare_data

    for k in range(24):  # 24 patients of 2 images (Kermany chest X-ray names: the patient is IM-<k>)
        folder = tmp_path / "data" / ("NORMAL" if k % 2 else "PNEUMONIA")
        folder.mkdir(parents=True, exist_ok=True)
        for n in (1, 2):
            cv2.imwrite(str(folder / f"IM-{k:04d}-{n:04d}.png"), np.full((32, 32), 10 * k + n, np.uint8))
    config = settings("--preset", "smoke", "--demo-patients", "0", "--data", str(tmp_path / "data"),
                      "--limit", "15", "--seed", "3")
    data = prepare_data(RunContext(config=config, out=tmp_path / "out", store=None, say=lambda line: None))
    assert len(data.records) == len(data.train) + len(data.val) + len(data.test) == 15
    per_patient = sorted(list(data.records.patients).count(p) for p in set(data.records.patients))
    assert per_patient == [1] + [2] * 7  # seven whole patients and the last one cut to the count
    again = prepare_data(RunContext(config=config, out=tmp_path / "again", store=None, say=lambda line: None))
    assert list(again.records.paths) == list(data.records.paths)  # the seed draws the same patients


def test_cxr_driver_verdict_compares_smallest_and_largest_size():
    """benchmarks/cxr_004_seeds.py (docs/attention_cxr.md): reproduced only if AT beats TL at the smallest size
    and by more than at the largest, in every seed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cxr_004_seeds", REPO / "benchmarks" / "cxr_004_seeds.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)

    def seeds(*pairs):  # (AT - TL at the smallest size, at the largest) per seed
        return [{"rows": [{"difference": small, "train": 13}, {"difference": large, "train": 1300}]}
                for small, large in pairs]

    assert driver.answer(seeds((0.05, 0.01), (0.02, -0.01)))["verdict"] == "reproduced"
    assert driver.answer(seeds((0.05, 0.01), (-0.01, 0.0)))["verdict"] == "partly"
    assert driver.answer(seeds((0.01, 0.03), (0.02, 0.03)))["verdict"] == "partly"  # above, not more than large
    not_reproduced = driver.answer(seeds((-0.02, 0.01), (0.01, 0.0)))
    assert not_reproduced["verdict"] == "not reproduced" and not_reproduced["at_above_tl_smallest"] == "1 of 2"


@pytest.mark.slow
def test_repeated_counted_run_selected_over_every_epoch_by_weighted_f1(tmp_path):
    """The smoke run with 004's protocol switches: 2 repetitions, training sizes as counts, the best epoch of all
    by weighted F1 (a multi-class task), the paper's augmentation; a size beyond the training set is refused."""
    env = {**os.environ, "KD_KERAS_TINY": "1", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    sets = ["repetitions=2", "train_sizes=[6]", "validate_every=epoch", "selection_metric=auto",
            "augmentation=paper"]
    argv = [sys.executable, "-m", "kd_keras", "run", "attention", "--demo", "--demo-task", "multiclass",
            "--no-progress", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run([*argv, "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=900,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    runs = results["runs"]
    assert [(r["size"], r["method"], r["repetition"]) for r in runs] == [
        (6, "tl", 0), (6, "at", 0), (6, "tl", 1), (6, "at", 1)]
    for r in runs:
        assert r["train"] == 6 and r["val_metric"] == "weighted_f1" and r["selected"]
        assert [step for step, _ in r["log"]["curve"]] == [1, 2]  # one step per epoch, validated every epoch
        assert r["val_auc"] == max(score for _, score in r["log"]["curve"])
    (tl, at) = results["repeated"]
    assert (tl["n"], at["n"]) == (2, 2) and tl["auc"]["values"] == [runs[0]["test"]["auc"]["estimate"],
                                                                   runs[2]["test"]["auc"]["estimate"]]
    assert "+-" in (tmp_path / "run" / "report.md").read_text()
    too_many = subprocess.run([*argv[:-2], "--set", "train_sizes=[1000]", "--out", str(tmp_path / "big")],
                              capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert too_many.returncode == 2 and "--train-sizes: 1000 images asked for" in too_many.stderr
    assert too_many.stderr.strip().count("\n") == 0
