"""What ``kd-keras predict`` writes: a CSV row per B-scan, a JSON record per volume, a one-screen summary and a
picture per volume (a strip of B-scan thumbnails with their scores, flagged ones framed in red).

Example:

```python
from kd_keras.deploy.outputs import summary_lines, write_csv

write_csv(results, predictor.class_names, "predictions/predictions.csv")
print("\\n".join(summary_lines(results, predictor.rule)))
```
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from kd_keras.deploy.predictor import VolumeResult

__all__ = ["draw_strip", "summary_lines", "write_csv", "write_json"]

RED, GREEN, WHITE, GREY = (40, 40, 220), (60, 160, 60), (255, 255, 255), (90, 90, 90)  # BGR
FONT = cv2.FONT_HERSHEY_SIMPLEX


def write_csv(results: Sequence[VolumeResult], class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """One row per B-scan: volume, index, name, one probability per class, score, flagged (0/1)."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["volume", "bscan_index", "bscan_name", *(f"p_{name}" for name in class_names), "score",
                         "flagged"])
        for result in results:
            if not result.ok:
                continue
            for index, name in enumerate(result.bscan_names):
                writer.writerow([result.name, index, name, *(f"{p:.6f}" for p in result.probabilities[index]),
                                 f"{result.scores[index]:.6f}", int(result.flags[index])])
    return path


def write_json(results: Sequence[VolumeResult], model: dict[str, Any], path: str | os.PathLike) -> Path:
    """``{"model": ..., "volumes": [...]}``: per volume the flagged count, indices, decision, timings and every
    B-scan's probabilities; a volume that failed has its ``error`` line instead."""
    path = Path(path)
    record = {"model": model, "volumes": [r.to_dict(model["class_names"]) for r in results]}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _indices(indices: list[int], limit: int = 12) -> str:
    if not indices:
        return "-"
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... (+{len(indices) - limit})" if len(indices) > limit else "")


def summary_lines(results: Sequence[VolumeResult], rule: str, min_flagged: int = 1) -> list[str]:
    """The one-screen summary: a line per volume (B-scans, flagged count and indices, decision, time)."""
    width = max([len(r.name) for r in results] + [6])
    lines = [f"B-scan flag: {rule}; volume flagged when >= {min_flagged} B-scan(s) flagged",
             f"{'volume'.ljust(width)}  {'B-scans':>7}  {'flagged':>7}  {'decision':<8}  {'time':>8}  flagged B-scans"]
    for r in results:
        if not r.ok:
            lines.append(f"{r.name.ljust(width)}  {'-':>7}  {'-':>7}  {'ERROR':<8}  {'-':>8}  {r.error}")
            continue
        decision = "FLAGGED" if r.decision else "clear"
        lines.append(f"{r.name.ljust(width)}  {len(r.bscan_names):>7}  {len(r.flagged_indices):>7}  {decision:<8}  "
                     f"{r.seconds['total'] * 1e3:>6.0f}ms  {_indices(r.flagged_indices)}")
    done = [r for r in results if r.ok]
    if done:
        scans = sum(len(r.bscan_names) for r in done)
        inference = sum(r.seconds["inference"] for r in done)
        lines.append(f"{len(done)} volume(s), {scans} B-scans, {sum(bool(r.decision) for r in done)} flagged; "
                     f"inference {inference / max(scans, 1) * 1e3:.2f} ms per B-scan"
                     + (f"; {len(results) - len(done)} volume(s) FAILED" if len(done) < len(results) else ""))
    return lines


def _display(frame: np.ndarray) -> np.ndarray:
    """An 8-bit BGR copy of a B-scan for the picture (16-bit scaled, float clipped)."""
    if frame.dtype == np.uint16:
        frame = (frame.astype(np.float32) / 257.0).round()
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.shape[-1] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(frame[:, :, :3]), cv2.COLOR_RGB2BGR)


def draw_strip(frames: Sequence[np.ndarray], result: VolumeResult, path: str | os.PathLike, *,
               tile_width: int = 80, columns: int = 16, rule: str = "") -> Path:
    """Write the volume's picture: thumbnails in B-scan order, ``columns`` per row, each labelled with its index
    and score; flagged B-scans framed and labelled in red; a header with the volume's decision.

    Example:
        >>> draw_strip(volume.frames, result, "predictions/eye1.png", tile_width=64)
    """
    height, width = frames[0].shape[:2]
    tile_height = max(8, round(tile_width * height / width))
    label, pad, header = 14, 3, 34
    columns = max(1, min(columns, len(frames)))
    rows = -(-len(frames) // columns)
    cell_w, cell_h = tile_width + 2 * pad, tile_height + label + 2 * pad
    canvas = np.full((header + rows * cell_h, max(columns * cell_w, 360), 3), 255, np.uint8)
    decision = "FLAGGED" if result.decision else "clear"
    cv2.putText(canvas, f"{result.name}: {decision}, {len(result.flagged_indices)}/{len(frames)} B-scans flagged",
                (4, 14), FONT, 0.45, RED if result.decision else GREEN, 1, cv2.LINE_AA)
    cv2.putText(canvas, rule, (4, 29), FONT, 0.35, GREY, 1, cv2.LINE_AA)
    for index, frame in enumerate(frames):
        top = header + (index // columns) * cell_h
        left = (index % columns) * cell_w
        flagged = bool(result.flags[index])
        if flagged:
            canvas[top : top + cell_h, left : left + cell_w] = RED
        thumb = cv2.resize(_display(frame), (tile_width, tile_height), interpolation=cv2.INTER_AREA)
        canvas[top + pad : top + pad + tile_height, left + pad : left + pad + tile_width] = thumb
        cv2.putText(canvas, f"{index} {result.scores[index]:.2f}", (left + pad, top + pad + tile_height + label - 3),
                    FONT, 0.35, WHITE if flagged else GREY, 1, cv2.LINE_AA)
    path = Path(path)
    if not cv2.imwrite(str(path), canvas, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"{path}: OpenCV cannot write the picture")
    return path
