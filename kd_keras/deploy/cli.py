"""``kd-keras predict MODEL INPUT... [--out DIR]``: flag the B-scans of interest in whole OCT volumes.

Runs with the edge runtime alone (no TensorFlow or Keras is imported). Exit status: 0 every volume scored;
2 a problem the user can fix: the model or its sidecar (nothing scored), or at least one volume (one line each,
naming the file; the other volumes are still scored and written).

Example:

```
kd-keras predict export/mobilenet_wd4_int8.tflite eye1.tiff eye2/ eye3.dcm --out predictions --threshold 0.3
```
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["predict_main", "predict_parser"]


def predict_parser() -> argparse.ArgumentParser:
    """The parser of ``kd-keras predict``."""
    parser = argparse.ArgumentParser(
        prog="kd-keras predict",
        description="Flag the B-scans of interest in OCT volumes with an exported student (.tflite or .onnx and "
                    "its JSON sidecar), using LiteRT / ONNX Runtime only. The preprocessing comes from the sidecar.",
        epilog="Volumes: a folder of B-scan images (natural sort order), a multi-page .tif/.tiff, a .npy/.npz "
               "stack (B-scans, H, W[, C]), a DICOM multi-frame file (needs pydicom: pip install "
               '"kd-keras[dicom]"). Writes predictions.csv, predictions.json, summary.txt and <volume>.png.',
    )
    parser.add_argument("model", metavar="MODEL", help="exported .tflite or .onnx file (sidecar MODEL.json beside it)")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="one volume each")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="operating point on the B-scan score (default: the sidecar's)")
    parser.add_argument("--min-flagged", type=int, default=1, metavar="N",
                        help="a volume is flagged when at least N of its B-scans are (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="B-scans per runtime call (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime (default: its own)")
    parser.add_argument("--no-pictures", action="store_true", help="skip the per-volume thumbnail pictures")
    parser.add_argument("--tile-width", type=int, default=80, help="thumbnail width in the pictures (default 80)")
    parser.add_argument("--columns", type=int, default=16, help="thumbnails per row in the pictures (default 16)")
    return parser


def predict_main(argv: Sequence[str]) -> int:
    """``kd-keras predict ...``; returns the exit status."""
    from kd_keras.deploy.outputs import summary_lines
    from kd_keras.deploy.predict import predict_volumes
    from kd_keras.deploy.predictor import ModelError, Predictor

    args = predict_parser().parse_args(list(argv))
    if args.batch_size < 1 or args.tile_width < 8 or args.columns < 1:
        print("error: --batch-size and --columns must be at least 1, --tile-width at least 8", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model, threshold=args.threshold, min_flagged=args.min_flagged,
                              batch_size=args.batch_size, num_threads=args.threads)
    except ModelError as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2

    def report(result) -> None:
        if not result.ok:
            print(f"error: {result.error}", file=sys.stderr)

    try:
        results = predict_volumes(predictor, args.inputs, out_dir=args.out, pictures=not args.no_pictures,
                                  tile_width=args.tile_width, columns=args.columns, on_result=report)
    except OSError as error:
        print(f"error: {args.out}: cannot write the outputs ({error.strerror or error})", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(results, f"{predictor.path.name}: {predictor.rule}", predictor.min_flagged)))
    if not predictor.preprocess_recorded:
        print(f"note: {predictor.path.name}'s sidecar has no preprocessing record (exported before it existed): "
              "resize and channels only; re-export with export_model(..., preprocess=...) to apply CLAHE/crop")
    print(f"outputs: {args.out}/predictions.csv, predictions.json, summary.txt"
          + ("" if args.no_pictures else ", <volume>.png"))
    return 0 if all(r.ok for r in results) else 2
