"""Data sources and tasks: class folders (with and without split folders), CSV manifests (EyePACS, Messidor,
CheXpert with each uncertain-label policy), MedMNIST .npz, unlabeled folders and list files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from kd_keras.data import sources, tasks
from kd_keras.data.records import Records
from kd_keras.data.validate import DataError


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size, size), value, np.uint8))
    return path


def _tree(root: Path, layout: dict[str, list[str]]) -> Path:
    for folder, names in layout.items():
        for name in names:
            _png(root / folder / name)
    return root


def test_class_folders_oct_layout(tmp_path):
    root = _tree(tmp_path / "OCT2017", {
        "CNV": ["CNV-1016042-1.jpeg", "CNV-1016042-2.jpeg", "CNV-22-1.jpeg"],
        "DME": ["DME-30-1.jpeg"],
        "DRUSEN": ["DRUSEN-40-1.jpeg", "DRUSEN-41-7.jpeg"],
        "NORMAL": ["NORMAL-1016042-9.jpeg", "NORMAL-50-1.jpeg"],
    })
    records = sources.from_class_folders(root)
    assert records.class_names == ("CNV", "DME", "DRUSEN", "NORMAL")
    assert records.class_counts() == {"CNV": 3, "DME": 1, "DRUSEN": 2, "NORMAL": 2}
    assert records.task == "multiclass" and records.patient_rule == "oct2017"
    by_name = {os.path.basename(p): (records.class_names[label], patient)
               for p, label, patient in zip(records.paths, records.labels, records.patients, strict=True)}
    assert by_name["CNV-1016042-2.jpeg"] == ("CNV", "1016042")
    assert by_name["NORMAL-1016042-9.jpeg"] == ("NORMAL", "1016042")  # same patient under two classes
    assert records.given_split is None
    assert all(os.path.isabs(p) for p in records.paths)

    binary = tasks.normal_vs_abnormal(records)
    assert binary.task == "binary" and binary.class_names == ("NORMAL", "ABNORMAL")
    assert binary.class_counts() == {"NORMAL": 2, "ABNORMAL": 6}
    flipped = tasks.normal_vs_abnormal(records, negative="CNV", positive_name="OTHER")
    assert flipped.class_counts() == {"CNV": 3, "OTHER": 5}
    assert tasks.apply_task(records, "multiclass") is records
    with pytest.raises(ValueError, match="HEALTHY"):
        tasks.normal_vs_abnormal(records, negative="HEALTHY")

    chosen = sources.from_class_folders(root, classes=("NORMAL", "CNV"))
    assert chosen.class_names == ("NORMAL", "CNV") and chosen.class_counts() == {"NORMAL": 2, "CNV": 3}
    assert chosen.report.counts()["notes_by_kind"] == {"ignored_file": 2}  # DME/ and DRUSEN/ not used


def test_class_folders_with_split_folders_and_nesting(tmp_path):
    root = _tree(tmp_path / "chest_xray", {
        "train/NORMAL": ["IM-0115-0001.jpeg", "NORMAL2-IM-1427-0001.jpeg"],
        "train/PNEUMONIA": ["person100_bacteria_475.jpeg", "sub/person100_bacteria_476.jpeg"],
        "val/NORMAL": ["IM-0200-0001.jpeg"],
        "val/PNEUMONIA": ["person3_virus_12.jpeg"],
        "test/NORMAL": ["IM-0300-0001.jpeg"],
        "test/PNEUMONIA": ["person7_virus_1.jpeg"],
    })
    (root / "README.txt").write_text("about")
    everything = sources.from_class_folders(root)
    assert len(everything) == 8 and everything.class_names == ("NORMAL", "PNEUMONIA")
    assert sorted(set(everything.given_split)) == ["test", "train", "val"]
    assert everything.summary()["given_split"] == {"test": 2, "train": 4, "val": 2}
    train = sources.from_class_folders(root, split="train")
    assert train.class_counts() == {"NORMAL": 2, "PNEUMONIA": 2}  # nested sub/ folder included
    assert sorted(set(train.patients)) == ["IM-0115", "NORMAL2-IM-1427", "person100"]
    assert train.patient_rule == "kermany_cxr"
    both = sources.from_class_folders(root, split=["val", "test"])
    assert len(both) == 4
    with pytest.raises(DataError, match="no 'dev' split"):
        sources.from_class_folders(root, split="dev")
    with pytest.raises(DataError, match="no train/val/test folders"):
        sources.from_class_folders(root / "train", split="train")


def test_eyepacs_csv_and_dr_tasks(tmp_path):
    images = tmp_path / "train"
    for name in ("10_left", "10_right", "13_left", "13_right", "15_left"):
        _png(images / f"{name}.jpeg")
    csv_path = tmp_path / "trainLabels.csv"
    csv_path.write_text("image,level\n10_left,0\n10_right,1\n13_left,2\n13_right,4\n15_left,3\n")
    records = sources.eyepacs(csv_path, images)
    assert records.class_names == ("0", "1", "2", "3", "4")
    assert records.class_counts() == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 1}
    assert list(records.patients) == ["10", "10", "13", "13", "15"]
    assert [os.path.basename(p) for p in records.paths] == [f"{n}.jpeg" for n in
                                                           ("10_left", "10_right", "13_left", "13_right", "15_left")]
    referable = tasks.referable_dr(records)
    assert referable.class_names == ("non-referable", "referable")
    assert referable.labels.tolist() == [0, 0, 1, 1, 1]  # grades 0-1 vs 2-4
    assert tasks.referable_dr(records, referable_from=3).labels.tolist() == [0, 0, 0, 1, 1]
    graded = tasks.dr_grades(records)
    assert graded.labels.tolist() == [0, 1, 2, 4, 3] and graded.class_names == ("0", "1", "2", "3", "4")
    with pytest.raises(ValueError, match="0..2"):
        tasks.dr_grades(records, n_grades=3)
    with pytest.raises(ValueError, match="integer grades"):
        tasks.referable_dr(sources.from_class_folders(_tree(tmp_path / "f", {"a": ["x.png"], "b": ["y.png"]})))


def test_messidor_sheets(tmp_path):
    for name in ("20051020_43808_0100_PP.tif", "20051020_43832_0100_PP.tif", "20051020_44261_0100_PP.tif"):
        _png(tmp_path / "Base11" / name)
    sheet = tmp_path / "Annotation_Base11.csv"
    sheet.write_text("Image name;Ophthalmologic department;Retinopathy grade;Risk of macular edema\n"
                     "20051020_43808_0100_PP.tif;Service Ophtalmologie Lariboisiere;0;0\n"
                     "20051020_43832_0100_PP.tif;Service Ophtalmologie Lariboisiere;3.0;1\n"
                     "20051020_44261_0100_PP.tif;Service Ophtalmologie Lariboisiere;2;0\n")
    records = sources.messidor(sheet, tmp_path / "Base11")
    assert records.class_names == ("0", "1", "2", "3")  # Messidor R0-R3
    assert records.labels.tolist() == [0, 3, 2]
    assert tasks.referable_dr(records).labels.tolist() == [0, 1, 1]
    assert len(set(records.patients)) == 3  # no patient ids: each image its own patient

    (tmp_path / "m2").mkdir()
    _png(tmp_path / "m2" / "IM000001.JPG")
    _png(tmp_path / "m2" / "IM000002.JPG")
    _png(tmp_path / "m2" / "IM000003.JPG")
    sheet2 = tmp_path / "messidor_data.csv"
    sheet2.write_text("image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
                      "IM000001.JPG,4,1,1\nIM000002.JPG,,,0\nIM000003.JPG,1,0,1\n")
    m2 = sources.messidor(sheet2, tmp_path / "m2", patient_column=None)
    assert m2.class_names == ("0", "1", "2", "3", "4") and m2.labels.tolist() == [4, 1]
    assert [p.kind for p in m2.report.entries("skipped")] == ["missing_label"]  # the ungradable image


@pytest.mark.parametrize("policy, expected_uncertain", [("zeros", 0.0), ("U-ones", 1.0), ("ignore", -1.0)])
def test_chexpert_multilabel_uncertain_policies(tmp_path, policy, expected_uncertain):
    root = tmp_path / "CheXpert-v1.0-small"
    rows = [("patient00001/study1/view1_frontal.jpg", "Frontal", "1.0", "-1.0", ""),
            ("patient00001/study1/view2_lateral.jpg", "Lateral", "0.0", "1.0", "-1"),
            ("patient00002/study1/view1_frontal.jpg", "Frontal", "", "0", "1")]
    lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly,Edema,Pleural Effusion"]
    for path, view, *labels in rows:
        _png(root / "train" / path)
        lines.append(f"CheXpert-v1.0-small/train/{path},Female,68,{view},AP,{','.join(labels)}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    observations = ("Cardiomegaly", "Edema", "Pleural Effusion")
    records = sources.chexpert(root / "train.csv", observations=observations, uncertain=policy)
    u = expected_uncertain
    assert records.task == "multilabel" and records.class_names == observations
    np.testing.assert_array_equal(records.labels, np.asarray([[1, u, 0], [0, 1, u], [0, 0, 1]], np.float32))
    assert list(records.patients) == ["patient00001", "patient00001", "patient00002"]
    assert records.class_counts() == {"Cardiomegaly": 1, "Edema": 1 + (u == 1), "Pleural Effusion": 1 + (u == 1)}
    frontal = sources.chexpert(root / "train.csv", observations=observations, frontal_only=True)
    assert len(frontal) == 2 and frontal.report.counts()["notes_by_kind"] == {"ignored_file": 1}
    subset = tasks.multilabel(records, ("Edema", "Cardiomegaly"))
    np.testing.assert_array_equal(subset.labels, records.labels[:, [1, 0]])
    with pytest.raises(ValueError, match="uncertain must be"):
        sources.chexpert(root / "train.csv", observations=observations, uncertain="U-maybe")


def test_csv_patient_and_split_columns(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _png(tmp_path / "img" / name)
    table = tmp_path / "labels.csv"
    table.write_text("\ufefffilename,diagnosis,patient_id,fold\n"
                     "img/a.png,cnv,P1,train\nimg/b.png,normal,P1,train\nimg/c.png,cnv,P2,Test\n"
                     "img/d.png,normal,,validation\n")
    records = sources.from_csv(table, patient_column="patient_id", split_column="fold")
    assert records.class_names == ("cnv", "normal") and records.labels.tolist() == [0, 1, 0, 1]
    assert list(records.patients[:3]) == ["P1", "P1", "P2"] and records.patients[3].startswith("file:")
    assert list(records.given_split) == ["train", "train", "test", "val"]
    assert records.patient_rule == "column:patient_id"
    assert [p.kind for p in records.report.entries("note")] == ["own_patient"]


def test_npz_medmnist_style(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez_compressed(path, train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
                        train_labels=np.asarray([[0], [1], [1], [0], [1], [1]]),
                        val_images=rng.integers(0, 255, (2, 28, 28, 3), dtype=np.uint8),
                        val_labels=np.asarray([[1, 0, 1], [0, 0, 1]]))
    train = sources.from_npz(path, "train", class_names=("normal", "pneumonia"))
    assert train.paths is None and train.array_index.tolist() == list(range(6))
    assert train.class_counts() == {"normal": 2, "pneumonia": 4} and train.task == "multiclass"
    assert len(set(train.patients)) == 6
    val = sources.from_npz(path, "val")
    assert val.task == "multilabel" and val.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(val.labels, [[1, 0, 1], [0, 0, 1]])
    assert train.describe_example(2).endswith("pneumoniamnist.npz[2]")


def test_unlabeled_folder_and_list_file(tmp_path):
    pool = tmp_path / "pool"
    names = ["OCT-2345678-1.png", "OCT-2345678-2.png", "deep/er/OCT-3456789-1.png", "x/OCT-4567890-5.png"]
    for name in names:
        _png(pool / name)
    records = sources.from_folder(pool)
    assert records.task == "unlabeled" and len(records) == 4 and not records.labeled.any()
    assert records.labels.tolist() == [-1] * 4 and records.class_names == () and records.class_counts() == {}
    assert sorted(set(records.patients)) == ["2345678", "3456789", "4567890"]
    assert len(sources.from_folder(pool, recursive=False)) == 2
    listing = tmp_path / "pool.txt"
    listing.write_text("# pool\n\npool/OCT-2345678-1.png\npool/deep/er/OCT-3456789-1.png\n"
                       "  pool/x/OCT-4567890-5.png \n")
    listed = sources.from_list_file(listing)
    assert [os.path.relpath(p, tmp_path) for p in listed.paths] == [
        "pool/OCT-2345678-1.png", "pool/deep/er/OCT-3456789-1.png", "pool/x/OCT-4567890-5.png"]
    assert listed.task == "unlabeled"


def test_records_concat_subset_and_csv_roundtrip(tmp_path):
    labeled = sources.from_class_folders(_tree(tmp_path / "l", {"A": ["1.png", "2.png"], "B": ["3.png"]}))
    pool = sources.from_folder(_tree(tmp_path / "u", {"": ["4.png", "5.png"]}))
    both = Records.concat(labeled, pool)
    assert len(both) == 5 and both.labeled.tolist() == [True] * 3 + [False] * 2
    assert both.labels.tolist() == [0, 0, 1, 0, 0] and both.class_counts() == {"A": 2, "B": 1}
    assert both.subset(both.labeled).paths.tolist() == labeled.paths.tolist()
    out = tmp_path / "files.csv"
    both.to_csv(out)
    lines = out.read_text().splitlines()
    assert lines[0] == "file,label,patient,labeled,given_split" and len(lines) == 6
    assert lines[1].split(",")[1] == "A" and lines[4].split(",")[1:4] == ["", "4", "0"]
