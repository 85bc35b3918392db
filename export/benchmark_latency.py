"""Per-volume latency of a teacher and students in Keras, LiteRT and ONNX Runtime.

Thin command line over :mod:`kd_keras.export.latency`. Targets are zoo names (built untrained at
``--image-size``) or ``.keras`` / ``.tflite`` / ``.onnx`` paths. Writes ``<out>.json`` (every timing, the
conditions and this command), ``<out>.md`` (the table) and ``<out>.png`` (the plot), and prints the table.

Example (the figures in docs/latency.md):

```bash
python export/benchmark_latency.py resnet50 squeezenet_v1_1 squeezeresnet_v1_1 sqnxt23_w1 mobilenet_w1 \
    mobilenetv2_w1 fdmobilenet_w1 shufflenet_g1_w1 shufflenetv2_w1 --teacher resnet50 \
    --runtimes litert onnxruntime --num-images 128 --threads 2 --repeats 5 --out docs/latency/cpu_224
```
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from kd_keras.export.latency import RUNTIME_SUFFIX, benchmark, markdown_table, write_outputs  # noqa: E402


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="zoo names or .keras/.tflite/.onnx paths")
    parser.add_argument("--teacher", default="resnet50", help="speed-ups are over this target ('none': no ratios)")
    parser.add_argument("--runtimes", nargs="+", choices=sorted(RUNTIME_SUFFIX), default=None,
                        help="default: keras, litert, onnxruntime (+ keras-gpu, onnxruntime-cuda on a GPU)")
    parser.add_argument("--num-images", type=int, default=128, help="images per volume")
    parser.add_argument("--batch-size", type=int, default=16, help="images per call in every runtime")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per runtime (0: runtime default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed volumes first")
    parser.add_argument("--repeats", type=int, default=5, help="timed volumes")
    parser.add_argument("--image-size", type=int, default=224, help="input side for zoo names")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3), help="input channels for zoo names")
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--work-dir", default=None, help="keep converted files here (default: temporary)")
    parser.add_argument("--out", default="latency", help="output stem: <out>.json, <out>.md, <out>.png")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    teacher = None if args.teacher.lower() == "none" else args.teacher
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        results = benchmark(
            args.targets, teacher=teacher, runtimes=args.runtimes, num_images=args.num_images,
            batch_size=args.batch_size, threads=args.threads or None, warmup=args.warmup, repeats=args.repeats,
            input_shape=(args.image_size, args.image_size, args.channels), num_classes=args.num_classes,
            work_dir=args.work_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python export/benchmark_latency.py " + " ".join(shlex.quote(a) for a in argv)
    paths = write_outputs(results, args.out, command=command, extra={"load_average_at_start": load_at_start})
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
