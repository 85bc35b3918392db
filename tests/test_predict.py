"""kd_keras.deploy / ``kd-keras predict``: exported students on whole volumes, with the edge runtime alone.

One tiny student (``mobilenet_wd4``, 32x32 grey, 2 classes) is exported once to TFLite fp32, TFLite int8 and ONNX
with a CLAHE preprocessing recorded in the sidecar. It is untrained: its batch-norm statistics come from the
images (one pass, momentum 0) and its last layer is rescaled so that the B-scan probabilities spread over (0, 1)
instead of saturating, so a probability difference of 1e-4 is visible. Expectations are independent of the
predict path: Keras' own logits on the B-scans read by OpenCV / NumPy / pydicom here and preprocessed with
:func:`kd_keras.data.preprocess.preprocess` under the config the test chose.

int8: an untrained network's decision margin is small next to int8 rounding (see tests/test_zoo_export.py), so
the int8 check is that predict returns exactly what the int8 file computes on the training preprocessing, and
that its decisions agree with Keras on at least 90% of a volume (the 99% gate needs a trained student: it is
the exporter's gate, exercised in tests/test_export.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from kd_keras.cli import main as kd_main
from kd_keras.data.preprocess import PreprocessConfig, load_image, preprocess
from kd_keras.deploy import ModelError, Predictor, VolumeError, predict_volumes, read_volume
from kd_keras.engine.training import recalibrate_batch_norm
from kd_keras.export import LiteRTRunner, export_model, read_sidecar
from kd_keras.export.sidecar import sidecar_path
from kd_keras.models import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = PreprocessConfig((32, 32), channels=1, clahe=True, clahe_clip=2.0, clahe_grid=4)
HEIGHT, WIDTH = 40, 48  # B-scans the tests write: resized by the preprocessing


def synthetic_bscans(seed: int, count: int, dtype=np.uint8) -> np.ndarray:
    """``(count, 40, 48)`` B-scan-like images: a bright retinal band at a varying depth, speckle, some lesions."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    scans = []
    for index in range(count):
        top = rng.uniform(0.25, 0.5) * HEIGHT
        image = 50 + 110 * np.exp(-((rows - top) / 3.0) ** 2) + 40 * ((rows > top) & (rows < top + 12))
        if index % 3 == 0:
            cy, cx = rng.uniform(0.4, 0.8) * HEIGHT, rng.uniform(0.1, 0.9) * WIDTH
            image = image + 120 * np.exp(-(((rows - cy) / 5.0) ** 2 + ((cols - cx) / 8.0) ** 2))
        image = np.clip(image + rng.normal(0, 15, image.shape), 0, 255)
        scans.append(image * (257.0 if dtype == np.uint16 else 1.0))
    return np.stack(scans).round().astype(dtype)


