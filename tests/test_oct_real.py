"""The main job on the 1,000 real Kermany OCT B-scans in ../shared (skipped with a reason when absent): the loader,
the B-scan geometry settings, the multi-class evaluation, and a smoke run of both tasks on a small subset.

Expectations are independent of the code under test: counts from the folder listing and the issue's figures,
patient ids parsed here from the OCT2017 file names, crops and pads checked against numpy slicing, per-class
rates against scikit-learn.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from kd_keras.data.preprocess import GEOMETRIES, PreprocessConfig, fit_geometry, preprocess

OCT_NAME = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d+)-(\d+)\.jpeg$")


@pytest.fixture(scope="module")
def oct_1k(shared_dir: Path) -> Path:
    folder = shared_dir / "data" / "kermany-oct-1k"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def test_loader_reads_all_1000_bscans_with_their_classes_and_patients(oct_1k):
    from kd_keras.data import sources

    records = sources.from_class_folders(oct_1k)
    assert len(records) == 1000
    assert records.class_names == ("CNV", "DME", "DRUSEN", "NORMAL")
    counts = records.class_counts()
    assert counts == {"CNV": 348, "DME": 110, "DRUSEN": 82, "NORMAL": 460}
    by_hand = {}
    for path in records.paths:
        match = OCT_NAME.match(os.path.basename(path))
        assert match, path
        by_hand[path] = (match.group(1), match.group(2))
    for path, label, patient in zip(records.paths, records.labels, records.patients, strict=True):
        assert records.class_names[label] == by_hand[path][0] == Path(path).parent.name
        assert str(patient).endswith(by_hand[path][1])
    assert len(set(records.patients.tolist())) == len({p for _, p in by_hand.values()}) == 721


@pytest.fixture(scope="module")
def one_bscan_per_shape(oct_1k) -> dict[tuple[int, int], np.ndarray]:
    shapes: dict[tuple[int, int], np.ndarray] = {}
    for path in sorted(oct_1k.glob("*/*.jpeg")):
        # the header gives the shape without decoding every file: decode only the first of each shape
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        shapes.setdefault(image.shape, image)
    return shapes


def test_every_geometry_gives_the_model_input_from_every_width_present(one_bscan_per_shape):
    widths = sorted({w for _, w in one_bscan_per_shape})
    assert widths == [384, 512, 768, 1024, 1536]  # the native widths of this release
    for image in one_bscan_per_shape.values():
        for geometry in GEOMETRIES:
            for size, channels in (((64, 64), 1), ((224, 224), 3), ((96, 128), 1)):
                out = preprocess(image, PreprocessConfig(size, channels=channels, geometry=geometry))
                assert out.shape == (*size, channels) and out.dtype == np.float32


def test_center_crop_keeps_the_full_height_and_the_central_columns(one_bscan_per_shape):
    image = one_bscan_per_shape[(496, 1536)][:, :, None]
    crop = fit_geometry(image, (64, 64), "center_crop")
    np.testing.assert_array_equal(crop, image[:, 520:1016])  # (1536 - 496) / 2 = 520
    narrow = one_bscan_per_shape[(496, 384)][:, :, None]
    np.testing.assert_array_equal(fit_geometry(narrow, (64, 64), "center_crop"), narrow[56:440])


def test_pad_keeps_every_pixel_on_a_black_square(one_bscan_per_shape):
    image = one_bscan_per_shape[(496, 768)][:, :, None]
    padded = fit_geometry(image, (64, 64), "pad")
    assert padded.shape == (768, 768, 1)
    top = (768 - 496) // 2
    np.testing.assert_array_equal(padded[top:top + 496], image)
    assert not padded[:top].any() and not padded[top + 496:].any()
    assert fit_geometry(image, (64, 64), "resize") is image


def test_geometry_is_checked_and_recorded_for_deployment(tmp_path):
    from kd_keras.deploy.predictor import preprocess_config_from_sidecar

    with pytest.raises(ValueError, match="geometry must be one of"):
        PreprocessConfig((64, 64), geometry="squash")
    config, recorded = preprocess_config_from_sidecar(
        {"input": {"height": 64, "width": 64, "channels": 1},
         "preprocess": {"image_size": [64, 64], "channels": 1, "geometry": "center_crop"}})
    assert recorded and config.geometry == "center_crop"


def test_multiclass_rates_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score, roc_auc_score

    from kd_keras.evaluation import evaluate_predictions

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 400)
    p = rng.random((400, 4))
    p[np.arange(400), y] += rng.random(400)
    p /= p.sum(axis=1, keepdims=True)
    out = evaluate_predictions(y, p, rng.integers(0, 80, 400), "multiclass", n_boot=50)
    predicted = p.argmax(axis=1)
    for j in range(4):
        assert out["per_class"][j]["sensitivity"]["estimate"] == pytest.approx(recall_score(y == j, predicted == j))
        assert out["per_class"][j]["specificity"]["estimate"] == pytest.approx(recall_score(y != j, predicted != j))
        assert out["per_class"][j]["auc"] == pytest.approx(roc_auc_score(y == j, p[:, j]))
        low, high = out["per_class"][j]["sensitivity"]["low"], out["per_class"][j]["sensitivity"]["high"]
        assert low <= out["per_class"][j]["sensitivity"]["estimate"] <= high and low < high
    assert out["sensitivity"]["estimate"] == pytest.approx(balanced_accuracy_score(y, predicted))
    assert out["auc"]["estimate"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert out["confusion_matrix"] == confusion_matrix(y, predicted).tolist()


@pytest.fixture(scope="module")
def real_subset(oct_1k, tmp_path_factory) -> Path:
    """About 48 B-scans of 4 classes from whole patients, copied (a file symlinked from outside the data root is
    refused by design)."""
    root = tmp_path_factory.mktemp("oct_real_subset")
    for cls in ("CNV", "DME", "DRUSEN", "NORMAL"):
        by_patient: dict[str, list[Path]] = {}
        for path in sorted((oct_1k / cls).glob("*.jpeg")):
            by_patient.setdefault(path.name.split("-")[1], []).append(path)
        (root / cls).mkdir()
        taken = 0
        for files in by_patient.values():
            for path in files:
                shutil.copyfile(path, root / cls / path.name)
            taken += len(files)
            if taken >= 12:
                break
    return root


@pytest.mark.parametrize("task", ["multiclass", pytest.param("binary", marks=pytest.mark.slow)])
def test_main_job_smoke_run_on_real_bscans(real_subset, tmp_path, task):
    from kd_keras.cli import main

    out = tmp_path / task
    argv = ["run", "oct", "--preset", "smoke", "--data-dir", str(real_subset), "--task", task,
            "--geometry", "center_crop", "--labeled-fraction", "0.5", "--validation-fraction", "0.25",
            "--test-fraction", "0.25", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    names = ["CNV", "DME", "DRUSEN", "NORMAL"] if task == "multiclass" else ["NORMAL", "ABNORMAL"]
    assert results["data"]["class_names"] == names
    test = results["data"]["test_sets"][0]
    evaluation = results["students"]["mobilenet_wd4"]["baseline"]["eval"][test]
    n = results["data"]["test_sizes"][test]
    assert np.sum(evaluation["confusion_matrix"]) == n and len(evaluation["confusion_matrix"]) == len(names)
    if task == "multiclass":
        assert len(evaluation["per_class"]) == 4
        assert "## Confusion matrices" in (out / "report.md").read_text()
    sidecars = list((out / "export").rglob("*.json"))
    recorded = [json.loads(p.read_text()).get("preprocess", {}).get("geometry") for p in sidecars]
    assert "center_crop" in recorded
    assert Counter(recorded)["resize"] == 0
