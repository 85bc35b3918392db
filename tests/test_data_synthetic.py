"""Synthetic OCT and fundus generators and the natural-image pool: layout, labels, seeding, caching, realism checks."""

import copy
import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from kd_keras.data.natural_images import EXCLUDED, load_bundled_photos, natural_image_pool
from kd_keras.data.preprocess import read_image
from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus, render_fundus
from kd_keras.data.synthetic_oct import (
    CLASSES,
    NORMAL,
    SyntheticOCTConfig,
    _histogram_features,
    generate_synthetic_oct,
    render_bscan,
    render_volume,
    simulate_volume,
)

TINY_OCT = SyntheticOCTConfig(
    image_size=(32, 40), bscans_per_volume=32, bscans_sampled_per_volume=6, labeled_patients=4,
    unlabeled_patients=3, test_patients=3, seed=3,
)
LABELED_NAME = re.compile(r"^(CNV|DME|DRUSEN|NORMAL)-(\d{7})-(\d+)\.png$")
POOL_NAME = re.compile(r"^OCT-(\d{7})-(\d+)\.png$")


@pytest.fixture(scope="module")
def tiny_oct(tmp_path_factory):
    return generate_synthetic_oct(tmp_path_factory.mktemp("oct") / "data", TINY_OCT)


def _index(root):
    with open(root / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_oct_layout_names_and_counts(tiny_oct):
    rows = _index(tiny_oct)
    manifest = json.loads((tiny_oct / "manifest.json").read_text())
    assert manifest["complete"] and manifest["seed"] == 3 and manifest["config"]["bscans_per_volume"] == 32
    assert manifest["counts"]["total_images"] == len(rows) == 10 * 6
    patients_by_split = {}
    for split in ("labeled", "test"):
        for name in CLASSES:
            for path in (tiny_oct / split / name).iterdir():
                match = LABELED_NAME.match(path.name)
                assert match and match.group(1) == name, path
                patients_by_split.setdefault(split, set()).add(match.group(2))
        files = [p for p in (tiny_oct / split).rglob("*.png")]
        assert len(files) == manifest["counts"][split]["images"]
        for name in CLASSES:
            assert len(list((tiny_oct / split / name).glob("*.png"))) == manifest["counts"][split]["by_class"][name]
    pool = sorted((tiny_oct / "unlabeled").iterdir())
    assert len(pool) == 3 * 6 and all(POOL_NAME.match(p.name) for p in pool)  # no class in a pool file name
    patients_by_split["unlabeled"] = {POOL_NAME.match(p.name).group(1) for p in pool}
    assert len(patients_by_split["labeled"]) <= 4 and len(patients_by_split["unlabeled"]) == 3
    # No patient in two splits.
    splits = list(patients_by_split.values())
    for i in range(len(splits)):
        for j in range(i + 1, len(splits)):
            assert not splits[i] & splits[j]
    # Every file listed once, and it decodes to the configured size.
    assert {row["file"] for row in rows} == {p.relative_to(tiny_oct).as_posix() for p in tiny_oct.rglob("*.png")}
    image = read_image(tiny_oct / rows[0]["file"])
    assert image.shape == (32, 40, 1) and image.dtype == np.uint8


def test_oct_labels_follow_drawn_lesions(tiny_oct):
    rows = _index(tiny_oct)
    for row in rows:
        assert (row["label"] == NORMAL) == (row["lesions"] == "")
        assert row["label"] in (NORMAL, row["disease"])
        if row["split"] != "unlabeled":
            assert row["file"].split("/")[1] == row["label"]
    truth = {}
    with open(tiny_oct / "unlabeled_truth.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            truth[row["file"]] = row["label"]
    assert truth == {row["file"]: row["label"] for row in rows if row["split"] == "unlabeled"}


def test_oct_cache_refusal_and_determinism(tiny_oct, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in tiny_oct.rglob("*.png")}
    assert generate_synthetic_oct(tiny_oct, TINY_OCT) == tiny_oct  # cached: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in tiny_oct.rglob("*.png")} == before
    with pytest.raises(FileExistsError, match="does not hold this synthetic OCT config"):
        generate_synthetic_oct(tiny_oct, SyntheticOCTConfig(**{**TINY_OCT.__dict__, "seed": 4}))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate_synthetic_oct(tmp_path / "other", TINY_OCT, overwrite=True)
    again = generate_synthetic_oct(tmp_path / "again", TINY_OCT)
    for row in _index(tiny_oct):
        assert (again / row["file"]).read_bytes() == (tiny_oct / row["file"]).read_bytes()
    assert not list(tmp_path.glob(".again-*"))  # no staging folder left behind


def test_oct_default_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_KERAS_CACHE", str(tmp_path))
    config = SyntheticOCTConfig(**{**TINY_OCT.__dict__, "labeled_patients": 1, "unlabeled_patients": 0,
                                   "test_patients": 0})
    root = generate_synthetic_oct(config=config)
    assert root == tmp_path / "synthetic_oct" / config.fingerprint()
    assert json.loads((root / "manifest.json").read_text())["counts"]["total_images"] == 6


def test_volume_of_128_bscans_lesions_near_fovea_only():
    config = SyntheticOCTConfig()
    rng = np.random.default_rng(11)
    volume = simulate_volume(rng, "DME", config)
    images, labels, kinds = render_volume(volume, config, rng)
    assert images.shape == (128, 64, 64) and images.dtype == np.uint8
    abnormal = np.array([label == "DME" for label in labels])
    assert 0 < abnormal.sum() < 128  # only a subset of the volume shows the disease
    fovea = volume.anatomy["fovea_slice"]
    distance = np.abs(np.arange(128) - fovea)
    assert distance[abnormal].mean() < distance[~abnormal].mean()  # and it clusters around the fovea
    assert all(bool(k) == a for k, a in zip(kinds, abnormal, strict=True))


@pytest.mark.parametrize("disease", ["CNV", "DME", "DRUSEN"])
def test_lesions_are_visible_and_only_where_drawn(disease):
    """Rendering the same B-scan with and without the volume's lesions (same noise) differs only on abnormal
    B-scans, and there by a visible local change."""
    config = SyntheticOCTConfig()
    weakest = []
    for volume_index in range(6):
        volume = simulate_volume(np.random.default_rng([7, volume_index]), disease, config)
        clean = copy.deepcopy(volume)
        clean.lesions = []
        for slice_index in range(0, 128, 6):
            with_lesions, drawn = render_bscan(volume, slice_index, np.random.default_rng([8, slice_index]), config)
            without, _ = render_bscan(clean, slice_index, np.random.default_rng([8, slice_index]), config)
            difference = cv2.blur(np.abs(with_lesions.astype(np.float32) - without), (3, 3))
            if drawn:
                weakest.append(difference.max())
            else:
                assert difference.max() == 0
    assert len(weakest) >= 5
    # Speckle-free local change of at least ~20 grey levels (3x3 mean) for the faintest lesion drawn.
    assert min(weakest) > 18 and np.median(weakest) > 40


def test_global_intensity_statistics_do_not_reveal_the_label():
    """Logistic regression on histogram + percentiles stays near chance (a CNN reaches ~0.9 AUC: see
    ``python -m kd_keras.data.synthetic_oct --check``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    config = SyntheticOCTConfig(bscans_sampled_per_volume=12)
    images, labels = [], []
    for volume_index in range(64):
        rng = np.random.default_rng([21, volume_index])
        volume = simulate_volume(rng, CLASSES[volume_index % 4], config)
        slices = np.linspace(40, 88, 12).astype(int)
        batch, names, _ = render_volume(volume, config, rng, slices)
        images.append(batch)
        labels += [name != NORMAL for name in names]
    x = _histogram_features(np.concatenate(images).astype(np.float32))
    y = np.asarray(labels, dtype=int)
    train = np.arange(len(y)) < len(y) // 2  # first 32 volumes train, last 32 test (by volume)
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(x[train]), y[train])
    auc = roc_auc_score(y[~train], model.predict_proba(scaler.transform(x[~train]))[:, 1])
    assert 0.3 < y.mean() < 0.7
    assert auc < 0.68, auc


def test_difficulty_knob_shrinks_lesions():
    def mean_lesion_height(difficulty):
        config = SyntheticOCTConfig(difficulty=difficulty)
        heights = [lesion.height for i in range(40)
                   for lesion in simulate_volume(np.random.default_rng(i), "DRUSEN", config).lesions]
        return np.mean(heights)

    assert mean_lesion_height(2.0) < mean_lesion_height(1.0) < mean_lesion_height(0.0)


def test_oct_config_validation():
    with pytest.raises(ValueError, match="at least 32"):
        SyntheticOCTConfig(image_size=(16, 64))
    with pytest.raises(ValueError, match="bscans_sampled_per_volume"):
        SyntheticOCTConfig(bscans_per_volume=10, bscans_sampled_per_volume=20)


def test_fundus_dataset_layout_and_labels(tmp_path):
    config = SyntheticFundusConfig(image_size=48, patients=5, seed=2)
    root = generate_synthetic_fundus(tmp_path / "fundus", config)
    with open(root / "trainLabels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["image", "level"] and len(rows) == 10
    patients = {}
    for row in rows:
        patient, eye = row["image"].split("_")
        patients.setdefault(patient, set()).add(eye)
        assert 0 <= int(row["level"]) <= 4
        image = read_image(root / "train" / f"{row['image']}.jpeg")
        assert image.shape == (48, 48, 3)
    assert all(eyes == {"left", "right"} for eyes in patients.values()) and len(patients) == 5
    assert generate_synthetic_fundus(tmp_path / "fundus", config) == root
    again = generate_synthetic_fundus(tmp_path / "again", config)
    assert (again / "trainLabels.csv").read_bytes() == (root / "trainLabels.csv").read_bytes()


def test_fundus_anatomy_and_grades():
    size = 128
    image, counts = render_fundus(np.random.default_rng(0), 0, "right", size)
    assert sum(counts.values()) == 0
    assert image[:6, :6].max() < 10 and image[-6:, -6:].max() < 10  # black surround
    # The optic disc (brightest blob) sits on the nasal side: image right for a right eye, left for a left eye.
    for eye, expected_right in (("right", True), ("left", False)):
        picture, _ = render_fundus(np.random.default_rng(1), 0, eye, size)
        grey = cv2.GaussianBlur(picture.mean(-1).astype(np.float32), (0, 0), 3)
        column = np.unravel_index(np.argmax(grey), grey.shape)[1]
        assert (column > size / 2) == expected_right
    # Lesion load rises with the grade; grade 4 adds neovascularisation.
    totals = []
    for grade in range(5):
        counts = [render_fundus(np.random.default_rng([grade, k]), grade, "left", 64)[1] for k in range(6)]
        totals.append(np.mean([sum(c.values()) for c in counts]))
        assert all((c["neovascular"] > 0) == (grade == 4) for c in counts)
    assert totals[0] == 0 and all(a < b for a, b in zip(totals[:-1], totals[1:], strict=True))


def test_fundus_lesions_change_the_image():
    base, _ = render_fundus(np.random.default_rng(5), 0, "left", 96)
    sick, counts = render_fundus(np.random.default_rng(5), 3, "left", 96)
    assert counts["haemorrhage"] > 5
    # Haemorrhages are dark red: the count of dark-red pixels grows.
    def dark_red(img):
        r, g, b = (img[..., k].astype(int) for k in range(3))
        return ((r > 60) & (r < 140) & (g < 45) & (b < 45)).sum()

    assert dark_red(sick) > dark_red(base) + 20


def test_natural_pool_excludes_retina_and_is_cached(tmp_path):
    photos = load_bundled_photos()
    assert len(photos) >= 5
    assert not set(photos) & set(EXCLUDED) and "retina" not in photos
    root = natural_image_pool(out_dir=tmp_path / "pool", n_images=12, image_size=32, seed=1)
    files = sorted(root.glob("*.png"))
    assert len(files) == 12
    manifest = json.loads((root / "manifest.json").read_text())
    assert sum(manifest["sources"].values()) == 12 and "retina" not in manifest["sources"]
    crops = [read_image(path) for path in files]
    assert all(crop.shape == (32, 32, 3) for crop in crops)
    assert all(crop.std() > 1 for crop in crops)
    before = [p.stat().st_mtime_ns for p in files]
    assert natural_image_pool(out_dir=root, n_images=12, image_size=32, seed=1) == root
    assert [p.stat().st_mtime_ns for p in files] == before
    other = natural_image_pool(out_dir=tmp_path / "other", n_images=12, image_size=32, seed=2)
    assert any(a.read_bytes() != b.read_bytes() for a, b in zip(files, sorted(other.glob("*.png")), strict=True))
    same = natural_image_pool(out_dir=tmp_path / "same", n_images=12, image_size=32, seed=1)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files, sorted(same.glob("*.png")), strict=True))


def test_natural_pool_user_folder(tmp_path):
    folder = tmp_path / "mine" / "nested"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no image files"):
        natural_image_pool(tmp_path / "mine")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        natural_image_pool(tmp_path / "absent")
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    assert natural_image_pool(tmp_path / "mine") == Path(tmp_path / "mine")


def test_fundus_crop_finds_the_synthetic_disc():
    from kd_keras.data.preprocess import fundus_circle_box

    image, _ = render_fundus(np.random.default_rng(9), 2, "right", 128)
    padded = np.zeros((128, 200, 3), np.uint8)
    padded[:, 30:158] = image  # a wide frame, disc off-centre
    row, col, radius = fundus_circle_box(padded)
    assert abs(col - (30 + 64)) <= 4 and abs(row - 64) <= 4 and 52 <= radius <= 66


def test_oct_two_eyes_and_jpeg(tmp_path):
    config = SyntheticOCTConfig(image_size=(32, 32), bscans_per_volume=16, bscans_sampled_per_volume=3,
                                volumes_per_patient=2, labeled_patients=2, unlabeled_patients=1, test_patients=0,
                                image_format="jpeg")
    root = generate_synthetic_oct(tmp_path / "jpeg", config)
    rows = _index(root)
    assert len(rows) == 3 * 2 * 3 and all(row["file"].endswith(".jpeg") for row in rows)
    for patient in {row["patient"] for row in rows}:
        numbers = [int(Path(row["file"]).stem.rsplit("-", 1)[1]) for row in rows if row["patient"] == patient]
        assert sorted(numbers) == list(range(1, 7))  # unique image numbers across both eyes
        assert {row["volume"] for row in rows if row["patient"] == patient} == {f"{patient}-0", f"{patient}-1"}
    assert read_image(root / rows[0]["file"]).shape == (32, 32, 1)
