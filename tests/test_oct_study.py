"""The OCT student-teacher study end to end at the smoke size (32 px synthetic OCT, one tiny student, a few
steps): every output written, results.json complete and finite, --resume skipping finished stages, one-line
errors (offline ImageNet weights, bad data, bad options), --labeled-fraction moving whole patients.

The full runs go in subprocesses: the study turns on deterministic ops for its process, which must not leak into
the rest of the test session."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from kd_keras.cli import main, resolve_run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "oct_student_teacher.py"


def run_script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), "--no-progress", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def kd_keras_main(argv: list[str]) -> int:
    """``kd-keras run oct *argv`` in this process."""
    return main(["run", "oct", *argv])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oct_smoke")
    done = run_script("--preset", "smoke", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_every_output_is_written(smoke_run):
    out, done = smoke_run
    for name in ("results.json", "report.md", "time_vs_accuracy.png", "accuracy_vs_unlabeled_fraction.png",
                 "roc.png", "models/mobilenet_wd4.keras", "models/teacher/mobilenet_wd2.keras",
                 "export/mobilenet_wd4_fp32.tflite", "export/mobilenet_wd4.onnx"):
        assert (out / name).is_file(), name
    assert list((out / "export").glob("*.json")), "export sidecars"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "TensorBoard event files"
    assert list((out / "models" / "mobilenet_wd4").glob("*.keras")), "one .keras per student run"
    # Saved predictions load without pickle and carry one cluster (volume) per prediction, for paired bootstraps.
    saved = np.load(out / "predictions" / "mobilenet_wd4__baseline__validation.npz")
    assert saved["clusters"].dtype.kind == "U" and len(saved["clusters"]) == len(saved["labels"]) > 0
    assert len(set(saved["clusters"])) < len(saved["clusters"])  # several B-scans per volume
    # The one-screen summary and the recommendation.
    assert "test AUC" in done.stdout and "Deploy" in done.stdout and "report.md" in done.stdout
    report = (out / "report.md").read_text()
    for heading in ("## Recommendation", "## Sensitivity and specificity", "## Per-volume inference",
                    "## Every student run", "## Pseudo-labels", "## Exported files"):
        assert heading in report


def test_report_names_the_predict_command_of_the_deployed_student(smoke_run):
    out, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    from kd_keras.studies.oct_report import predict_command

    command = predict_command(results)
    assert command.startswith("kd-keras predict ") and f"    {command}" in (out / "report.md").read_text()
    path = Path(command.split()[2])
    assert path.name == "mobilenet_wd4_fp32.tflite" and path.is_file()  # smoke exports fp32 and ONNX only


def test_results_json_structure_and_numbers(smoke_run):
    out, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 0 and results["config"]["preset"] == "smoke"
    packages = results["environment"]["packages"]  # name -> installed version
    assert packages["keras"] == metadata.version("keras") and {"tensorflow", "tensorflow-cpu"} & set(packages)
    data = results["data"]
    assert data["labeled_train"] > 0 and data["unlabeled"] > 0 and data["test_sets"] == ["synthetic_test"]
    assert data["cluster_unit"] == "volume" and data["skipped_files"] == []
    sets = ["validation", "synthetic_test"]
    teacher = results["teacher"]
    assert teacher["name"] == "mobilenet_wd2" and teacher["params"] > 0
    for set_name in sets:
        ev = teacher["eval"][set_name]
        assert ev["n"] == (data["validation"] if set_name == "validation" else data["test_sizes"][set_name])
        for metric in ("sensitivity", "specificity", "accuracy"):
            assert _finite(ev[metric]["estimate"]) and 0 <= ev[metric]["estimate"] <= 1
    student = results["students"]["mobilenet_wd4"]
    assert [r["key"] for r in student["runs"]] == ["baseline_0", "pseudo_100"]
    assert student["student_teacher"]["key"] == "pseudo_100"
    for kind in ("baseline", "student_teacher"):
        test = student[kind]["eval"]["synthetic_test"]
        assert test["n"] == data["test_sizes"]["synthetic_test"]
        assert _finite(test["sensitivity"]["estimate"]) and _finite(test["specificity"]["estimate"])
        assert test["auc"]["low"] <= test["auc"]["estimate"] <= test["auc"]["high"]
        assert sum(map(sum, test["confusion_matrix"])) == test["n"]
    for run in student["runs"]:
        assert _finite(run["best_val_accuracy"]) and set(run["test_auc"]) == {"synthetic_test"}
    # The deployed (exported) model is whichever of baseline and student-teacher validated better.
    monitor = results["config"]["monitor"]
    by_key = {run["key"]: run for run in student["runs"]}
    baseline_score = by_key["baseline_0"][f"chosen_val_{monitor}"]
    transfer_score = by_key["pseudo_100"][f"chosen_val_{monitor}"]
    assert student["deployed"] == ("student_teacher" if transfer_score > baseline_score else "baseline")
    assert student["export"]["from_run"] == ("pseudo_100" if transfer_score > baseline_score else "baseline_0")
    pseudo = results["pseudo_labels"]
    assert pseudo["pool_size"] == data["unlabeled"]
    assert sum(pseudo["pseudo_label_counts"].values()) == pseudo["pool_size"]
    assert 0 <= pseudo["truth_check"]["pseudo_label_accuracy"] <= 1
    latency = results["latency"]
    assert latency["primary_runtime"] == "litert" and latency["teacher"] == "mobilenet_wd2"
    for name in ("mobilenet_wd2", "mobilenet_wd4"):
        assert latency["models"][name]["seconds_per_volume"]["litert"] > 0
    assert _finite(latency["models"]["mobilenet_wd4"]["speedup"]["litert"])
    files = results["students"]["mobilenet_wd4"]["export"]["files"]
    assert {f["variant"] for f in files} == {"fp32"} and all(f["parity"]["passed"] for f in files)
    # Parity runs on every validation image topped up with training images (16 > the 8 validation images).
    assert data["validation"] < 16
    assert all(f["parity"]["num_images"] == 16 for f in files)
    assert results["resumed_stages"] == []


def test_resume_skips_finished_stages(smoke_run):
    out, _ = smoke_run
    before = (out / "results.json").read_text()
    done = run_script("--preset", "smoke", "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["resumed_stages"]) == {"teacher", "pseudo_labels", "student-mobilenet_wd4", "evaluation",
                                              "export", "latency"}
    assert "finished stages skipped" in done.stdout
    # Same numbers: nothing was retrained.
    assert json.loads(before)["students"] == results["students"]
    # A different configuration in the same folder is refused with one line.
    refused = run_script("--preset", "smoke", "--out", str(out), "--resume", "--seed", "3")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --resume:")
    assert "Traceback" not in refused.stderr


def test_offline_imagenet_is_one_line(tmp_path, monkeypatch, capsys):
    import keras

    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))  # no cached weights file
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    code = kd_keras_main(["--preset", "smoke", "--teacher", "resnet50", "--teacher-weights", "imagenet", "--out",
                          str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: --teacher-weights imagenet")
    assert "--teacher-weights none" in err[0] and "local weights file" in err[0]


def test_bad_data_and_options_are_one_line(tmp_path, capsys):
    missing = kd_keras_main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o1"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert missing == 2 and len(err) == 1 and "nope" in err[0]
    folders = tmp_path / "data"
    import cv2

    for name in ("CAT", "DOG"):
        (folders / name).mkdir(parents=True)
        cv2.imwrite(str(folders / name / f"{name}-1-1.png"), np.zeros((40, 40), np.uint8))
    no_normal = kd_keras_main(["--data-dir", str(folders), "--out", str(tmp_path / "o2"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert no_normal == 2 and len(err) == 1 and "--normal-class" in err[0]
    bad_fraction = kd_keras_main(["--labeled-fraction", "1.5", "--out", str(tmp_path / "o3")])
    err = capsys.readouterr().err.strip().splitlines()
    assert bad_fraction == 2 and err == ["error: --labeled-fraction must be in (0, 1], got 1.5"]


def test_labeled_fraction_moves_whole_patients(smoke_run):
    from kd_keras.data.synthetic_oct import SyntheticOCTConfig, generate_synthetic_oct
    from kd_keras.studies.oct_student_teacher import OCTStudyConfig, prepare_data

    smoke = OCTStudyConfig.from_preset("smoke")
    root = generate_synthetic_oct(config=SyntheticOCTConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                               for k, v in smoke.synthetic.items()}))
    full = prepare_data(OCTStudyConfig.from_preset("smoke", data_dir=str(root / "labeled"),
                                                   test_dirs=(str(root / "test"),),
                                                   unlabeled_dirs=(str(root / "unlabeled"),)), say=lambda _: None)
    half = prepare_data(OCTStudyConfig.from_preset("smoke", data_dir=str(root / "labeled"), labeled_fraction=0.5,
                                                   test_dirs=(str(root / "test"),),
                                                   unlabeled_dirs=(str(root / "unlabeled"),)), say=lambda _: None)
    kept = set(half.train.patients.tolist())
    moved = set(full.train.patients.tolist()) - kept
    assert kept and moved and kept < set(full.train.patients.tolist())
    # The moved patients' images are in the pool, unlabeled, with their true labels kept aside for scoring only.
    extra = len(half.pool) - len(full.pool)
    assert extra == len(full.train) - len(half.train)
    assert set(half.pool.patients[-extra:].tolist()) == moved and not half.pool.labeled.any()
    assert (half.pool_truth[-extra:] >= 0).all()
    assert set(half.validation.patients.tolist()) == set(full.validation.patients.tolist())
    assert half.cluster_unit == "patient" and list(half.tests) == ["test"]


def test_presets_follow_the_paper():
    from kd_keras.studies.oct_student_teacher import OCTStudyConfig, StudyError

    paper = OCTStudyConfig.from_preset("paper")
    assert (paper.image_size, paper.teacher, paper.teacher_optimizer, paper.teacher_batch_size) == (
        224, "resnet50", "sgd", 64)
    assert (paper.student_optimizer, paper.student_batch_size, paper.student_epochs) == ("adam", 64, 20)
    assert paper.student_learning_rates == (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    assert paper.fractions == (0.0, 0.25, 0.5, 0.75, 1.0) and paper.images_per_volume == 128
    assert paper.monitor == "accuracy"
    # The baseline is always there; fractions are sorted and deduplicated.
    assert OCTStudyConfig.from_preset("quick", fractions=(1.0, 0.5, 0.5)).fractions == (0.0, 0.5, 1.0)
    # Another teacher drops the preset teacher's builder options.
    assert OCTStudyConfig.from_preset("quick", teacher="resnet50").teacher_options == {}
    with pytest.raises(StudyError, match="method"):
        OCTStudyConfig.from_preset("quick", method="magic")


def test_export_table_reports_each_file_and_why_one_failed():
    from kd_keras.studies.oct_report import table_export

    passed = {"max_relative_diff": 3e-6, "decision_agreement": 1.0, "passed": True, "failures": []}
    failed = {"max_relative_diff": 0.2, "decision_agreement": 0.83, "passed": False,
              "failures": ["decision agreement 83.33% < 99.00% on 96 images"]}
    results = {"students": {"mobilenet_wd2": {"export": {
        "error": "export fails parity with Keras: ...",
        "files": [{"path": "/x/mobilenet_wd2_fp32.tflite", "variant": "fp32", "parity": passed},
                  {"path": "/x/mobilenet_wd2_int8.tflite.failed", "variant": "int8", "parity": failed}]}}}}
    rows = [line for line in table_export(results).splitlines() if line.startswith("| mobilenet_wd2")]
    assert len(rows) == 2  # one row per file, no separate error row when the files carry their reports
    assert rows[0].endswith("| yes |") and "3.0e-06" in rows[0]
    assert "NO: decision agreement 83.33% < 99.00%" in rows[1] and "83.33" in rows[1]


def test_recommendation_deploys_the_baseline_when_the_unlabeled_images_did_not_help():
    from kd_keras.studies.oct_report import recommend

    def evals(val_auc, test_auc):
        return {"validation": {"auc": {"estimate": val_auc}},
                "test": {"auc": {"estimate": test_auc}, "sensitivity": {"estimate": 0.8},
                         "specificity": {"estimate": 0.7}}}

    results = {
        "data": {"test_sets": ["test"]}, "config": {"threshold": 0.5}, "latency": {},
        "teacher": {"eval": evals(0.98, 0.97)},
        "students": {
            # b: the better test AUC but the worse validation AUC - choosing it would peek at the test set.
            "a": {"baseline": {"eval": evals(0.93, 0.91)}, "deployed": "baseline",
                  "student_teacher": {"method": "pseudo", "fraction": 0.5, "eval": evals(0.90, 0.92)}},
            "b": {"baseline": {"eval": evals(0.80, 0.95)}, "deployed": "baseline"},
        },
    }
    text = recommend(results)
    assert text.startswith("Deploy **a**, trained with labeled images only: AUC 0.910 on `test`")
    assert "validated no better than its baseline" in text
    # The test set disagrees with validation here (0.92 > 0.91): the text says so instead of "did not help".
    assert "although it scored higher on `test` (0.920 vs 0.910): the validation set decided it" in text
    results["students"]["a"]["student_teacher"]["eval"] = evals(0.90, 0.89)
    results["data"]["validation"] = 64
    text = recommend(results)
    assert "the unlabeled images did not help it on `test` either (0.890 vs 0.910)" in text
    results["students"]["a"]["student_teacher"]["eval"] = evals(0.90, 0.92)
    assert "(0.920 vs 0.910): 64 validation images decided it" in recommend(results)
    results["students"]["a"]["deployed"] = "student_teacher"
    text = recommend(results)
    assert "student-teacher framework (pseudo targets, 50% of the unlabeled pool): AUC 0.920" in text
    assert "raised its AUC (0.910 with the labeled images alone, +0.010)" in text


def test_steps_per_epoch_option(capsys):
    def config(*argv):
        return resolve_run("oct", argv)[1]

    assert config().student_steps_per_epoch == 100  # the quick preset's fixed budget
    assert config("--steps-per-epoch", "0").student_steps_per_epoch is None
    assert config("--steps-per-epoch", "7").student_steps_per_epoch == 7
    quick = config()
    assert (quick.teacher_epochs, quick.teacher_steps_per_epoch) == (10, 20)
    scaled = config("--epochs", "24")
    assert (scaled.student_epochs, scaled.teacher_epochs) == (24, 20)  # the preset's 10:12 ratio
    pinned = config("--epochs", "20", "--teacher-epochs", "33", "--teacher-steps-per-epoch", "0")
    assert (pinned.teacher_epochs, pinned.teacher_steps_per_epoch) == (33, None)
    for argv, message in ((["--steps-per-epoch", "-1"], "--steps-per-epoch: must be >= 0, got -1"),
                          (["--epochs", "0"], "--epochs: must be >= 1, got 0"),
                          (["--teacher-epochs", "0"], "--teacher-epochs: must be >= 1, got 0"),
                          (["--teacher-steps-per-epoch", "-2"], "--teacher-steps-per-epoch: must be >= 0")):
        with pytest.raises(SystemExit) as refused:
            config(*argv)
        assert refused.value.code == 2 and message in capsys.readouterr().err


def test_killed_replay_resumes_to_the_same_results(smoke_run, tmp_path):
    """Replay the smoke run from its config.yaml, SIGKILL it in the middle of the baseline student's training
    (checkpoints 1-2: the teacher's two epochs; 3: the student's first epoch of two), resume: same numbers."""
    from kill_and_resume import kill_then_resume, numbers, stage

    first, _ = smoke_run
    out = tmp_path / "replayed"
    killed, resumed = kill_then_resume(["run", "oct", "--config", str(first / "config.yaml"), "--out", str(out),
                                        "--no-progress"], kill_at=3)
    assert "runs/mobilenet_wd4__baseline_0" in killed.stdout  # killed inside the student's training
    skipped = json.loads((out / "results.json").read_text())["run"]["resumed_stages"]
    assert {"teacher", "pseudo_labels"} <= set(skipped) and "student-mobilenet_wd4-baseline_0" not in skipped
    for name in ("teacher", "student-mobilenet_wd4-baseline_0", "student-mobilenet_wd4-pseudo_100", "evaluation"):
        assert numbers(stage(out, name)) == numbers(stage(first, name)), name
    assert (out / "config.yaml").read_text().split("\n", 1)[1] == (first / "config.yaml").read_text().split("\n", 1)[1]


def _every_objective_config(tmp_path: Path) -> tuple[Path, list[dict]]:
    import yaml

    from kd_keras.engine import list_objectives

    settings = {"attention_transfer": {"variant": "zagoruyko"}, "fixmatch": {"threshold": 0.5}, "mixmatch": {"seed": 0}}
    objectives = [{"name": name, **settings.get(name, {})} for name in list_objectives()]
    config = tmp_path / "objectives.yaml"
    config.write_text(yaml.safe_dump({"study": "oct", "preset": "smoke", "student_objectives": objectives,
                                      "student_epochs": 1, "teacher_epochs": 1, "export_variants": ["tflite_fp32"]}))
    return config, objectives


def test_every_registered_objective_is_accepted_from_a_config_file(tmp_path):
    """Default tier, no training: the file resolves, each objective is built and the study's checks pass (taps the
    student and teacher offer, channels), one uniquely named run per objective; the runs themselves are the slow
    test below, and each objective's train step is checked against NumPy in tests/test_objectives_distiller.py."""
    from kd_keras.studies.oct_stages import run_key, student_runs

    config_file, objectives = _every_objective_config(tmp_path)
    study, config, _ = resolve_run("oct", ["--config", str(config_file)])
    assert [dict(o) for o in config.student_objectives] == objectives
    study.check(config)
    runs = student_runs(config)[1:]
    assert [r["objective"]["name"] for r in runs] == [o["name"] for o in objectives]
    assert len({run_key(r) for r in runs}) == len(runs)


