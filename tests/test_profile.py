"""Parameter and MAC counting, and the zoo CLI.

Known figures:
- MobileNet 1.0 at 224x224: "569 million Mult-Adds" (Howard et al. 2017, arXiv:1704.04861, Table 8); written out
  layer by layer below from the paper's Table 1: 568,740,352 including the 1024x1000 classifier.
- ResNet-50 at 224x224: "3.8 x 10^9 FLOPs" (multiply-adds; He et al. 2016, arXiv:1512.03385, Table 1). Keras'
  ResNet50 is the original v1 (stride in the first 1x1 convolution of a block), written out layer by layer below:
  3,855,925,248 + 2,048,000 for the classifier. (torchvision's 4.09 G is v1.5, stride in the 3x3.)
"""

from __future__ import annotations

import keras
import pytest
from keras import layers

from kd_keras.models import build_model
from kd_keras.models.__main__ import README_END, README_START, main, replace_readme_block
from kd_keras.models.profile import count_macs, count_params


def test_tiny_model_by_hand():
    inputs = keras.Input((16, 16, 4))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)  # 16*16*8 outputs * 3*3*4 = 73,728
    x = layers.BatchNormalization()(x)  # not counted
    x = layers.Conv2D(8, 3, strides=2, padding="same", groups=2, name="grouped")(x)  # 8*8*8 * 3*3*(8/2) = 18,432
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)  # valid: 6*6*16 outputs * 3*3 = 5,184
    x = layers.SeparableConv2D(4, 3, padding="same", name="sep")(x)  # 6*6*16*9 + 6*6*16*4 = 5,184 + 2,304
    x = layers.Conv2DTranspose(2, 2, strides=2, name="up")(x)  # each of 6*6*4 inputs * 2*2*2 = 1,152
    x = layers.GlobalAveragePooling2D()(x)  # not counted
    outputs = layers.Dense(10)(x)  # 2*10 = 20
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == 73_728 + 18_432 + 5_184 + 5_184 + 2_304 + 1_152 + 20


def test_nested_shared_and_sequential():
    block = keras.Sequential([keras.Input((8, 8, 2)), layers.Conv2D(3, 1)], name="block")  # 8*8*3*2 = 384
    assert count_macs(block) == 384
    inputs = keras.Input((8, 8, 2))
    shared = layers.Conv2D(2, 3, padding="same", name="shared")  # 8*8*2*3*3*2 = 2,304 per call
    x = shared(shared(inputs))
    x = block(x)
    x = layers.Reshape((64, 3))(x)
    outputs = layers.Dense(5)(x)  # applied at 64 positions: 64*3*5 = 960
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == 2 * 2_304 + 384 + 960


def test_dynamic_input_size_is_refused():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.Conv2D(2, 3)(inputs), name="dyn")
    with pytest.raises(ValueError, match="dynamic spatial size"):
        count_macs(model)


def test_count_params_trainable_and_all():
    inputs = keras.Input((4, 4, 3))
    x = layers.Conv2D(5, 3, use_bias=False)(inputs)  # 135
    x = layers.BatchNormalization()(x)  # 10 trainable + 10 moving statistics
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))  # 2*2*5*2 + 2 = 42
    assert count_params(model) == 135 + 10 + 42
    assert count_params(model, trainable=False) == 135 + 20 + 42


