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
OLD_DEMO["synthetic_test_patients"] = 150  # issue 21: 300 more test images (test-only patients, no training label)


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
    # 12 patients (24 images) are split into labeled, pool and test; 3 test-only patients add 6 test images.
    assert split["labeled"] + split["pool"] + split["test"] == 24 + 6 and split["test"] >= 6
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
    assert "Paper's finding (each of the SimCLR + KD student, FixMatch and MixMatch above supervised" in report
    assert "test images: the SimCLR + KD student" in proc.stdout


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


# ---- the paper's baselines, the pseudo-labels' operating point (issues #21, #22) -------------------------------


def test_operating_points_against_hand_computed_thresholds():
    import numpy as np

    from kd_keras.studies.simclr_semi import operating_point

    labeled_p = np.array([0.1, 0.35, 0.4, 0.8, 0.9])
    truth = np.array([0, 0, 1, 1, 1])
    pool = np.array([0.05, 0.2, 0.3, 0.5, 0.6, 0.7, 0.95, 0.97, 0.98, 0.99])
    assert operating_point(0.5, labeled_p, truth, pool) == 0.5  # the paper's, as is
    # 60% positives in the labeled set -> 6 of the 10 pool images above the threshold: between 0.5 and 0.6.
    t = operating_point("prevalence", labeled_p, truth, pool)
    assert t == pytest.approx(0.55) and (pool > t).sum() == 6
    # Youden's J on the labeled set is 1 for any cut between 0.35 and 0.4 (all right); ours: the midpoint.
    t = operating_point("youden", labeled_p, truth, pool)
    assert t == pytest.approx(0.375)
    assert ((labeled_p > t) == truth.astype(bool)).all()
    with pytest.raises(ValueError, match="one class"):
        operating_point("youden", labeled_p, np.ones(5), pool)


