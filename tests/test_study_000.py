"""Study 000 (DR KD with unlabeled random images) on the runner: the legacy ``--demo`` script runs the smoke preset
end to end (every variant's sub-steps recorded, tables written); a replay of its ``config.yaml`` killed in the middle
of a training and resumed ends with the same numbers; presets, ``--demo``/``--tiny`` and refusals resolve as
documented; an offline ImageNet teacher is one line and exit status 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VARIANT_STEPS = {"base": ["hard"], "kd": ["kd", "hard"], "ul": ["ul", "hard"], "kd_ul": ["ul", "kd", "hard"]}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``experiments/dr_kd_unlabeled.py --demo`` with ``KD_KERAS_TINY=1``: the smoke preset, as CI ran it."""
    out = tmp_path_factory.mktemp("dr") / "run"
    env = {"KD_KERAS_TINY": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "HOME": str(out.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "dr_kd_unlabeled.py"), "--demo", "--no-progress", "--out",
         str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_tiny_runs_every_variant_and_writes_tables(smoke_run):
    out, proc = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["preset"] == "smoke" and results["seed"] == results["config"]["seed"] == 0
    assert "keras" in results["environment"]["packages"]
    # One fold at smoke size, every variant of Tables 1-2 for the student, with the sub-steps of the paper.
    (fold,) = results["folds"]
    assert {k: [s["stage"] for s in v["stages"]] for k, v in fold["students"].items()} == {
        f"simple10/{v}": steps for v, steps in VARIANT_STEPS.items()}
    # Stages (a) and (b) are conditional distillation (eqs. 1-2), (c) hard labels, each for its epochs.
    stages = fold["students"]["simple10/kd_ul"]["stages"]
    assert [s["objective"]["name"] for s in stages] == ["conditional", "conditional", "hard_label"]
    assert [len(s["loss"]) for s in stages] == [1, 1, 2] and all(math.isfinite(v) for s in stages for v in s["loss"])
    for key, cell in results["summary"].items():
        for metric in ("accuracy", "auc"):
            assert 0.0 <= cell[metric]["mean"] <= 1.0, (key, metric)
    labeled = results["data"]["labeled"]
    # 16 patients x 2 eyes in the folds; 3 test-only patients add 6 images to the fold's test set.
    assert fold["train"] + fold["test"] == sum(labeled["class_counts"].values()) + 6 == 32 + 6
    assert results["data"]["pool"]["images"] == 32
    # Every stage and sub-step recorded under its name (what --resume skips).
    recorded = {p.stem for p in (out / "stages").glob("fold*.json")}
    expected = {"fold0__teacher"} | {f"fold0__simple10__{v}" for v in VARIANT_STEPS} | {
        f"fold0__simple10__{v}__{s}" for v, steps in VARIANT_STEPS.items() for s in steps}
    assert recorded == expected
    report = (out / "report.md").read_text()
    assert "Table 1: accuracy" in report and "Table 2: AUC" in report and "Base model+KD+UL" in report
    assert "| Base model+KD+UL |" in proc.stdout  # the tables are printed at the end, as before
    assert "Paper's finding (Base < KD < UL < KD+UL for every student" in report
    assert "Paper's finding (Base < KD < UL < KD+UL" in proc.stdout and "[95% CI" in report
    assert (out / "methods.png").stat().st_size > 1000
    for variant in VARIANT_STEPS:
        assert (out / "models" / "fold0" / f"simple10_{variant}.keras").is_file()
    assert (out / "models" / "fold0" / "teacher_vgg16.keras").is_file()


def test_killed_replay_resumes_to_the_same_results(smoke_run, tmp_path):
    """Replay the smoke run from its config.yaml, SIGKILL it after the first of the two epochs of kd_ul's stage (c)
    (checkpoints: teacher 1; base 2-3; kd 4, 5-6; ul 7, 8-9; kd_ul 10 (a), 11 (b), 12-13 (c)), resume: the same
    numbers as the uninterrupted run, stage by stage and in results.json."""
    from kill_and_resume import kill_then_resume, numbers, stage

    first, _ = smoke_run
    out = tmp_path / "replayed"
    killed, resumed = kill_then_resume(["run", "dr", "--config", str(first / "config.yaml"), "--out", str(out),
                                        "--no-progress"], kill_at=12)
    assert "killing at checkpoint 12" in killed.stdout and "fold0__simple10__kd_ul__hard" in killed.stdout
    skipped = json.loads((out / "results.json").read_text())["run"]["resumed_stages"]
    # Finished stages and the chain's finished sub-steps (a), (b) are read back; (c) continues mid-training.
    assert {"fold0/teacher", "fold0/simple10/ul", "fold0/simple10/kd_ul/ul", "fold0/simple10/kd_ul/kd"} <= set(
        skipped)
    assert "fold0/simple10/kd_ul/hard" not in skipped and "fold0/simple10/kd_ul" not in skipped
    for name in ("fold0__teacher", "fold0__simple10__kd_ul__hard", "fold0__simple10__kd_ul"):
        assert numbers(stage(out, name)) == numbers(stage(first, name)), name
    a, b = (json.loads((run / "results.json").read_text()) for run in (first, out))
    for key in ("folds", "summary", "ordering_accuracy", "ordering_auc", "config"):
        assert numbers(b[key]) == numbers(a[key]), key
    assert (out / "config.yaml").read_text().split("\n", 1)[1] == (first / "config.yaml").read_text().split("\n", 1)[1]


def test_presets_demo_flags_and_refusals(monkeypatch, capsys):
    from kd_keras.cli import main, resolve_run
    from kd_keras.config import ConfigError

    monkeypatch.delenv("KD_KERAS_TINY", raising=False)
    # The old script's DEMO / DEMO_DATA and TINY / TINY_DATA dicts, written out independently.
    old_demo = dict(image_size=48, folds=5, max_folds=2, teacher_epochs=3, ul_epochs=2, kd_epochs=2, hard_epochs=4,
                    batch_size=16, n_boot=100, synthetic_patients=60, pool_size=300, teacher_weights=None,
                    synthetic_test_patients=150,  # issue 21: 300 more test images, no training label
                    students=("simple10", "vgg16_d2", "vgg16_d4"), variants=("base", "kd", "ul", "kd_ul"))
    _, demo, _ = resolve_run("dr", ["--demo"])
    assert demo.preset == "demo" and {k: getattr(demo, k) for k in old_demo} == old_demo
    assert resolve_run("dr", ["--preset", "demo"])[1] == demo
    _, smoke, _ = resolve_run("dr", ["--demo", "--tiny"])
    assert smoke.preset == "smoke" and smoke.students == ("simple10",) and smoke.image_size == 32
    assert (smoke.max_folds, smoke.teacher_epochs, smoke.hard_epochs, smoke.n_boot) == (1, 1, 2, 0)
    assert resolve_run("dr", ["--preset", "smoke"])[1] == smoke
    assert resolve_run("dr", ["--tiny"])[1].preset == "paper"  # --tiny without --demo: nothing, as before
    monkeypatch.setenv("KD_KERAS_TINY", "1")
    assert resolve_run("dr", ["--demo"])[1] == smoke
    monkeypatch.delenv("KD_KERAS_TINY")
    # Explicit options win over the --demo preset, as over any preset.
    _, config, _ = resolve_run("dr", ["--demo", "--image-size", "64", "--variants", "base", "kd_ul",
                                      "--no-fundus-crop", "--teacher-weights", "none"])
    assert (config.preset, config.image_size, config.variants, config.fundus_crop, config.hard_epochs) == (
        "demo", 64, ("base", "kd_ul"), False, 4)
    # paper (the default preset) = the paper's protocol (every value: tests/test_paper_presets.py).
    _, paper, _ = resolve_run("dr", ["--data", "x.csv", "--layout", "messidor"])
    assert paper.preset == "paper" and (paper.image_size, paper.folds, paper.teacher_weights) == (300, 5, "imagenet")
    assert main(["run", "dr", "--demo", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "preset: demo" in printed and "hard_epochs: 4" in printed and "layout: synthetic" in printed
    for argv, message in ((["--set", "hard_epoch=2"], "unknown setting 'hard_epoch'"),
                          (["--demo", "--set", "variants=[base, kd_x]"], "unknown ['kd_x']"),
                          (["--demo", "--preset", "smoke"], "--demo runs the 'demo' preset: drop --preset smoke"),
                          (["--demo", "--tiny", "--preset", "demo"], "--demo runs the 'smoke' preset"),
                          (["--demo", "--max-folds", "7"], "--max-folds must be in [1, folds=5]")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            resolve_run("dr", argv)
        assert main(["run", "dr", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_names_and_missing_data_refused_before_anything_is_written(tmp_path, capsys):
    from kd_keras.cli import main

    out = tmp_path / "run"
    for argv, message in ((["--demo", "--students", "simple11"], "--students 'simple11'"),
                          (["--demo", "--teacher", "vgg17"], "--teacher 'vgg17'"),
                          ([], "give --data (and --layout), or --demo")):
        assert main(["run", "dr", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


def test_offline_imagenet_is_one_line_and_exit_2(tmp_path, cxr_dir):
    # No cached ImageNet file under an empty Keras home: one clear line, exit status 2, no traceback.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KERAS_HOME": str(tmp_path / "keras"),
           "TF_CPP_MIN_LOG_LEVEL": "3", "no_proxy": "*", "https_proxy": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "dr_kd_unlabeled.py"), "--layout", "folders",
         "--data", str(cxr_dir), "--limit", "20", "--image-size", "32", "--folds", "2", "--pool-size", "8",
         "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )
    if proc.returncode == 0:
        pytest.skip("ImageNet weights were reachable")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "imagenet" in last.lower() and "Traceback" not in proc.stderr


def test_each_substep_trains_on_its_own_data(monkeypatch, tmp_path):
    """(a) ``ul`` sees only the random-image pool (labeled = 0, soft targets), (b) ``kd`` and (c) ``hard`` only the
    fold's labeled images. Cheap: the trainings are replaced by reading one epoch of the stream each would get."""
    from types import SimpleNamespace

    import numpy as np

    import kd_keras.models
    from kd_keras.config import resolve_config
    from kd_keras.data.records import Records
    from kd_keras.studies import dr_stages
    from kd_keras.studies.dr_config import PRESETS, DRKDConfig

    config = resolve_config(DRKDConfig, PRESETS, preset="smoke")
    size = config.image_size

    def array_records(n, value, task):
        labels = np.arange(n) % 2 if task == "binary" else np.full(n, -1)
        return Records(paths=None, labels=labels.astype("int64"), patients=np.array([f"p{i}" for i in range(n)],
                       dtype=object), class_names=("0", "1") if task == "binary" else (), task=task,
                       images=np.full((n, size, size, 3), value, dtype="uint8"), array_index=np.arange(n))

    train, test = array_records(10, 200, "binary"), array_records(4, 200, "binary")
    pool = array_records(6, 0, "unlabeled")
    seen = {}

    def fake_train(ctx, name, model, make_stream, objective, teacher, epochs, learning_rate):
        batches = list(make_stream().take(8).as_numpy_iterator())
        seen[name.rsplit("/", 1)[-1]] = (objective["name"], np.concatenate([b["labeled"] for b in batches]),
                                         np.concatenate([b["image"] for b in batches]))
        return {}

    class Model:
        def save(self, path):
            pass

    monkeypatch.setattr(dr_stages, "_train", fake_train)
    monkeypatch.setattr(dr_stages, "_fresh_start", lambda config, seed: None)
    monkeypatch.setattr(kd_keras.models, "build_model", lambda *args, **kwargs: Model())
    monkeypatch.setattr(kd_keras.models, "load_model", lambda path: Model())
    ctx = SimpleNamespace(config=config, data=SimpleNamespace(folds=[(train, test)], pool=pool),
                          outputs={"fold0/teacher": {"path": "teacher.keras"}}, run_dir=lambda name: tmp_path)
    previous = None
    for index, _ in enumerate(dr_stages.VARIANTS["kd_ul"][1]):
        previous = dr_stages._substep(ctx, 0, "simple10", "kd_ul", index, previous)["path"]

    assert set(seen) == {"ul", "kd", "hard"}
    objective, labeled, images = seen["ul"]
    assert objective == "conditional" and len(labeled) % len(pool) == 0 and not labeled.any()
    assert images.max() < 100, "the pool's (black) images, not the labeled (bright) ones"
    for step in ("kd", "hard"):
        objective, labeled, images = seen[step]
        assert len(labeled) % len(train) == 0 and labeled.all() and images.min() > 100
    assert seen["kd"][0] == "conditional" and seen["hard"][0] == "hard_label"


def test_holdout_patients_are_in_no_fold(tmp_path):
    """``holdout_fraction``: whole patients kept out of every fold's training and test sets, both classes among
    them; the folds' test sets share out the other patients; 0 keeps none; 1 is refused in one line."""
    import cv2
    import numpy as np

    from kd_keras.studies.dr_config import DRError, DRKDConfig
    from kd_keras.studies.dr_data import prepare_data

    rng = np.random.default_rng(0)
    names = [f"cxr/NORMAL/IM-{p:04d}-000{n}.png" for p in range(8) for n in (1, 2)]
    names += [f"cxr/PNEUMONIA/person{p}_bacteria_{p * 10 + n}.png" for p in range(8) for n in (1, 2)]
    names += [f"pool/natural-{i}.png" for i in range(4)]
    for name in names:  # distinct bytes per file (identical files would merge patients)
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 255, (8, 8), dtype=np.uint8))

    def prepared(fraction):
        config = DRKDConfig(layout="folders", data=str(tmp_path / "cxr"), pool=str(tmp_path / "pool"), image_size=32,
                            channels=1, fundus_crop=False, folds=2, holdout_fraction=fraction, teacher_weights=None)
        return prepare_data(config, tmp_path / f"out{fraction}", say=lambda line: None)

    data = prepared(0.25)
    held = set(data.holdout.patients.tolist())
    assert len(held) == 4 and set(data.holdout.labels.tolist()) == {0, 1}  # 2 of 8 patients per class
    for train, test in data.folds:
        assert not held & (set(train.patients.tolist()) | set(test.patients.tolist()))
    tested = [p for _, test in data.folds for p in test.patients.tolist()]
    assert len(tested) + len(data.holdout) == len(data.labeled) == 32 and len(set(tested)) == 12
    assert data.summary()["holdout"] == {"images": 8, "patients": 4, "class_counts": {"NORMAL": 4, "PNEUMONIA": 4}}
    none = prepared(0.0)
    assert none.holdout is None and sum(len(test) for _, test in none.folds) == 32
    with pytest.raises(DRError, match=r"--holdout-fraction must be in \[0, 1\), got 1.0"):
        DRKDConfig(layout="folders", data=str(tmp_path / "cxr"), holdout_fraction=1.0)


def test_report_shows_the_holdout_only_when_there_is_one():
    from kd_keras.studies.dr_config import DRKDConfig
    from kd_keras.studies.dr_report import holdout_lines, summarise

    config = DRKDConfig(students=("simple10",), variants=("base",))
    test, holdout = {"accuracy": 0.5, "auc": 0.6}, {"accuracy": 0.7, "auc": {"estimate": 0.8, "low": 0.7, "high": 0.9}}
    fold = {"test": 10, "teacher": {"metrics": test, "holdout_metrics": holdout},
            "students": {"simple10/base": {"metrics": test, "holdout_metrics": holdout}}}
    results = {"folds": [fold, fold], "summary": summarise([fold, fold], config), "data": {"holdout": {"images": 7}}}
    assert holdout_lines(results, config) == []
    results["summary_holdout"] = summarise([fold, fold], config, "holdout_metrics")
    assert results["summary"]["simple10/base"]["auc"]["mean"] == 0.6
    assert results["summary_holdout"]["simple10/base"]["auc"]["mean"] == results["summary_holdout"]["teacher"][
        "auc"]["mean"] == 0.8
    text = "\n".join(holdout_lines(results, config))
    assert "Hold-out (7 images of patients in no fold)" in text
    assert "80.00 [70.00, 90.00] / 80.00 [70.00, 90.00]" in text  # both folds' models on the same hold-out