@pytest.mark.slow
def test_every_registered_objective_runs_from_a_config_file(tmp_path):
    """One student-teacher run per registered objective, named in a config file; each trains, is evaluated on the
    test set and is reported (about 3.5 minutes: the slow tier, `python -m pytest -m slow`)."""
    from kill_and_resume import kd_keras

    config, objectives = _every_objective_config(tmp_path)
    done = kd_keras(["run", "oct", "--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    runs = {run["objective"]["name"]: run for run in results["students"]["mobilenet_wd4"]["runs"][1:]}
    assert sorted(runs) == sorted(o["name"] for o in objectives)
    for name, run in runs.items():
        assert run["fraction"] == 1.0 and run["objective"] == next(o for o in objectives if o["name"] == name)
        assert _finite(run["test_auc"]["synthetic_test"]), name
    assert len({run["key"] for run in runs.values()}) == len(runs)


def test_latency_table_names_a_model_none_of_whose_files_could_be_timed():
    from kd_keras.studies.oct_report import table_latency

    table = table_latency({"latency": {"models": {
        "broken": {"seconds_per_volume": {}, "errors": {"litert": "conversion failed"}},
        "mobilenet_wd4": {"params": 1234, "macs": 2.5e6, "seconds_per_volume": {"litert": 0.1},
                          "speedup": {"litert": 2.0}}}}})
    assert "| broken | - | - | - |" in table
    assert "| mobilenet_wd4 | 1,234 | 2.5 M | 0.100 (2.00x) |" in table
