"""kd_keras.export: parity arithmetic, gates that fail loudly, sidecars, int8 on real chest X-rays, the scripts.

Expectations are computed independently: hand-made logits for the parity numbers, scikit-learn for AUC and
accuracy, ``hashlib`` for the source hash, the LiteRT interpreter's own quantisation parameters for the sidecar.
The int8 gate is exercised on a genuinely trained student (``simple10``, 32x32 grey, a few epochs on real
Kermany chest X-rays), because a randomly initialised network has too little image-dependent signal for int8
decisions to be meaningful (see tests/test_zoo_export.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kd_keras.export import (
    ExportParityError,
    LiteRTRunner,
    OnnxRunner,
    ParityThresholds,
    check_parity,
    decisions,
    export_model,
    images_from_folders,
    load_keras_model,
    measure_parity,
    read_sidecar,
)
from kd_keras.export.tflite import as_image_batch, convert_tflite
from kd_keras.models import build_model
from kd_keras.models.layers import PixelNormalization

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def kd_keras_main(argv: list[str]) -> int:
    """The ``kd-keras`` command in this process (``export/*.py`` are one-line entry points into it)."""
    from kd_keras.cli import main

    return main(argv)


def recalibrate_batchnorm(model: keras.Model, images: np.ndarray) -> None:
    """Set every BatchNormalization's moving statistics to those of ``images`` (one pass, momentum 0)."""
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


# ---------------------------------------------------------------------------------------------------------------
# Parity arithmetic against hand-computed values and scikit-learn.


def test_parity_numbers_by_hand():
    keras_logits = np.array([[0.0, 2.0], [1.0, -1.0], [0.5, 0.4], [-4.0, 0.0]])
    exported = keras_logits + np.array([[0.0, 0.01], [0.0, 0.0], [0.0, 0.2], [0.0, 0.0]])
    labels = np.array([1, 0, 1, 1])
    report = measure_parity(keras_logits, exported, variant="int8", runtime="litert", labels=labels)
    assert report.max_abs_diff == pytest.approx(0.2)
    assert report.max_relative_diff == pytest.approx(0.2 / 4.0)  # scaled by the largest |keras logit|
    assert report.mean_abs_diff == pytest.approx(0.21 / 8)
    # Decisions p(class 1) >= 0.5: keras [1, 0, 0, 1]; exported [1, 0, 1, 1] -> 3 of 4 agree.
    assert report.decision_agreement == pytest.approx(0.75)
    assert report.keras_accuracy == pytest.approx(0.75)  # labels [1, 0, 1, 1]
    assert report.exported_accuracy == pytest.approx(1.0)
    assert report.accuracy_change == pytest.approx(0.25)
    margin_k, margin_e = keras_logits[:, 1] - keras_logits[:, 0], exported[:, 1] - exported[:, 0]
    assert report.keras_auc == pytest.approx(roc_auc_score(labels, margin_k))
    assert report.exported_auc == pytest.approx(roc_auc_score(labels, margin_e))
    assert report.auc_change == pytest.approx(report.exported_auc - report.keras_auc)
    assert report.score_correlation == pytest.approx(np.corrcoef(margin_k, margin_e)[0, 1])
    assert not report.passed and "decision agreement 75.00% < 99.00%" in report.failures[0]


def test_decisions_binary_single_logit_and_multiclass():
    np.testing.assert_array_equal(decisions(np.array([[-0.1], [0.0], [2.0]])), [0, 1, 1])
    # sigmoid(0.1) = 0.525 < 0.53
    np.testing.assert_array_equal(decisions(np.array([[0.0, 0.1], [0.3, 0.0]]), threshold=0.53), [0, 0])
    np.testing.assert_array_equal(decisions(np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])), [1, 0])


def test_fp32_gate_is_relative_1e4():
    keras_logits = np.array([[10.0, -10.0], [3.0, 1.0]])
    ok = measure_parity(keras_logits, keras_logits + 9e-4, variant="fp32", runtime="onnxruntime")
    bad = measure_parity(keras_logits, keras_logits + 1.1e-3, variant="fp32", runtime="onnxruntime")
    assert ok.passed and ok.gates == {"max_relative_diff": 1e-4}
    assert not bad.passed
    with pytest.raises(ExportParityError, match=r"model\.onnx: fp32 export fails parity .*1\.10e-04 > 1\.00e-04"):
        check_parity(bad, "model.onnx")


def test_nan_output_fails_and_lowered_agreement_is_recorded():
    keras_logits = np.array([[0.0, 1.0], [1.0, 0.0]])
    nan = measure_parity(keras_logits, np.array([[np.nan, 1.0], [1.0, 0.0]]), variant="fp16", runtime="litert")
    assert not nan.passed and "non-finite" in nan.failures[0]
    flipped = np.array([[1.0, 0.0], [1.0, 0.0]])
    accepted = measure_parity(keras_logits, flipped, variant="int8", runtime="litert", min_agreement=0.5)
    assert accepted.passed and accepted.agreement_lowered_by_user and accepted.gates["decision_agreement"] == 0.5


def test_bad_images_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match=r"looks scaled to \[0, 1\]"):
        as_image_batch(np.full((2, SIZE, SIZE, 1), 0.5), (SIZE, SIZE, 1), "parity_images")
    with pytest.raises(ValueError, match="does not match the model input"):
        as_image_batch(np.full((2, 40, 40, 1), 100.0), (SIZE, SIZE, 1), "parity_images")
    with pytest.raises(ValueError, match="NaN"):
        as_image_batch(np.full((1, SIZE, SIZE, 1), np.nan), (SIZE, SIZE, 1))
    # An iterable of (H, W, C) images is stacked.
    assert as_image_batch([np.full((SIZE, SIZE, 1), 9.0)] * 3, (SIZE, SIZE, 1)).shape == (3, SIZE, SIZE, 1)


def test_load_keras_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_keras_model(tmp_path / "missing.keras")
    weights = tmp_path / "student.weights.h5"
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="expected a .keras model file"):
        load_keras_model(weights)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="broken.keras: cannot load the Keras model"):
        load_keras_model(broken)


# ---------------------------------------------------------------------------------------------------------------
# Export on real chest X-rays.


@pytest.fixture(scope="module")
def cxr(cxr_dir):
    """32x32 grey Kermany chest X-rays: 300 for training/calibration, 200 held out for parity (disjoint)."""
    images, labels, names = images_from_folders(cxr_dir, (SIZE, SIZE), 1, per_class=250, seed=0)
    order = np.random.default_rng(0).permutation(len(images))
    train, held_out = order[:300], order[300:]
    return {"train": images[train], "train_labels": labels[train], "val": images[held_out],
            "val_labels": labels[held_out], "names": names}


@pytest.fixture(scope="module")
def trained_student(cxr, tmp_path_factory):
    """``simple10`` trained for 6 epochs on 300 chest X-rays (about 90% held-out accuracy), saved as .keras."""
    keras.utils.set_random_seed(0)
    model = build_model("simple10", input_shape=(SIZE, SIZE, 1), num_classes=2)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(cxr["train"], cxr["train_labels"], epochs=6, batch_size=32, verbose=0)
    recalibrate_batchnorm(model, cxr["train"][:128])  # 6 epochs leave the moving averages behind the weights
    path = tmp_path_factory.mktemp("student") / "simple10_cxr.keras"
    model.save(path)
    return path


@pytest.mark.shared_data
def test_int8_export_of_trained_student_passes_and_sidecar_is_complete(cxr, trained_student, tmp_path):
    files = export_model(
        trained_student, tmp_path, variants=("tflite_int8", "onnx"), parity_images=cxr["val"],
        parity_labels=cxr["val_labels"], representative_images=cxr["train"][:100], class_names=cxr["names"],
        threshold=0.5,
    )
    int8, onnx_file = files
    assert int8.path.name == "simple10_cxr_int8.tflite" and onnx_file.path.name == "simple10_cxr.onnx"
    report = int8.parity
    assert report.passed and report.decision_agreement >= 0.99 and not report.agreement_lowered_by_user

    # Independent recomputation: Keras predict, the LiteRT interpreter, scikit-learn.
    model = keras.models.load_model(trained_student, compile=False)
    keras_logits = model.predict(cxr["val"], verbose=0)
    runner = LiteRTRunner(int8.path)
    assert runner.input_dtype == np.int8 and runner.output_quantization is not None
    tflite_logits = runner.predict(cxr["val"])
    auc_keras = roc_auc_score(cxr["val_labels"], keras_logits[:, 1] - keras_logits[:, 0])
    auc_tflite = roc_auc_score(cxr["val_labels"], tflite_logits[:, 1] - tflite_logits[:, 0])
    assert report.keras_auc == pytest.approx(auc_keras, abs=1e-9)
    assert report.auc_change == pytest.approx(auc_tflite - auc_keras, abs=1e-9)
    assert report.keras_auc > 0.85  # the student really learned something: agreement is not trivial
    acc_tflite = np.mean((tflite_logits[:, 1] > tflite_logits[:, 0]) == cxr["val_labels"])
    assert report.exported_accuracy == pytest.approx(acc_tflite, abs=1e-9)
    assert 0.05 < np.mean(cxr["val_labels"]) < 0.95 and 0.05 < np.mean(decisions(keras_logits)) < 0.95

    info = read_sidecar(int8.path)
    scale, zero_point = runner.input_quantization
    assert info["input"] == {
        "name": "image", "layout": "NHWC", "height": SIZE, "width": SIZE, "channels": 1, "pixel_range": [0.0, 255.0],
        "dtype": "int8", "quantization": {"scale": scale, "zero_point": zero_point,
                                          "real_value": "(q - zero_point) * scale"},
    }
    assert info["output"]["quantization"]["scale"] == pytest.approx(runner.output_quantization[0])
    assert info["normalisation"]["inside_model"] is True and info["normalisation"]["mode"] in PixelNormalization.MODES
    assert info["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert info["decision"] == {"rule": "softmax(logits)[1] >= threshold", "threshold": 0.5,
                                "positive_class": "PNEUMONIA"}
    assert info["source"]["sha256"] == hashlib.sha256(trained_student.read_bytes()).hexdigest()
    assert info["file_sha256"] == hashlib.sha256(int8.path.read_bytes()).hexdigest()
    assert info["variant"] == "int8" and info["format"] == "tflite"
    assert {"keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "numpy"} <= set(info["versions"])
    assert {"tensorflow", "tensorflow-cpu"} & set(info["versions"])
    assert info["parity"]["decision_agreement"] == report.decision_agreement and info["parity"]["passed"] is True

    onnx_info = read_sidecar(onnx_file.path)
    assert onnx_info["opset"] == 17 and onnx_info["input"]["dtype"] == "float32"
    assert onnx_info["input"]["quantization"] is None and onnx_file.parity.max_relative_diff <= 1e-4
    np.testing.assert_allclose(OnnxRunner(onnx_file.path).predict(cxr["val"][:8]), keras_logits[:8],
                               rtol=1e-4, atol=1e-4 * np.abs(keras_logits).max())


def _int8_hostile_model(images: np.ndarray, labels: np.ndarray) -> keras.Model:
    """Float model with a sane decision whose int8 file cannot work: an activation with a 1e3 outlier range is
    concatenated to the features, so per-tensor int8 leaves the informative features no resolution."""
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = PixelNormalization("unit")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", kernel_initializer=keras.initializers.HeNormal(0))(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outlier = keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(1e3))(
        features)
    joined = keras.layers.Concatenate()([features, outlier])
    logits = keras.layers.Dense(2, name="logits")(joined)
    model = keras.Model(inputs, logits, name="int8_hostile")
    # Head: the two class means of the features decide (nearest-mean), the outlier gets weight 0.
    f = keras.Model(inputs, features).predict(images, verbose=0)
    mu0, mu1 = f[labels == 0].mean(0), f[labels == 1].mean(0)
    w = np.stack([mu0, mu1], axis=1)
    b = -0.5 * np.array([mu0 @ mu0, mu1 @ mu1])
    kernel = np.concatenate([w, np.zeros((1, 2))], axis=0) * 50.0
    model.get_layer("logits").set_weights([kernel.astype("float32"), (b * 50.0).astype("float32")])
    return model


@pytest.mark.shared_data
def test_int8_parity_failure_raises_and_renames_the_file(cxr, tmp_path):
    model = _int8_hostile_model(cxr["train"], cxr["train_labels"])
    keras_decisions = decisions(model.predict(cxr["val"], verbose=0))
    assert 0.1 < keras_decisions.mean() < 0.9  # the float model takes real, varied decisions
    with pytest.raises(ExportParityError, match=r"int8_hostile_int8\.tflite\.failed: int8 .*decision agreement"):
        export_model(model, tmp_path, variants=("tflite_int8",), parity_images=cxr["val"],
                     parity_labels=cxr["val_labels"], representative_images=cxr["train"][:64])
    assert not (tmp_path / "int8_hostile_int8.tflite").exists()
    failed = tmp_path / "int8_hostile_int8.tflite.failed"
    assert failed.is_file()
    assert read_sidecar(failed)["parity"]["passed"] is False

    # The user may accept less, explicitly; the sidecar says so.
    accepted = export_model(model, tmp_path / "accepted", variants=("tflite_int8",), parity_images=cxr["val"],
                            representative_images=cxr["train"][:64], min_agreement=0.0)[0]
    assert accepted.parity.agreement_lowered_by_user and accepted.parity.decision_agreement < 0.99
    assert read_sidecar(accepted.path)["parity"]["gates"] == {"decision_agreement": 0.0}


@pytest.mark.shared_data
def test_tightened_fp32_gate_raises(cxr, tmp_path):
    model = build_model("mobilenet_wd4", input_shape=(SIZE, SIZE, 1), num_classes=2)
    with pytest.raises(ExportParityError, match=r"_fp32\.tflite\.failed: fp32 \(litert\): max relative logit diff"):
        export_model(model, tmp_path, variants=("tflite_fp32",), parity_images=cxr["val"][:16],
                     thresholds=ParityThresholds(fp32_relative=1e-12))
    # In-memory model: the sidecar hashes the weight arrays, and the failed file keeps its report.
    info = read_sidecar(tmp_path / "mobilenet_wd4_fp32.tflite.failed")
    assert info["source"]["path"] is None and len(info["source"]["sha256"]) == 64


def test_int8_needs_representative_images(tmp_path):
    model = build_model("mobilenet_wd4", input_shape=(SIZE, SIZE, 1), num_classes=2)
    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 1))
    with pytest.raises(ValueError, match="representative_images"):
        export_model(model, tmp_path, variants=("tflite_int8",), parity_images=images)
    with pytest.raises(ValueError, match="unknown export variants"):
        export_model(model, tmp_path, variants=("tflite_int4",), parity_images=images)
    with pytest.raises(ValueError, match="representative_images"):
        convert_tflite(model, tmp_path / "x.tflite", "int8")


# ---------------------------------------------------------------------------------------------------------------
# The scripts.


@pytest.mark.shared_data
def test_export_student_script(cxr, trained_student, tmp_path, capsys):
    npz = tmp_path / "val.npz"
    np.savez(npz, images=cxr["val"][:64], labels=cxr["val_labels"][:64])
    code = kd_keras_main(["export", str(trained_student), "--out", str(tmp_path / "out"), "--variants",
                          "tflite_fp32", "tflite_fp16", "--parity-npz", str(npz), "--class-names", "NORMAL",
                          "PNEUMONIA"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "simple10_cxr_fp32.tflite: fp32 (litert)" in printed and "simple10_cxr_fp16.tflite" in printed
    fp16 = read_sidecar(tmp_path / "out" / "simple10_cxr_fp16.tflite")
    assert fp16["variant"] == "fp16" and fp16["class_names"] == ["NORMAL", "PNEUMONIA"]
    # fp16 weights: about half the fp32 file.
    sizes = {v: (tmp_path / "out" / f"simple10_cxr_{v}.tflite").stat().st_size for v in ("fp32", "fp16")}
    assert 0.4 < sizes["fp16"] / sizes["fp32"] < 0.6
    missing = str(tmp_path / "nope.keras")
    assert kd_keras_main(["export", missing, "--out", str(tmp_path), "--parity-npz", str(npz)]) == 2
    assert "nope.keras: no such model file" in capsys.readouterr().err


def test_benchmark_script_smoke(tmp_path):
    """Tiny runs (N=4, 1 repeat, 32 px): zoo names with ratios over a teacher, then files by path."""
    out, work = tmp_path / "bench", tmp_path / "work"
    tiny = ["--num-images", "4", "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    code = kd_keras_main(["latency", "mobilenet_wd4", "--teacher", "mobilenet_wd2", "--runtimes", "litert",
                          "onnxruntime", "--image-size", "32", "--channels", "1", "--work-dir", str(work), "--out",
                          str(out), *tiny])
    assert code == 0
    record = json.loads(out.with_suffix(".json").read_text())
    results = {(r["model"], r["runtime"]): r for r in record["results"]}
    assert set(results) == {(m, rt) for m in ("mobilenet_wd2", "mobilenet_wd4") for rt in ("litert", "onnxruntime")}
    for r in results.values():
        assert r["error"] is None and len(r["times_s"]) == 1 and r["median_s"] > 0
        assert 10 < r["peak_rss_mb"] < 2000 and r["file_bytes"] > 0 and r["input_shape"] == [32, 32, 1]
        teacher = results[("mobilenet_wd2", r["runtime"])]
        assert r["speedup"] == pytest.approx(teacher["median_s"] / r["median_s"])
        assert r["macs_ratio"] == pytest.approx(teacher["macs"] / r["macs"])
    assert results[("mobilenet_wd4", "litert")]["macs"] < results[("mobilenet_wd2", "litert")]["macs"]
    assert "kd-keras latency mobilenet_wd4 --teacher mobilenet_wd2" in record["command"]
    assert record["conditions"]["cpu_count"] >= 1
    assert "| mobilenet_wd4 | litert |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000

    # Files by path run in the runtimes that read them; Keras runs predict in batches.
    paths = [str(work / name) for name in ("mobilenet_wd4.keras", "mobilenet_wd4_fp32.tflite", "mobilenet_wd4.onnx")]
    assert kd_keras_main(["latency", paths[0], "--teacher", "none", "--runtimes", "keras", "--out", str(out),
                          *tiny]) == 0
    keras_run = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(r["model"], r["runtime"], r["error"]) for r in keras_run] == [("mobilenet_wd4", "keras", None)]
    assert keras_run[0]["rss_before_model_mb"] < keras_run[0]["peak_rss_mb"]
    assert kd_keras_main(["latency", *paths[1:], "--teacher", "none", "--runtimes", "litert", "onnxruntime",
                          "--out", str(out), *tiny]) == 0
    runs = [(r["model"], r["runtime"]) for r in json.loads(out.with_suffix(".json").read_text())["results"]]
    assert sorted(runs) == [("mobilenet_wd4", "onnxruntime"), ("mobilenet_wd4_fp32", "litert")]
