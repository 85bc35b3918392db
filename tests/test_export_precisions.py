"""Every precision in the exported runtimes, the exact ONNX rewrites, graph multiply-adds and the latency
benchmark's choice of the fastest passing file (issue 20). Tiny widths at 32 px: each test well under 20 s."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest

from kd_keras.export.graph_macs import graph_macs
from kd_keras.export.latency import LatencyResult, benchmark, best_files, smooth_images
from kd_keras.export.latency_compare import Setting, interleaved_latency
from kd_keras.export.onnx_format import OnnxRunner, convert_onnx
from kd_keras.export.onnx_optimize import optimize_onnx
from kd_keras.export.onnx_quantize import onnx_fp16_available, quantize_onnx
from kd_keras.export.tflite import LiteRTRunner, convert_tflite
from kd_keras.models import build_model
from kd_keras.models.profile import count_macs
from kd_keras.models.shufflenet import ChannelShuffle


def _ops(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.fixture(scope="module")
def images():
    return smooth_images(24, (32, 32, 1), seed=3)


def test_channel_shuffle_becomes_one_gather_with_the_same_permutation(tmp_path):
    """ChannelShuffle(3) on 12 channels: the rewritten graph holds a Gather and computes the shuffle exactly."""
    inputs = keras.Input((4, 4, 12))
    x = keras.layers.Conv2D(12, 1, use_bias=False)(inputs)  # NCHW conv in ONNX: the shuffle sits between layouts
    x = ChannelShuffle(3)(x)
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1, use_bias=False)(x), name="shuffle_only")
    raw = convert_onnx(model, tmp_path / "raw.onnx", optimize=False)
    optimised = tmp_path / "optimised.onnx"
    stats = optimize_onnx(raw, optimised)
    assert stats["channel_shuffle"] == 1
    assert "Gather" in _ops(optimised) and _ops(optimised).count("Transpose") < _ops(raw).count("Transpose")
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 12)).astype(np.float32)
    expected = np.asarray(model(x))
    # The permutation by hand: channel c*4 + j of 3 groups of 4 goes to position j*3 + c.
    conv1, conv2 = (layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    y = np.asarray(conv1(x))
    shuffled = y[..., [c * 4 + j for j in range(4) for c in range(3)]]
    np.testing.assert_allclose(np.asarray(conv2(shuffled)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(OnnxRunner(optimised).predict(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["shufflenetv2_wd2", pytest.param("shufflenet_g3_wd4", marks=pytest.mark.slow)])
def test_rewritten_shufflenets_compute_what_keras_computes(tmp_path, name):
    images = smooth_images(12, (32, 32, 3), seed=4)
    model = build_model(name, input_shape=(32, 32, 3), num_classes=2)
    # At 1x1 (the last stage at 32 px) tf2onnx writes the layout changes as reshapes: nothing to rewrite there.
    shuffles = sum(isinstance(layer, ChannelShuffle) and layer.input.shape[1] * layer.input.shape[2] > 1
                   for layer in model.layers)
    raw = convert_onnx(model, tmp_path / "raw.onnx", optimize=False)
    optimised = tmp_path / "optimised.onnx"
    stats = optimize_onnx(raw, optimised)
    assert stats["channel_shuffle"] == shuffles > 0 and stats["input_normalisation"] == 1
    assert _ops(optimised).count("Gather") == shuffles
    assert _ops(optimised).count("Transpose") <= _ops(raw).count("Transpose") - 2 * shuffles
    keras_logits = np.asarray(model(images, training=False))
    scale = np.abs(keras_logits).max()
    for path in (raw, optimised):
        assert np.abs(OnnxRunner(path).predict(images) - keras_logits).max() / scale < 1e-4


def test_onnx_quantised_files_and_their_graph_macs(tmp_path, images):
    keras.utils.set_random_seed(0)  # an untrained network: its logit margins are tiny, keep them reproducible
    model = build_model("mobilenet_wd4", input_shape=(32, 32, 1), num_classes=2)
    fp32 = convert_onnx(model, tmp_path / "m.onnx")
    int8 = quantize_onnx(fp32, tmp_path / "m_int8.onnx", "int8", calibration_images=images[:12])
    dynamic = quantize_onnx(fp32, tmp_path / "m_dynamic.onnx", "dynamic")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(int8))
    assert "ConvInteger" in _ops(dynamic) or "MatMulInteger" in _ops(dynamic)
    keras_logits = np.asarray(model(images, training=False))
    for path in (int8, dynamic):
        logits = OnnxRunner(path).predict(images)
        assert logits.shape == keras_logits.shape and np.all(np.isfinite(logits))
        margin = keras_logits[:, 1] - keras_logits[:, 0]
        assert np.corrcoef(margin, logits[:, 1] - logits[:, 0])[0, 1] > 0.8  # 0.95-0.99 measured
    expected = count_macs(model)
    assert graph_macs(fp32) == graph_macs(int8) == graph_macs(dynamic) == expected
    with pytest.raises(ValueError, match="calibration_images"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "int8")
    if not onnx_fp16_available():
        with pytest.raises(RuntimeError, match="onnxconverter-common"):
            quantize_onnx(fp32, tmp_path / "x.onnx", "fp16")


def test_tflite_graph_macs_match_the_keras_count(tmp_path):
    # (an int8 .tflite file's count is checked in test_benchmark_times_every_precision_with_parity)
    model = build_model("shufflenetv2_wd2", input_shape=(32, 32, 1), num_classes=3)
    fp32 = convert_tflite(model, tmp_path / "s_fp32.tflite", "fp32")
    assert graph_macs(fp32) == count_macs(model)
    with pytest.raises(ValueError, match=".tflite and .onnx"):
        graph_macs(tmp_path / "s.keras")


def _result(model, runtime, precision, median, passed=True, macs=100):
    return LatencyResult(model, runtime, None, (32, 32, 1), 4, 2, 1, 0, 1, median_s=median, precision=precision,
                         parity_passed=passed, macs=macs)


def test_best_files_takes_each_model_in_its_fastest_passing_file():
    results = [_result("teacher", "litert", "fp32", 4.0, macs=1000), _result("teacher", "litert", "int8", 1.0,
                                                                             macs=1000),
               _result("teacher", "onnxruntime", "fp32", 5.0, macs=1000),
               _result("student", "litert", "fp32", 0.4), _result("student", "litert", "int8", 0.05, passed=False),
               _result("student", "onnxruntime", "fp32", 0.2), _result("student", "onnxruntime", "int8", 0.1)]
    from kd_keras.export.latency import _add_ratios

    _add_ratios(results, "teacher")
    rows = {row["model"]: row for row in best_files(results, "teacher")}
    assert (rows["teacher"]["runtime"], rows["teacher"]["precision"]) == ("litert", "int8")
    # The int8 LiteRT student failed parity: its fastest passing file is ONNX int8 (0.1 s).
    assert (rows["student"]["runtime"], rows["student"]["precision"]) == ("onnxruntime", "int8")
    assert rows["student"]["speedup"] == pytest.approx(1.0 / 0.1)
    assert rows["student"]["speedup_vs_fp32_teacher"] == pytest.approx(4.0 / 0.1)
    # Same runtime and precision: litert fp32 10x, onnx fp32 25x (MACs ratio 10): best fraction 2.5.
    assert rows["student"]["best_macs_fraction"] == pytest.approx(2.5)


def test_benchmark_times_every_precision_with_parity(tmp_path, images):
    results = benchmark(["mobilenet_wd4"], teacher=None, runtimes=("litert", "onnxruntime"),
                        precisions=("fp32", "int8"), num_images=4, batch_size={"litert": 2},
                        threads=1, warmup=0, repeats=1, input_shape=(32, 32, 1), calibration_images=images[:12],
                        parity_images=images[12:], work_dir=tmp_path, progress=None)
    found = {(r.model, r.runtime, r.precision) for r in results}
    assert found == {("mobilenet_wd4", rt, p) for rt in ("litert", "onnxruntime") for p in ("fp32", "int8")}
    for r in results:
        assert r.error is None and r.median_s > 0 and r.parity is not None
        assert r.batch_size == (2 if r.runtime == "litert" else 16)
        if r.precision == "fp32":
            assert r.parity_passed and r.parity["max_relative_diff"] < 1e-4
    assert (tmp_path / "mobilenet_wd4_int8.onnx").is_file() and (tmp_path / "mobilenet_wd4_int8.tflite").is_file()
    # A file target: precision from its name, MACs from its graph.
    again = benchmark([str(tmp_path / "mobilenet_wd4_int8.tflite")], teacher=None, runtimes=("litert",),
                      num_images=2, batch_size=2, threads=1, warmup=0, repeats=1, progress=None)
    assert again[0].precision == "int8" and again[0].macs == count_macs(build_model(
        "mobilenet_wd4", input_shape=(32, 32, 1), num_classes=2))
    # A .keras target with a file already converted from it (the main job's export): timed as it is, checked again.
    keras_file, int8_file = tmp_path / "mobilenet_wd4.keras", tmp_path / "mobilenet_wd4_int8.tflite"
    work = tmp_path / "w"
    reused = benchmark([str(keras_file)], teacher=None, runtimes=("litert",), precisions=("int8",), num_images=2,
                       batch_size=2, threads=1, warmup=0, repeats=1, parity_images=images[12:], work_dir=work,
                       converted={str(keras_file): {(".tflite", "int8"): int8_file}}, progress=None)
    assert [r.file for r in reused] == [str(int8_file)] and reused[0].parity is not None
    assert not any(work.iterdir())  # nothing converted again


def test_interleaved_latency_compares_settings_in_one_run(tmp_path):
    model = build_model("mobilenet_wd4", input_shape=(32, 32, 1), num_classes=2)
    onnx_file = convert_onnx(model, tmp_path / "m.onnx")
    tflite_file = convert_tflite(model, tmp_path / "m.tflite")
    rows = interleaved_latency([Setting("onnx", onnx_file, "onnxruntime", batch_size=2, threads=1),
                                Setting("onnx basic", onnx_file, "onnxruntime", {"graph_optimization_level": "basic"},
                                        batch_size=4, threads=1),
                                Setting("litert", tflite_file, "litert", batch_size=2, threads=1)],
                               num_images=4, repeats=3, warmup=1)
    assert [r["label"] for r in rows] == ["onnx", "onnx basic", "litert"]
    assert rows[0]["ratio_to_first"] == 1.0
    for row in rows:
        assert len(row["times_s"]) == 3 and row["median_s"] > 0
        assert row["ratio_to_first"] == pytest.approx(rows[0]["median_s"] / row["median_s"])
    with pytest.raises(ValueError, match="graph_optimization_level"):
        OnnxRunner(onnx_file, graph_optimization_level="fast")
    assert LiteRTRunner(tflite_file, num_threads=1, experimental_disable_delegate_clustering=True).input_shape == (
        32, 32, 1)
