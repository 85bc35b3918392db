"""The quick default's validation set (issue 20, item 4): large enough to choose between a baseline and its
student-teacher model, from patients that are neither trained on nor tested on. Tiny: 32 px, one B-scan per
volume, a one-patient pool (the validation set's size in patients does not depend on those)."""

from __future__ import annotations

import csv
import dataclasses

from kd_keras.data.synthetic_oct import SyntheticOCTConfig, generate_synthetic_oct
from kd_keras.studies.oct_config import SYNTHETIC_TEST, OCTStudyConfig
from kd_keras.studies.oct_data import prepare_data


def _rows(root) -> list[dict[str, str]]:
    with open(root / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_quick_preset_validates_on_44_patients_disjoint_from_training_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_KERAS_CACHE", str(tmp_path / "cache"))
    quick = OCTStudyConfig.from_preset("quick")
    # 704 B-scans: the 4 labeled patients split off for validation and 40 generated for it, 16 B-scans each.
    assert SyntheticOCTConfig(**quick.synthetic).bscans_sampled_per_volume * (4 + 40) == 704
    small = {**quick.synthetic, "image_size": [32, 32], "bscans_sampled_per_volume": 1, "unlabeled_patients": 1}
    config = dataclasses.replace(quick, synthetic=small)
    data = prepare_data(config, say=lambda _line: None)
    train, validation, test = (set(r.patients.tolist()) for r in (data.train, data.validation,
                                                                     data.tests[SYNTHETIC_TEST]))
    assert (len(train), len(validation), len(test)) == (16, 44, 40)  # training unchanged: 16 labeled patients
    assert len(data.validation) == 44 and set(data.validation.labels.tolist()) == {0, 1}
    assert not validation & train and not validation & test and not train & test


def test_validation_patients_leave_the_other_splits_as_they_were(tmp_path):
    base = SyntheticOCTConfig(image_size=(32, 32), bscans_sampled_per_volume=2, labeled_patients=3,
                              unlabeled_patients=2, test_patients=2, seed=5)
    more = dataclasses.replace(base, validation_patients=3)
    assert dataclasses.replace(base, validation_patients=0).fingerprint() == base.fingerprint()
    assert more.fingerprint() != base.fingerprint()
    before, after = _rows(generate_synthetic_oct(tmp_path / "a", base)), _rows(generate_synthetic_oct(tmp_path / "b",
                                                                                                       more))
    assert after[: len(before)] == before  # same files, patients and labels
    added = after[len(before):]
    assert {r["split"] for r in added} == {"validation"} and len(added) == 3 * 2
    assert not {r["patient"] for r in added} & {r["patient"] for r in before}
    assert all(r["file"].startswith(f"validation/{r['label']}/") for r in added)
    assert (tmp_path / "b" / added[0]["file"]).is_file()


def test_paired_difference_of_the_seeds_table_matches_scikit_learn(tmp_path):
    """benchmarks/quick_default_seeds.py: the student-teacher minus baseline AUC from saved predictions equals
    scikit-learn's difference, and its paired interval (whole volumes resampled for both models) contains it."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from sklearn.metrics import roc_auc_score

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "quick_default_seeds.py"
    spec = importlib.util.spec_from_file_location("quick_default_seeds", script)
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    clusters = np.repeat(np.arange(50), 8)
    scores = {"baseline": labels * 0.3 + rng.random(400), "student_teacher": labels * 0.8 + rng.random(400)}
    (tmp_path / "predictions").mkdir()
    for split in ("validation", seeds.TEST_SET):
        for side, score in scores.items():
            np.savez(tmp_path / "predictions" / f"net__{side}__{split}.npz", labels=labels, scores=score,
                     indices=np.arange(400), clusters=clusters)
    out = seeds.paired_differences(tmp_path, "net", n_boot=300)
    expected = roc_auc_score(labels, scores["student_teacher"]) - roc_auc_score(labels, scores["baseline"])
    for split in ("validation", seeds.TEST_SET):
        assert abs(out[split]["estimate"] - expected) < 1e-12
        assert out[split]["low"] < expected < out[split]["high"] and out[split]["low"] > 0  # a clear difference
