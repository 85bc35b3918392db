"""benchmarks/gpu_check.py without a GPU: it says so, plans the same configurations on 2 logical CPU devices
(mixed_bfloat16 for the mixed precision) and writes its table from each run's results.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up
_spec.loader.exec_module(gpu_check)


def test_the_plan_covers_one_and_all_devices_in_float32_and_mixed_precision(tmp_path):
    on_cpu = gpu_check.plan(["smoke", "quick"], gpus=0)
    assert len(on_cpu) == 8 and {c.precision for c in on_cpu} == {"float32", "mixed_bfloat16"}
    all_cpu = [c.command(tmp_path, 0) for c in on_cpu if c.devices == "all"]
    assert all("mirrored" in c and c[-2:] == ["--logical-cpu-devices", "2"] for c in all_cpu)
    on_gpus = gpu_check.plan(["smoke"], gpus=8)
    assert {c.precision for c in on_gpus} == {"float32", "mixed_float16"}
    one = [c.command(tmp_path, 8) for c in on_gpus if c.devices == "one"]
    assert all(c[c.index("--strategy") + 1] == "default" for c in one)
    assert "onnxruntime-cuda" in gpu_check.latency_command(tmp_path, 8, 3)
    assert "onnxruntime-cuda" not in gpu_check.latency_command(tmp_path, 0, 3)


def test_without_a_gpu_it_says_so_and_writes_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: 0)
    ran = []

    def fake_run(command, timeout):
        ran.append(command)
        out = Path(command[command.index("--out") + 1])
        if "run" in command:
            out.mkdir(parents=True)
            replicas = 2 if "mirrored" in command else 1
            (out / "results.json").write_text(json.dumps({
                "run": {"replicas": replicas},
                "students": {"s": {"runs": [{"test_auc": {"t": 0.5}}, {"test_auc": {"t": 0.75}}]}}}))
        else:
            out.with_suffix(".md").write_text("| model | s/volume |\n|---|---|\n| resnet50 | 1.0 |\n")
        return 0, 2.0, ""

    monkeypatch.setattr(gpu_check, "_run", fake_run)
    md = tmp_path / "gpu.md"
    assert gpu_check.main(["--presets", "smoke", "--out", str(tmp_path / "runs"), "--md", str(md)]) == 0
    assert "no GPU found" in capsys.readouterr().err
    assert len(ran) == 5
    text = md.read_text()
    assert "no GPU" in text and "| smoke | all | mixed_bfloat16 | 2 | 2 | 0.625 | ok |" in text
    assert "| resnet50 | 1.0 |" in text and "0.452 s for ResNet50" in text


@pytest.mark.parametrize("status", [1])
def test_a_failed_configuration_fails_the_check(tmp_path, monkeypatch, status):
    monkeypatch.setattr(gpu_check, "gpu_count", lambda: 0)
    monkeypatch.setattr(gpu_check, "_run", lambda command, timeout: (status, 1.0, "boom"))
    md = tmp_path / "gpu.md"
    assert gpu_check.main(["--presets", "smoke", "--no-latency", "--out", str(tmp_path), "--md", str(md)]) == 1
    assert "failed (1)" in md.read_text()
