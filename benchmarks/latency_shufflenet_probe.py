"""Where ShuffleNetV2's LiteRT time goes: the network against copies of it with one kind of layer taken out.

LiteRT's Python API has no per-operator profiler (XNNPACK runs the graph as one delegate node), so this measures
by subtraction: ``shufflenetv2_w1`` (224x224x3, untrained: timing does not depend on the weights) is converted
to fp32 TFLite as it is and with one kind of layer replaced by a no-op, and all files are timed in the same
interleaved rounds (:func:`kd_keras.export.latency_compare.interleaved_latency`). The variants are **not** the
same network: each is an upper bound of what any exact rewrite of that layer kind could gain.

- ``no channel shuffle``: :class:`~kd_keras.models.shufflenet.ChannelShuffle` returns its input (the reshape ->
  transpose -> reshape of every unit gone);
- ``no depthwise``: every 3x3 depthwise convolution becomes the identity (stride 1) or a 1x1 max-pool of stride
  2 (a subsample: the shapes stay).

Usage (repository root)::

    python benchmarks/latency_shufflenet_probe.py --work /tmp/sv2_probe --out docs/latency/shufflenet_probe
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _variants():
    from keras import layers

    from kd_keras.models import shufflenet, shufflenetv2

    def no_depthwise(x, strides, name):
        return x if strides == 1 else layers.MaxPooling2D(1, strides=strides, name=name)(x)

    return {
        "original": {},
        "no channel shuffle": {(shufflenet.ChannelShuffle, "call"): lambda self, x: x},
        "no depthwise": {(shufflenetv2, "depthwise_conv3x3"): no_depthwise},
    }


def _convert(label: str, patches: dict, work: Path, size: int) -> Path:
    import keras

    from kd_keras.export.tflite import convert_tflite
    from kd_keras.models import build_model

    path = work / f"{label.replace(' ', '_')}.tflite"
    if path.is_file():
        return path
    saved = {key: getattr(*key) for key in patches}
    try:
        for (owner, attribute), value in patches.items():
            setattr(owner, attribute, value)
        keras.utils.set_random_seed(0)
        convert_tflite(build_model("shufflenetv2_w1", input_shape=(size, size, 3), num_classes=2), path, "fp32")
    finally:
        for (owner, attribute), value in saved.items():
            setattr(owner, attribute, value)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="converted files (reused when present)")
    parser.add_argument("--out", default="docs/latency/shufflenet_probe")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from kd_keras.export.latency_compare import Setting, interleaved_latency, settings_table
    from kd_keras.export.latency_report import conditions

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    settings = [Setting(label, _convert(label, patches, work, args.size), "litert", batch_size=args.batch_size,
                        threads=args.threads) for label, patches in _variants().items()]
    rows = interleaved_latency(settings, num_images=args.num_images, repeats=args.repeats)
    record = {"command": "python benchmarks/latency_shufflenet_probe.py " + " ".join(sys.argv[1:] if argv is None
                                                                                     else argv),
              "conditions": conditions(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    load = f"load average {rows[0]['load_before'][0]:.1f} -> {rows[0]['load_after'][0]:.1f}"
    text = (f"shufflenetv2_w1, LiteRT fp32, {args.threads} threads, {args.num_images} images per volume at "
            f"{args.size} px, batch {args.batch_size}, median of {args.repeats} interleaved rounds, {load}\n\n"
            + settings_table(rows) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
