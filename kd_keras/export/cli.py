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

Every precision, int8 calibrated on (and every file checked for parity against Keras on) images of a class-folder
set; ``--profile`` writes the per-operator profile instead (:mod:`kd_keras.export.profile`):

```bash
kd-keras latency resnet50 fdmobilenet_w1 --precisions fp32 fp16 dynamic int8 --images-dir data/val
kd-keras latency resnet50 shufflenetv2_w1 --profile --out docs/latency/op_profile
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

from kd_keras.cli_checks import (
    MODEL_SUFFIXES,
    CommandError,
    OneLineArgumentParser,
    at_least,
    fraction,
    model_file_problem,
    output_file_stem,
    output_folder,
)
from kd_keras.export import EXPORT_VARIANTS, ExportParityError, export_model, images_from_folders, load_keras_model
from kd_keras.export.latency import PRECISIONS, RUNTIME_SUFFIX, benchmark, best_table, markdown_table, write_outputs

__all__ = ["export_main", "latency_main"]


# ONNX opsets tf2onnx converts to (its OPSET_TO_IR_VERSION table) that ONNX Runtime runs.
ONNX_OPSETS = range(13, 19)


def _opset(text: str) -> int:
    value = at_least(ONNX_OPSETS.start)(text)
    if value not in ONNX_OPSETS:
        raise argparse.ArgumentTypeError(f"must be in [{ONNX_OPSETS.start}, {ONNX_OPSETS.stop - 1}], got {value}")
    return value


def _parse_export(argv):
    parser = OneLineArgumentParser(prog="kd-keras export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="student .keras file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--variants", nargs="+", default=["tflite_fp32", "onnx"],
                        help=f"any of {', '.join(EXPORT_VARIANTS)}, or 'all'")
    parity = parser.add_mutually_exclusive_group(required=True)
    parity.add_argument("--parity-dir", help="labelled real images, one sub-folder per class")
    parity.add_argument("--parity-npz", help=".npz with 'images' (N,H,W,C) [0,255] and optional 'labels'")
    parser.add_argument("--parity-per-class", type=at_least(1), default=100, help="parity images per class folder")
    parser.add_argument("--representative-dir", help="training images (sub-folders) for int8 calibration")
    parser.add_argument("--representative-npz", help=".npz with 'images' for int8 calibration")
    parser.add_argument("--representative-count", type=at_least(1), default=200, help="calibration images")
    parser.add_argument("--class-names", nargs="+", help="class names in logit order (default: parity folders)")
    parser.add_argument("--threshold", type=fraction, default=0.5, help="decision threshold of a binary model")
    parser.add_argument("--accept-agreement", type=fraction, default=None,
                        help="explicitly accept a decision agreement below 0.99 for fp16/dynamic/int8 files")
    parser.add_argument("--opset", type=_opset, default=17,
                        help=f"ONNX opset, {ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1}")
    parser.add_argument("--threads", type=at_least(1), default=None, help="LiteRT / ONNX Runtime threads for parity")
    parser.add_argument("--batch-size", type=at_least(1), default=32)
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


def _check_export(args, variants: list[str]) -> None:
    """Every option that can be checked without the model, before it is loaded (the speed of a refusal)."""
    problem = model_file_problem(args.model)
    if problem is None and Path(args.model).suffix != ".keras":
        problem = "expected a .keras model file (save the student with model.save('x.keras'))"
    if problem:
        raise CommandError(f"{args.model}: {problem}")
    unknown = [v for v in variants if v not in EXPORT_VARIANTS]
    if unknown:
        raise CommandError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(EXPORT_VARIANTS)} "
                           "or 'all'")
    for option, path, kind in (("--parity-dir", args.parity_dir, "folder"), ("--parity-npz", args.parity_npz, "file"),
                               ("--representative-dir", args.representative_dir, "folder"),
                               ("--representative-npz", args.representative_npz, "file")):
        if path is not None and not (Path(path).is_dir() if kind == "folder" else Path(path).is_file()):
            raise CommandError(f"{option} {path}: no such {kind}")
    if args.parity_dir and args.class_names:
        missing = [n for n in args.class_names if not (Path(args.parity_dir) / n).is_dir()]
        if missing:
            raise CommandError(f"--class-names: no folder {Path(args.parity_dir) / missing[0]} (with --parity-dir, "
                               "the class names are its class folders, in logit order)")
    output_folder(args.out)


def export_main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse_export(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    variants = list(EXPORT_VARIANTS) if args.variants == ["all"] else args.variants
    try:
        _check_export(args, variants)
        model = load_keras_model(args.model)
        height, width, channels = (int(d) for d in model.inputs[0].shape[1:])
        class_names = args.class_names
        logits = int(model.outputs[0].shape[-1])
        if class_names and len(class_names) != max(logits, 2):
            raise CommandError(f"--class-names: {len(class_names)} names for a model with {logits} logits")
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
    except OSError as error:  # a full disk, a folder without permission
        print(f"error: {error.filename or args.out}: cannot write ({error.strerror or error})", file=sys.stderr)
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
    parser = OneLineArgumentParser(prog="kd-keras latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="zoo names or .keras/.tflite/.onnx paths")
    parser.add_argument("--teacher", default="resnet50", help="speed-ups are over this target ('none': no ratios)")
    parser.add_argument("--runtimes", nargs="+", choices=sorted(RUNTIME_SUFFIX), default=None,
                        help="default: keras, litert, onnxruntime (+ keras-gpu, onnxruntime-cuda on a GPU)")
    parser.add_argument("--num-images", type=at_least(1), default=128, help="images per volume")
    parser.add_argument("--batch-size", nargs="+", default=["16"],
                        help="images per call: one number, or RUNTIME=N per runtime (e.g. litert=4 onnxruntime=16)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="precisions of the files timed (int8 needs --images-dir or uses smooth synthetic "
                             "images for calibration)")
    parser.add_argument("--images-dir", default=None,
                        help="class-folder images: int8 calibration (first half) and parity of every file (second)")
    parser.add_argument("--images-per-class", type=at_least(1), default=32,
                        help="images per class folder from --images-dir")
    parser.add_argument("--no-onnx-optimize", action="store_true",
                        help="time tf2onnx's graph as is (without kd_keras.export.onnx_optimize)")
    parser.add_argument("--profile", action="store_true",
                        help="per-operator profile (ONNX Runtime) and per-segment time (LiteRT) instead of timing")
    parser.add_argument("--threads", type=at_least(0), default=2, help="CPU threads per runtime (0: runtime default)")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="untimed volumes first")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed volumes")
    parser.add_argument("--image-size", type=at_least(32), default=224, help="input side for zoo names (>= 32)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3), help="input channels for zoo names")
    parser.add_argument("--num-classes", type=at_least(1), default=2)
    parser.add_argument("--work-dir", default=None, help="keep converted files here (default: temporary)")
    parser.add_argument("--out", default="latency", help="output stem: <out>.json, <out>.md, <out>.png")
    return parser.parse_args(argv)


def _batch_sizes(values: list[str]) -> int | dict[str, int]:
    if len(values) == 1 and values[0].isdigit():
        return int(values[0])
    sizes = {}
    for value in values:
        runtime, _, number = value.partition("=")
        if runtime not in RUNTIME_SUFFIX or not number.isdigit():
            raise ValueError(f"--batch-size {value}: expected N, or RUNTIME=N with RUNTIME one of "
                             f"{list(RUNTIME_SUFFIX)}")
        sizes[runtime] = int(number)
    return sizes


def _latency_images(args) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(calibration, parity images, parity labels) from --images-dir; smooth synthetic calibration for int8."""
    shape = (args.image_size, args.image_size, args.channels)
    if args.images_dir:
        images, labels, _ = images_from_folders(args.images_dir, shape[:2], shape[2], args.images_per_class)
        order = np.random.default_rng(0).permutation(len(images))
        half = len(order) // 2
        parity_labels = labels[np.sort(order[half:])] if labels.max() < max(args.num_classes, 2) else None
        return images[np.sort(order[:half])], images[np.sort(order[half:])], parity_labels
    if "int8" in args.precisions:
        from kd_keras.export.latency import smooth_images

        return smooth_images(64, shape), None, None
    return None, None, None


def _check_targets(targets: Sequence[str], teacher: str | None) -> None:
    """Each target (and the teacher) is a zoo name or a model file that is what its suffix says."""
    from kd_keras.models import list_models

    names = set(list_models())
    for option, target in [*(("target", t) for t in targets), *((("--teacher", teacher),) if teacher else ())]:
        if target in names:
            continue
        if Path(target).suffix.lower() in MODEL_SUFFIXES or os.sep in target or Path(target).exists():
            problem = model_file_problem(target)
            if problem:
                raise CommandError(f"{option} {target}: {problem}")
            continue
        raise CommandError(f"{option} {target!r}: not a zoo model name or a .keras/.tflite/.onnx file "
                           "(kd-keras zoo lists the names)")


def latency_main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse_latency(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    teacher = None if args.teacher.lower() == "none" else args.teacher
    try:
        _check_targets(args.targets, teacher)
        if args.images_dir is not None and not Path(args.images_dir).is_dir():
            raise CommandError(f"--images-dir {args.images_dir}: no such folder")
        if not args.profile:
            output_file_stem(args.out, (".json", ".md", ".png"))
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    command = "kd-keras latency " + " ".join(shlex.quote(a) for a in argv)
    try:
        if args.profile:
            from kd_keras.export.profile import profile_main

            return profile_main(args.targets, teacher, out=args.out, image_size=args.image_size,
                                channels=args.channels, num_classes=args.num_classes,
                                batch_size=int(args.batch_size[0]) if args.batch_size[0].isdigit() else 16,
                                threads=args.threads or None, command=command)
        calibration, parity_images, parity_labels = _latency_images(args)
        results = benchmark(
            args.targets, teacher=teacher, runtimes=args.runtimes, precisions=args.precisions,
            num_images=args.num_images, batch_size=_batch_sizes(args.batch_size), threads=args.threads or None,
            warmup=args.warmup, repeats=args.repeats, input_shape=(args.image_size, args.image_size, args.channels),
            num_classes=args.num_classes, calibration_images=calibration, parity_images=parity_images,
            parity_labels=parity_labels, onnx_optimize=not args.no_onnx_optimize, work_dir=args.work_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder without permission
        print(f"error: {error.filename or args.out}: cannot write ({error.strerror or error})", file=sys.stderr)
        return 2
    paths = write_outputs(results, args.out, command=command, extra={"load_average_at_start": load_at_start},
                          teacher=teacher)
    print(markdown_table(results))
    print()
    print(best_table(results, teacher))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any(r.error for r in results) else 0
