#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): smoke and quick presets on one GPU and on all GPUs, float32 and
# mixed precision, per-volume latency in Keras and ONNX Runtime CUDA -> docs/gpu.md. Without a GPU it says so
# and runs on 2 logical CPU devices. Arguments are passed on (e.g. --presets smoke, --plan).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
