"""The ``kd-keras export`` and ``kd-keras latency`` commands (also ``export/export_student.py`` and
``export/benchmark_latency.py``).

``kd-keras export``: Export a student ``.keras`` file to TFLite / ONNX with parity proven on real images.

Thin command line over :func:`kd_keras.export.export_model` (the main experiment calls that function directly).

Examples:

```bash
# fp32 TFLite + ONNX, parity on 100 labelled validation images per class
kd-keras export runs/oct/student.keras --out runs/oct/export \
    --parity-dir data/OCT2017/val --parity-per-class 100

# every variant; int8 calibrated on 200 training images; accept 98% int8 decision agreement explicitly
kd-keras export runs/oct/student.keras --out runs/oct/export --variants all \
    --parity-dir data/OCT2017/val --representative-dir data/OCT2017/train --representative-count 200 \
    --class-names CNV DME DRUSEN NORMAL --accept-agreement 0.98
```

Exit status 0 when every file passed parity, 1 when one failed (files renamed ``.failed``), 2 for bad input.

``kd-keras latency``: Per-volume latency of a teacher and students in Keras, LiteRT and ONNX Runtime.

Thin command line over :mod:`kd_keras.export.latency`. Targets are zoo names (built untrained at
``--image-size``) or ``.keras`` / ``.tflite`` / ``.onnx`` paths. Writes ``<out>.json`` (every timing, the
conditions and this command), ``<out>.md`` (the table) and ``<out>.png`` (the plot), and prints the table.

Example (the figures in docs/latency.md):

```bash
kd-keras latency resnet50 squeezenet_v1_1 squeezeresnet_v1_1 sqnxt23_w1 mobilenet_w1 \
    mobilenetv2_w1 fdmobilenet_w1 shufflenet_g1_w1 shufflenetv2_w1 --teacher resnet50 \
    --runtimes litert onnxruntime --num-images 128 --threads 2 --repeats 5 --out docs/latency/cpu_224
```
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kd_keras.export import EXPORT_VARIANTS, ExportParityError, export_model, images_from_folders, load_keras_model
from kd_keras.export.latency import RUNTIME_SUFFIX, benchmark, markdown_table, write_outputs

__all__ = ["export_main", "latency_main"]


def _parse_export(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="student .keras file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--variants", nargs="+", default=["tflite_fp32", "onnx"],
                        help=f"any of {', '.join(EXPORT_VARIANTS)}, or 'all'")
    parity = parser.add_mutually_exclusive_group(required=True)
    parity.add_argument("--parity-dir", help="labelled real images, one sub-folder per class")
    parity.add_argument("--parity-npz", help=".npz with 'images' (N,H,W,C) [0,255] and optional 'labels'")
    parser.add_argument("--parity-per-class", type=int, default=100, help="parity images per class folder")
    parser.add_argument("--representative-dir", help="training images (sub-folders) for int8 calibration")
    parser.add_argument("--representative-npz", help=".npz with 'images' for int8 calibration")
    parser.add_argument("--representative-count", type=int, default=200, help="calibration images")
    parser.add_argument("--class-names", nargs="+", help="class names in logit order (default: parity folders)")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold of a binary model")
    parser.add_argument("--accept-agreement", type=float, default=None,
                        help="explicitly accept a decision agreement below 0.99 for fp16/dynamic/int8 files")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--threads", type=int, default=None, help="LiteRT / ONNX Runtime threads for parity")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the image samples")
    return parser.parse_args(argv)


def _npz(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        data = np.load(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read .npz ({error})") from None
    if "images" not in data:
        raise ValueError(f"{path}: no 'images' array (found {list(data.keys())})")
    return data["images"], data["labels"] if "labels" in data else None


def export_main(argv: Sequence[str] | None = None) -> int:
    args = _parse_export(argv)
    variants = list(EXPORT_VARIANTS) if args.variants == ["all"] else args.variants
    try:
        model = load_keras_model(args.model)
        height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
        class_names = args.class_names
        if args.parity_dir:
            images, labels, folder_names = images_from_folders(
                args.parity_dir, (height, width), channels, args.parity_per_class, seed=args.seed,
                class_names=class_names)
            class_names = class_names or folder_names
            if len(class_names) == 2 and int(model.outputs[0].shape[-1]) > 2:
                raise ValueError(f"{args.parity_dir}: 2 class folders for a model with "
                                 f"{model.outputs[0].shape[-1]} logits")
        else:
            images, labels = _npz(args.parity_npz)
        representative = None
        if args.representative_dir:
            folders = [p for p in Path(args.representative_dir).iterdir() if p.is_dir()]
            per_class = -(-args.representative_count // max(len(folders), 1))
            representative, _, _ = images_from_folders(args.representative_dir, (height, width), channels,
                                                       per_class, seed=args.seed + 1)
            representative = representative[: args.representative_count]
        elif args.representative_npz:
            representative = _npz(args.representative_npz)[0][: args.representative_count]
        files = export_model(
            model, args.out, parity_images=images, parity_labels=labels, variants=variants,
            representative_images=representative, class_names=class_names, threshold=args.threshold,
            stem=Path(args.model).stem, min_agreement=args.accept_agreement, opset=args.opset,
            batch_size=args.batch_size, num_threads=args.threads, source_path=args.model)
    except ExportParityError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for exported in files:
        p = exported.parity
        line = (f"{exported.path}: {p.variant} ({p.runtime}) max rel diff {p.max_relative_diff:.2e}, "
                f"decision agreement {p.decision_agreement:.2%}")
        if p.accuracy_change is not None:
            line += f", accuracy change {p.accuracy_change:+.4f}"
        if p.auc_change is not None:
            line += f", AUC change {p.auc_change:+.4f}"
        print(line)
    return 0


def _parse_latency(argv):
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


def latency_main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse_latency(argv)
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
    command = "kd-keras latency " + " ".join(shlex.quote(a) for a in argv)
    paths = write_outputs(results, args.out, command=command, extra={"load_average_at_start": load_at_start})
    print(markdown_table(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any(r.error for r in results) else 0