def test_pseudo_label_stage_at_an_operating_point_reports_its_agreement(tmp_path):
    """A teacher whose probabilities are all above 0.5 labels the whole pool positive at the paper's 0.5 (the
    issue-#21 demo); at the labeled set's prevalence it labels the right share, and the agreement with the
    pool's hidden labels is computed as numpy computes it."""
    import types

    import keras
    import numpy as np

    from kd_keras.data import sources
    from kd_keras.studies.simclr_stages import pseudo_label_stage

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    brightness = 60 + 80 * labels + rng.permutation(60)  # all distinct: no ties at a quantile
    images = np.broadcast_to(brightness[:, None, None], (60, 32, 32)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    records = sources.from_npz(tmp_path / "d.npz", split=None)
    labeled, pool = records.subset(np.arange(20)), records.subset(np.arange(20, 60))
    # Logits [0, 1 + brightness/100]: positive-class probability 0.73..0.9, ranked by brightness (= the label).
    inputs = keras.Input((32, 32, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)[:, :1]
    teacher = keras.Model(inputs, keras.layers.Concatenate()([mean * 0.0, 1.0 + mean / 100.0]))
    teacher.save(tmp_path / "teacher.keras")
    found = {}
    for rule in (0.5, "prevalence"):
        config = types.SimpleNamespace(pseudo_label_threshold=rule, image_size=32, channels=3, fundus_crop=False)
        ctx = types.SimpleNamespace(config=config, data=types.SimpleNamespace(labeled=labeled, pool=pool),
                                    outputs={"teacher_finetune": {"path": str(tmp_path / "teacher.keras")}},
                                    out=tmp_path / str(rule), say=lambda _: None)
        found[rule] = pseudo_label_stage(ctx)
    assert found[0.5]["positive"] == 40 and found[0.5]["agreement_with_hidden_labels"] == np.mean(pool.labels == 1)
    prevalence = found["prevalence"]
    assert prevalence["operating_point"] == "prevalence"
    assert prevalence["positive"] == round(labels[:20].mean() * 40)
    assert prevalence["agreement_with_hidden_labels"] == pytest.approx(1.0 - abs(
        prevalence["positive"] - pool.labels.sum()) / 40)  # a perfect ranking: only the count can be wrong
    # The paper's 0.5 is reported beside the rule, from the same teacher outputs: the 0.5 run's numbers.
    assert prevalence["at_0.5"]["positive"] == 40 and prevalence["at_0.5"]["agreement_with_hidden_labels"] == \
        found[0.5]["agreement_with_hidden_labels"]


def test_supervised_epochs_count_passes_over_the_labels_and_leave_the_pool_baselines_alone():
    import numpy as np

    from kd_keras.config import resolve_config
    from kd_keras.studies.simclr_config import PRESETS, SimCLRConfig
    from kd_keras.studies.simclr_semi import baseline_epochs, pseudo_label_agreement

    config = resolve_config(SimCLRConfig, PRESETS, preset="smoke", sets=["baseline_epochs=3"])
    assert [baseline_epochs(config, b) for b in ("supervised", "supervised_full", "fixmatch")] == [3, 3, 3]
    config = resolve_config(SimCLRConfig, PRESETS, preset="smoke", sets=["baseline_epochs=3", "supervised_epochs=40"])
    assert [baseline_epochs(config, b) for b in ("supervised", "supervised_full", "fixmatch", "mixmatch")] == [
        40, 40, 3, 3]
    # 3 of 5 above 0.5; they agree with the truth on images 0, 2, 3 and 4 (image 1 is a false positive).
    found = pseudo_label_agreement(np.array([0.1, 0.7, 0.9, 0.4, 0.6]), np.array([0, 0, 1, 0, 1]), 0.5)
    assert found == {"threshold": 0.5, "positive": 3, "total": 5, "agreement_with_hidden_labels": 0.8}


def test_baselines_at_their_papers_settings():
    from kd_keras.studies.simclr_semi import baseline_objective

    paper = resolve_run("simclr", ["--preset", "paper"])[1]
    assert baseline_objective(paper, "fixmatch") == {"name": "fixmatch", "threshold": 0.95, "lambda_u": 1.0,
                                                     "reduction": "per_stream"}
    mixmatch = baseline_objective(paper, "mixmatch")
    # The 003 demo's MixMatch scored below chance with lambda_u 75 from the first step (no ramp-up).
    assert mixmatch["rampup_steps"] == 16000 and mixmatch["lambda_u"] == 100.0
    assert (mixmatch["sharpen_temperature"], mixmatch["alpha"], mixmatch["reduction"]) == (0.5, 0.75, "per_stream")
    assert (paper.fixmatch_ratio, paper.mixmatch_ratio) == (7, 1)
    assert baseline_objective(paper, "supervised") == baseline_objective(paper, "supervised_full") == "hard_label"
    # The demo keeps MixMatch's ramp-up (with 10 steps its guesses outweighed 20 labels: AUC 40.6); the CI smoke
    # run ramps up within its few steps so that the unlabeled term is exercised.
    demo = resolve_run("simclr", ["--preset", "demo"])[1]
    assert baseline_objective(demo, "mixmatch")["rampup_steps"] == 16000
    smoke = resolve_run("simclr", ["--preset", "smoke"])[1]
    assert 0 < baseline_objective(smoke, "mixmatch")["rampup_steps"] <= 10


def test_the_full_reference_trains_on_every_training_label():
    import types

    import numpy as np

    from kd_keras.data.records import Records
    from kd_keras.studies.simclr_stages import labeled_everything

    records = Records(paths=np.array([f"/x/{k}.png" for k in range(10)]), labels=np.arange(10) % 2,
                      patients=np.arange(10).astype(str), class_names=("no", "yes"), task="binary")
    labeled = records.subset(np.arange(3))
    pool = records.subset(np.arange(3, 10))
    pool = Records(paths=pool.paths, labels=pool.labels, patients=pool.patients, class_names=pool.class_names,
                   task="binary", labeled=np.zeros(7, bool))
    everything = labeled_everything(types.SimpleNamespace(labeled=labeled, pool=pool))
    assert len(everything) == 10 and everything.labeled.all()
    np.testing.assert_array_equal(everything.labels, records.labels)


@pytest.mark.parametrize("setting,words", [("pseudo_label_threshold=1.5", "--pseudo-label-threshold"),
                                           ("pseudo_label_threshold=median", "prevalence, youden"),
                                           ("fixmatch_ratio=0", "--fixmatch-ratio"),
                                           ("mixmatch_alpha=0", "--mixmatch-alpha"),
                                           ("supervised_model=inception_v9", "--supervised-model")])
def test_bad_baseline_settings_are_one_line(tmp_path, capsys, setting, words):
    out = tmp_path / "out"
    assert main(["run", "simclr", "--preset", "smoke", "--baselines", "supervised", "--set", setting,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_paper_preset_offline_stops_on_the_weights_before_writing(tmp_path, capsys, monkeypatch):
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras.utils, "get_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    assert main(["run", "simclr", "--preset", "paper", "--data", str(tmp_path / "data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
    # With the teacher's file present, the Inception-V3 baselines' file is the one asked for.
    models = tmp_path / "keras" / "models"
    models.mkdir(parents=True)
    (models / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"x")
    assert main(["run", "simclr", "--preset", "paper", "--data", str(tmp_path / "data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and len(err.splitlines()) == 1, err
    assert not out.exists()