def keras_probabilities(model: keras.Model, frames) -> np.ndarray:
    images = np.stack([preprocess(frame, CONFIG) for frame in frames])
    logits = np.asarray(model(images, training=False), dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """The student, its three exported files (sidecars record CONFIG) and the folder they are in."""
    keras.utils.set_random_seed(0)
    model = build_model("mobilenet_wd4", (32, 32, 1), 2)
    calibration = np.stack([preprocess(frame, CONFIG) for frame in synthetic_bscans(1, 96)])
    recalibrate_batch_norm(model, calibration)
    # Rescale the last layer so the logit margin has spread ~2 around 0 on these images (probabilities in (0, 1)).
    margin = np.asarray(model(calibration, training=False))
    margin = margin[:, 1] - margin[:, 0]
    kernel, bias = model.get_layer("logits").get_weights()
    scale = 2.0 / (margin.std() + 1e-12)
    offset = -np.median(margin) * scale
    model.get_layer("logits").set_weights([kernel * scale, bias * scale + np.array([-offset / 2, offset / 2])])
    out = tmp_path_factory.mktemp("export")
    files = export_model(model, out, variants=("tflite_fp32", "tflite_int8", "onnx"), parity_images=calibration,
                         representative_images=calibration, class_names=["NORMAL", "ABNORMAL"], threshold=0.5,
                         stem="student", preprocess=CONFIG, min_agreement=0.8)
    return {"model": model, "fp32": files[0].path, "int8": files[1].path, "onnx": files[2].path, "dir": out}


def write_volume(kind: str, frames: np.ndarray, where: Path) -> Path:
    """Write ``frames`` as one volume of the given kind with OpenCV / NumPy / pydicom (not the predict path)."""
    if kind == "folder":
        where.mkdir(parents=True)
        for index, frame in enumerate(frames):  # bscan_1 .. bscan_12: lexical order would put 10 before 2
            assert cv2.imwrite(str(where / f"bscan_{index + 1}.png"), frame)
        return where
    if kind == "tiff":
        path = where.with_suffix(".tiff")
        assert cv2.imwritemulti(str(path), list(frames))
        return path
    if kind == "npy":
        np.save(where.with_suffix(".npy"), frames)
        return where.with_suffix(".npy")
    if kind == "npz":
        np.savez_compressed(where.with_suffix(".npz"), volume=frames, spacing=np.array([1.0, 1.0]))
        return where.with_suffix(".npz")
    if kind == "dicom":
        return write_dicom(frames, where.with_suffix(".dcm"))
    raise AssertionError(kind)


def write_dicom(frames: np.ndarray, path: Path) -> Path:
    """A multi-frame ophthalmic tomography DICOM file written with pydicom."""
    pydicom = pytest.importorskip("pydicom", reason="pydicom (the dicom extra) is not installed")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OPT"
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = frames.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Parity with Keras, one test per input format.


@pytest.mark.parametrize("kind", ["folder", "tiff", "npy", "npz", "dicom"])
def test_fp32_probabilities_equal_keras_per_format(student, kind, tmp_path):
    frames = synthetic_bscans(10, 12)
    volume = write_volume(kind, frames, tmp_path / "eye")
    expected = keras_probabilities(student["model"], frames)
    for exported in ("fp32", "onnx"):
        [result] = predict_volumes(student[exported], [volume])
        assert result.ok, result.error
        assert result.probabilities.shape == (12, 2)
        np.testing.assert_allclose(result.probabilities, expected, atol=1e-4, rtol=0)
        assert result.flagged_indices == [int(i) for i in np.flatnonzero(expected[:, 1] >= 0.5)]
        assert result.decision == (len(result.flagged_indices) >= 1)
    assert 0.05 < expected[:, 1].min() or expected[:, 1].max() < 0.95  # not saturated: 1e-4 is a real check
    if kind == "folder":
        assert result.bscan_names[:3] == ["bscan_1.png", "bscan_2.png", "bscan_3.png"]  # natural order
        assert result.bscan_names[-1] == "bscan_12.png"


def test_16bit_volume_keeps_its_precision(student, tmp_path):
    frames = synthetic_bscans(11, 8, dtype=np.uint16)
    volume = write_volume("tiff", frames, tmp_path / "eye16")
    [result] = predict_volumes(student["fp32"], [volume])
    np.testing.assert_allclose(result.probabilities, keras_probabilities(student["model"], frames), atol=1e-4)


def test_sidecar_preprocessing_is_what_predict_applies(student, tmp_path):
    info = read_sidecar(student["fp32"])
    assert info["preprocess"] == {"function": "kd_keras.data.preprocess.preprocess", "image_size": [32, 32],
                                  "channels": 1, "clahe": True, "clahe_clip": 2.0, "clahe_grid": 4,
                                  "fundus_crop": False, "geometry": "resize"}
    frames = synthetic_bscans(12, 16)
    predictor = Predictor(student["fp32"])
    assert predictor.preprocess_config == CONFIG and predictor.preprocess_recorded
    with_clahe = predictor.predict_volume(write_volume("npy", frames, tmp_path / "v")).probabilities
    # Without the sidecar's CLAHE the same B-scans score differently: the record is what makes parity hold.
    predictor.preprocess_config = PreprocessConfig((32, 32), channels=1)
    without = predictor.predict_volume(tmp_path / "v.npy").probabilities
    assert np.abs(with_clahe - without).max() > 1e-2
    with pytest.raises(ValueError, match=r"preprocess gives \(64, 64\) x 1 channels"):
        export_model(student["model"], tmp_path / "bad", parity_images=np.full((2, 32, 32, 1), 100.0, np.float32),
                     preprocess=PreprocessConfig((64, 64), channels=1))


def test_int8_predict_is_the_int8_file_and_tracks_keras(student, tmp_path):
    frames = synthetic_bscans(13, 128)
    [result] = predict_volumes(student["int8"], [write_volume("npy", frames, tmp_path / "v128")])
    images = np.stack([preprocess(frame, CONFIG) for frame in frames])
    logits = LiteRTRunner(student["int8"]).predict(images).astype(np.float64)
    direct = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))
    np.testing.assert_allclose(result.probabilities[:, 1], direct, atol=1e-6)
    keras_flags = keras_probabilities(student["model"], frames)[:, 1] >= 0.5
    assert np.mean(result.flags == keras_flags) >= 0.9
    assert 0 < result.flags.sum() < 128  # both decisions occur: agreement is not trivial


