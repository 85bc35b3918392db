""":func:`predict_volumes`: score several OCT volumes with one exported student and write every output.

Example:

```python
from kd_keras.deploy import predict_volumes

results = predict_volumes("export/mobilenet_wd4_int8.tflite", ["eye1.tiff", "eye2/", "eye3.dcm"], out_dir="pred")
for result in results:
    print(result.name, result.error or result.flagged_indices)
```
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kd_keras.deploy.outputs import draw_strip, summary_lines, write_csv, write_json
from kd_keras.deploy.predictor import Predictor, VolumeResult
from kd_keras.deploy.volumes import VolumeError, read_volume

__all__ = ["predict_volumes"]


def _unique_names(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct, file-name-safe name per input (``eye``, ``eye-2`` when two inputs share a stem)."""
    names, seen = [], {}
    for item in inputs:
        path = Path(item)
        base = re.sub(r"[^\w.-]+", "_", (path.name if path.is_dir() else path.stem) or "volume")
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


def predict_volumes(
    model: str | os.PathLike | Predictor,
    inputs: Sequence[str | os.PathLike],
    *,
    out_dir: str | os.PathLike | None = None,
    threshold: float | None = None,
    min_flagged: int = 1,
    batch_size: int = 32,
    num_threads: int | None = None,
    pictures: bool = True,
    tile_width: int = 80,
    columns: int = 16,
    on_result: Callable[[VolumeResult], None] | None = None,
) -> list[VolumeResult]:
    """Flag the B-scans of interest in each volume with an exported student, using the edge runtime alone.

    Args:
        model: a ``.tflite``/``.onnx`` file exported by kd-keras (its sidecar beside it), or a :class:`Predictor`.
        inputs: volumes, one per item: folder of B-scans, multi-page TIFF, ``.npy``/``.npz``, DICOM.
        out_dir: where to write ``predictions.csv``, ``predictions.json``, ``summary.txt`` and one
            ``<volume>.png`` per volume (``None``: write nothing).
        threshold: operating point on the flag score (default: the sidecar's).
        min_flagged: a volume is flagged when at least this many of its B-scans are.
        batch_size: B-scans per runtime call.
        num_threads: CPU threads for the runtime.
        pictures: draw the thumbnail strip of each volume (needs ``out_dir``).
        tile_width: thumbnail width in the picture, pixels.
        columns: thumbnails per row of the picture.
        on_result: called with each volume's result as soon as it is ready (progress, streaming).

    Returns:
        One :class:`VolumeResult` per input, in order; a bad volume has ``error`` set (one line naming the file)
        and the others are still scored.

    Raises:
        ModelError: the model or its sidecar cannot be used (nothing is scored).

    Example:
        >>> results = predict_volumes("student_fp32.tflite", ["eye1.npy", "eye2/"], out_dir="predictions")
        >>> [r.decision for r in results]
        [True, False]
    """
    predictor = model if isinstance(model, Predictor) else Predictor(
        model, threshold=threshold, min_flagged=min_flagged, batch_size=batch_size, num_threads=num_threads)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for item, name in zip(inputs, _unique_names(inputs), strict=True):
        start = time.perf_counter()
        try:
            volume = read_volume(item, name=name)
        except VolumeError as error:
            result = VolumeResult(name, str(item), error=str(error))
        else:
            read_seconds = time.perf_counter() - start
            result = predictor.predict_volume(volume)
            if result.ok:
                result.seconds["read"] = read_seconds
                result.seconds["total"] += read_seconds
                if out is not None and pictures:
                    draw_strip(volume.frames, result, out / f"{name}.png", tile_width=tile_width, columns=columns,
                               rule=f"{predictor.path.name}: {predictor.rule}")
            del volume
        results.append(result)
        if on_result is not None:
            on_result(result)
    if out is not None:
        describe = predictor.describe()
        write_csv(results, predictor.class_names, out / "predictions.csv")
        write_json(results, describe, out / "predictions.json")
        lines = summary_lines(results, f"{predictor.path.name}: {predictor.rule}", predictor.min_flagged)
        (out / "summary.txt").write_text("\n".join(lines) + "\n")
    return results
