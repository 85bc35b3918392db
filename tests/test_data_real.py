"""The data layer on the real Kermany sets in ../shared (skipped with a reason when absent): counts, classes,
patient ids (against an independent string-splitting rule), byte duplicates, leak-free splits, real decoding."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

from kd_keras.data import pipeline, schema, sources, tasks
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.splits import kfold_by_patient, shared_patients, split_by_patient
from kd_keras.data.validate import check_files, find_duplicate_files

pytestmark = pytest.mark.shared_data


def _cxr_patient_by_hand(name: str) -> str:
    """The README's rule written independently of kd_keras.data.patients (split on separators, no regex)."""
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("person"):
        return stem.split("_")[0]
    parts = stem.split("-")
    return "-".join(parts[:2]) if parts[0] == "IM" else "-".join(parts[:3])


@pytest.fixture(scope="module")
def cxr(cxr_dir):
    return sources.from_class_folders(cxr_dir)


def test_cxr_counts_classes_and_patients(cxr, cxr_dir):
    assert cxr.class_names == ("NORMAL", "PNEUMONIA")
    assert cxr.class_counts() == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert len(cxr) == 5216 and cxr.patient_rule == "kermany_cxr"
    assert not cxr.report.entries()  # nothing skipped or noted while resolving
    names = [os.path.basename(p) for p in cxr.paths]
    assert list(cxr.patients) == [_cxr_patient_by_hand(name) for name in names]
    assert len(set(cxr.patients)) == 2846  # 1,211 NORMAL + 1,635 PNEUMONIA patients (shell check, see docs)
    by_name = dict(zip(names, cxr.patients, strict=True))
    assert by_name["IM-0115-0001.jpeg"] == "IM-0115"
    assert by_name["person100_virus_184.jpeg"] == "person100"
    assert by_name["person447_virus_921_1.jpeg"] == "person447"
    assert sum(by_name[n].startswith("NORMAL2-IM-") for n in names) == 53 + 691
    per_patient = Counter(cxr.patients.tolist())
    assert max(per_patient.values()) > 1  # patients with several images: why splits must be by patient


def test_cxr_byte_duplicates_are_found_and_stay_within_one_patient(cxr):
    groups = find_duplicate_files(cxr.paths)
    assert len(groups) == 24 and sum(len(g) for g in groups) == 50  # 22 pairs + 2 triples
    for group in groups:
        assert len(set(cxr.labels[group].tolist())) == 1  # README: always within one class
        assert len(set(cxr.patients[group].tolist())) == 1  # and (checked here) within one patient


def test_cxr_patient_splits_are_leak_free_and_stratified(cxr):
    parts = split_by_patient(cxr, (0.7, 0.15, 0.15), seed=0)
    assert not shared_patients(*parts.values())
    assert sum(len(p) for p in parts.values()) == 5216
    assert len(cxr.report.entries("note", "duplicate_content")) == 50
    normal_share = 1341 / 5216
    for name, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        part = parts[name]
        assert abs(len(part) / 5216 - fraction) < 0.01
        assert abs(part.class_counts()["NORMAL"] / len(part) - normal_share) < 0.01
    folds = kfold_by_patient(cxr, k=5, seed=0)
    assert not shared_patients(*(test for _, test in folds))
    assert sorted(np.concatenate([test.paths for _, test in folds]).tolist()) == sorted(cxr.paths.tolist())
    assert all(abs(len(test) - 5216 / 5) < 10 for _, test in folds)
    assert tasks.normal_vs_abnormal(cxr, positive_name="PNEUMONIA").class_counts() == {
        "NORMAL": 1341, "PNEUMONIA": 3875}


def test_cxr_header_check_passes_every_file(cxr):
    assert len(check_files(cxr, mode="header")) == 5216


def test_oct_sample_counts_patients_split_and_decoding(oct_sample_dir):
    records = sources.from_class_folders(oct_sample_dir)
    assert records.class_names == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert records.class_counts() == dict.fromkeys(records.class_names, 8)
    assert records.patient_rule == "oct2017"
    names = [os.path.basename(p) for p in records.paths]
    assert list(records.patients) == [name.split("-")[1] for name in names]
    assert dict(zip(names, records.patients, strict=True))["CNV-6294785-1.jpeg"] == "6294785"
    assert len(set(records.patients)) == 25
    parts = split_by_patient(records, (0.5, 0.25, 0.25), seed=0)
    assert not shared_patients(*parts.values()) and all(len(p) for p in parts.values())
    binary = tasks.normal_vs_abnormal(records)
    assert binary.class_counts() == {"NORMAL": 8, "ABNORMAL": 24}

    checked = check_files(records, mode="decode")
    assert len(checked) == 32 and not records.report.entries("skipped")
    config = PreprocessConfig((64, 64), channels=3, clahe=True)
    epoch = list(pipeline.make_dataset(binary, config, batch_size=16, seed=0).as_numpy_iterator())
    images = np.concatenate([b[schema.IMAGE] for b in epoch])
    assert images.shape == (32, 64, 64, 3) and 0 <= images.min() and images.max() <= 255
    assert np.allclose(images[..., 0], images[..., 2])  # grey B-scans repeated to 3 channels
    assert images.std() > 10  # real content, not blank placeholders
    assert not records.report.entries("skipped")