@pytest.mark.shared_data
def test_real_oct_bscans_fp32_parity(student, oct_sample_dir, tmp_path):
    files = sorted(oct_sample_dir.glob("*/*.jpeg"))
    sizes = {}
    for file in files:
        sizes.setdefault(cv2.imread(str(file), cv2.IMREAD_GRAYSCALE).shape, []).append(file)
    shape, same = max(sizes.items(), key=lambda item: len(item[1]))
    volume = tmp_path / "real"
    volume.mkdir()
    for index, file in enumerate(same):
        shutil.copyfile(file, volume / f"{index:03d}_{file.name}")
    [result] = predict_volumes(student["fp32"], [volume])
    assert result.ok and len(result.bscan_names) == len(same) >= 8 and result.source_shape[:2] == shape
    images = np.stack([load_image(volume / name, CONFIG) for name in result.bscan_names])
    logits = np.asarray(student["model"](images, training=False), np.float64)
    np.testing.assert_allclose(result.probabilities[:, 1], 1 / (1 + np.exp(logits[:, 0] - logits[:, 1])), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Outputs and the command.


def test_command_outputs_and_bad_volumes(student, tmp_path, capsys):
    good = write_volume("npy", synthetic_bscans(20, 20), tmp_path / "good")
    unreadable = tmp_path / "broken.tiff"
    unreadable.write_bytes(b"II*\x00garbage")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    cv2.imwrite(str(mixed / "a1.png"), np.zeros((40, 48), np.uint8))
    cv2.imwrite(str(mixed / "a2.png"), np.zeros((41, 48), np.uint8))
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "b1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    second = write_volume("folder", synthetic_bscans(21, 5), tmp_path / "second")
    out = tmp_path / "out"
    status = kd_main(["predict", str(student["fp32"]), str(good), str(unreadable), str(mixed), str(empty),
                      str(corrupt), str(second), "--out", str(out), "--threshold", "0.4", "--tile-width", "40"])
    captured = capsys.readouterr()
    assert status == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and len(captured.err.splitlines()) == 4
    assert f"{unreadable}: " in errors[0] and f"{mixed}: mixed B-scan sizes" in errors[1]
    assert f"{empty}: empty folder" in errors[2] and f"{corrupt}: B-scan b1.png" in errors[3]
    # The good volumes are still scored and written.
    record = json.loads((out / "predictions.json").read_text())
    assert [v["volume"] for v in record["volumes"]] == ["good", "broken", "mixed", "empty", "corrupt", "second"]
    first = record["volumes"][0]
    probabilities = keras_probabilities(student["model"], synthetic_bscans(20, 20))[:, 1]
    assert first["flagged_indices"] == [int(i) for i in np.flatnonzero(probabilities >= 0.4)]
    assert first["flagged_count"] == len(first["flagged_indices"]) and first["num_bscans"] == 20
    assert record["model"]["threshold"] == 0.4 and record["model"]["sidecar_threshold"] == 0.5
    assert "error" in record["volumes"][1] and set(first["seconds"]) == {"read", "preprocess", "inference", "total"}
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "volume,bscan_index,bscan_name,p_NORMAL,p_ABNORMAL,score,flagged" and len(rows) == 1 + 20 + 5
    picture = cv2.imread(str(out / "good.png"))
    assert picture is not None and picture.shape[1] >= 16 * 46 and (out / "second.png").is_file()
    assert "good" in captured.out and "FAILED" in captured.out and (out / "summary.txt").is_file()


def test_threshold_and_min_flagged(student, tmp_path):
    volume = write_volume("npy", synthetic_bscans(30, 16), tmp_path / "v")
    [everything] = predict_volumes(student["onnx"], [volume], threshold=0.0)
    [nothing] = predict_volumes(student["onnx"], [volume], threshold=1.0)
    assert everything.flags.all() and everything.decision and not nothing.flags.any() and not nothing.decision
    [default] = predict_volumes(student["onnx"], [volume], min_flagged=17)
    assert not default.decision  # 16 B-scans can never reach 17


def test_model_and_sidecar_mismatch(student, tmp_path, capsys):
    volume = write_volume("npy", synthetic_bscans(40, 4), tmp_path / "v")
    swapped = tmp_path / "swapped_int8.tflite"
    shutil.copyfile(student["int8"], swapped)
    shutil.copyfile(sidecar_path(student["fp32"]), sidecar_path(swapped))  # fp32's sidecar beside the int8 file
    assert kd_main(["predict", str(swapped), str(volume), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sidecar does not match swapped_int8.tflite" in err
    resized = tmp_path / "resized.onnx"
    shutil.copyfile(student["onnx"], resized)
    info = read_sidecar(student["onnx"])
    info["input"]["height"] = info["preprocess"]["image_size"][0] = 64
    sidecar_path(resized).write_text(json.dumps(info))
    with pytest.raises(ModelError, match=r"resized.onnx.json: sidecar input \(64, 32, 1\) but resized.onnx takes"):
        Predictor(resized)
    alone = tmp_path / "alone.onnx"
    shutil.copyfile(student["onnx"], alone)
    with pytest.raises(ModelError, match="no sidecar beside alone.onnx"):
        Predictor(alone)
    assert kd_main(["predict", str(tmp_path / "missing.tflite"), str(volume)]) == 2
    assert "missing.tflite: no such model file" in capsys.readouterr().err


def test_volume_readers_refuse_clearly(tmp_path, monkeypatch):
    np.save(tmp_path / "float.npy", np.full((3, 8, 8), 2.0, np.float32) * 300)
    with pytest.raises(VolumeError, match=r"float.npy: .*float pixels in \[600, 600\]"):
        read_volume(tmp_path / "float.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 8, 8)), b=np.zeros((2, 8, 8)))
    with pytest.raises(VolumeError, match="two.npz: 2 arrays"):
        read_volume(tmp_path / "two.npz")
    (tmp_path / "scan.dcm").write_bytes(b"\x00" * 128 + b"DICM")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if the dicom extra were not installed
    with pytest.raises(VolumeError, match=r'scan.dcm: DICOM needs pydicom.*pip install "kd-keras\[dicom\]"'):
        read_volume(tmp_path / "scan.dcm")
    with pytest.raises(VolumeError, match="nowhere: no such file or folder"):
        read_volume(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------------
# Without TensorFlow.


def test_predict_runs_where_tensorflow_cannot_be_imported(student, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'jax', 'torch'):\n"
        "            raise ImportError(f'{name} is blocked: runtime-only environment')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO_ROOT)])}
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked" in blocked.stderr
    volume = write_volume("npy", synthetic_bscans(50, 6), tmp_path / "v")
    for exported in ("int8", "onnx"):
        run = subprocess.run([sys.executable, "-m", "kd_keras", "predict", str(student[exported]), str(volume),
                              "--out", str(tmp_path / exported)], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert (tmp_path / exported / "predictions.csv").read_text().count("\n") == 1 + 6