def _mobilenet_macs_by_hand() -> int:
    size, channels = 112, 32
    macs = size * size * 32 * 3 * 3 * 3  # 3x3 stride-2 conv, 224 -> 112
    for out, stride in (
        [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
        + [(512, 1)] * 5
        + [
            (1024, 2),
            (1024, 1),
        ]
    ):
        size //= stride
        macs += size * size * channels * 9 + size * size * channels * out  # depthwise 3x3 + pointwise 1x1
        channels = out
    return macs + 1024 * 1000


def _resnet50_v1_macs_by_hand() -> int:
    size = 112
    macs = size * size * 64 * 7 * 7 * 3  # 7x7 stride-2 conv
    size, channels = 56, 64  # 3x3 stride-2 max pool
    for filters, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for b in range(blocks):
            size //= stride if b == 0 else 1
            if b == 0:
                macs += size * size * channels * 4 * filters  # projection shortcut (strided 1x1)
            macs += size * size * channels * filters  # 1x1 (strided in v1)
            macs += size * size * filters * filters * 9  # 3x3
            macs += size * size * filters * 4 * filters  # 1x1 expand
            channels = 4 * filters
    return macs + 2048 * 1000


def test_known_figures_mobilenet_and_resnet50():
    mobilenet = keras.applications.MobileNet(weights=None, input_shape=(224, 224, 3))
    assert count_macs(mobilenet) == _mobilenet_macs_by_hand() == 568_740_352
    assert abs(count_macs(mobilenet) - 569e6) / 569e6 < 0.001  # Howard et al., Table 8
    assert count_params(mobilenet) == 4_231_976  # also the imgclsmob / paper count ("4.2 million")
    keras.backend.clear_session()
    resnet50 = build_model("resnet50", input_shape=(224, 224, 3), num_classes=1000)
    assert count_macs(resnet50) == _resnet50_v1_macs_by_hand() == 3_857_973_248
    assert abs(count_macs(resnet50) - 3.8e9) / 3.8e9 < 0.02  # He et al., Table 1 (two digits)


def test_cli_lists_models(capsys):
    assert main(["--size", "32", "--channels", "1", "--classes", "2", "simple10", "vgg16_d4"]) == 0
    out = capsys.readouterr().out
    simple10 = build_model("simple10", input_shape=(32, 32, 1), num_classes=2)
    assert "input 32x32x1, 2 classes" in out
    line = next(row for row in out.splitlines() if row.startswith("simple10"))
    assert f"{count_params(simple10):,}" in line and "student" in line
    assert any(row.startswith("vgg16_d4") for row in out.splitlines())


def test_cli_markdown_and_readme(tmp_path, capsys):
    assert main(["--markdown", "--size", "32", "simple10", "densenet40"]) == 0
    table = capsys.readouterr().out
    rows = [row for row in table.splitlines() if row.startswith("| `")]
    assert [row.split("|")[1].strip() for row in rows] == ["`densenet40`", "`simple10`"]
    assert "| densenet | student | 2,374,792 | equal |" in rows[0]  # study 004's count at 1000 classes
    assert "DenseNet-161" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nafter\n")
    assert main(["--markdown", "--size", "32", "--readme", str(readme), "simple10"]) == 0
    text = readme.read_text()
    assert "old table" not in text and "`simple10`" in text
    assert text.startswith("intro\n") and text.endswith(f"{README_END}\nafter\n")
    unmarked = tmp_path / "other.md"
    unmarked.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        replace_readme_block(unmarked, "table")


def test_cli_unknown_model(capsys):
    assert main(["no_such_net"]) == 2
    assert "unknown model 'no_such_net'" in capsys.readouterr().err


def test_profile_zoo_row_counts_match_model():
    from kd_keras.models.__main__ import profile_zoo

    (row,) = profile_zoo(size=64, channels=3, classes=10, names=["vgg16_d4"])
    model = build_model("vgg16_d4", input_shape=(64, 64, 3), num_classes=10)
    assert (row.params, row.macs, row.role, row.family) == (count_params(model), count_macs(model), "student", "vgg")


# --- Per-operator time of exported files (kd_keras.export.profile, issue 20) ---


def test_onnx_profile_events_are_summed_by_op_type_and_node():
    from kd_keras.export.profile import aggregate_onnx_events, op_table

    events = [
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 3000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_fence_before", "dur": 999, "args": {"op_name": "Conv"}},  # not a kernel
        {"cat": "Node", "name": "conv2_kernel_time", "dur": 1000, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "t1_kernel_time", "dur": 4000, "args": {"op_name": "Transpose"}},
        {"cat": "Session", "name": "model_run", "dur": 9000},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 2000, "args": {"op_name": "Conv"}},  # second batch
    ]
    profile = aggregate_onnx_events(events, num_batches=2)
    assert profile["kernel_ms_per_batch"] == pytest.approx(5.0)  # (3 + 1 + 4 + 2) ms over 2 batches
    assert list(profile["by_op_type"]) == ["Conv", "Transpose"]  # 3.0 ms then 2.0 ms per batch
    assert profile["by_op_type"]["Conv"] == {"ms": pytest.approx(3.0), "nodes": 2, "share": pytest.approx(0.6)}
    assert [(n["node"], n["ms"]) for n in profile["by_node"]] == [("conv1", 2.5), ("t1", 2.0), ("conv2", 0.5)]
    assert "| Conv | 2 | 3.00 | 60.0% |" in op_table(profile)
    with pytest.raises(ValueError, match="num_batches"):
        aggregate_onnx_events(events, 0)


def test_onnx_profile_of_a_real_model_adds_up(tmp_path):
    from kd_keras.export.onnx_format import convert_onnx
    from kd_keras.export.profile import profile_onnx

    model = build_model("mobilenet_wd4", input_shape=(32, 32, 1), num_classes=2)
    profile = profile_onnx(convert_onnx(model, tmp_path / "m.onnx"), batch_size=2, num_batches=3, warmup=1,
                           threads=1)
    assert "Conv" in profile["by_op_type"] and profile["kernel_ms_per_batch"] > 0
    assert sum(entry["share"] for entry in profile["by_op_type"].values()) == pytest.approx(1.0)
    assert profile["wall_ms_per_batch"] >= 0.5 * profile["kernel_ms_per_batch"]


@pytest.mark.slow
def test_litert_segments_add_up_to_the_whole_model():
    from kd_keras.export.profile import profile_litert_segments, segment_table

    model = build_model("mobilenet_wd4", input_shape=(32, 32, 1), num_classes=2)
    segments = profile_litert_segments(model, ["stage2"], batch_size=2, repeats=3, threads=1)
    assert [s["segment"] for s in segments["segments"]] == ["input -> stage2", "stage2 -> logits"]
    assert sum(s["ms"] for s in segments["segments"]) == pytest.approx(segments["total_ms"])
    assert "| whole model |" in segment_table(segments)
