"""Bad input: what is skipped and reported, what is refused, and the report a run writes.

Every problem the data layer meets is one of three outcomes, never a silent drop and never a traceback from inside
``tf.data``:

- **skipped**: the file (or CSV row) is left out, and recorded in the :class:`DataReport` with its path and the
  problem; a one-line warning is logged the first time.
- **refused**: :class:`DataError` is raised before training, with one line ``"<path>: <problem>"``.
- **note**: the example is used, but something is worth knowing (a file that is its own patient because no
  patient rule matched it, byte-identical files, files that are not images and were not considered).

What happens to each kind (``PROBLEMS`` holds the wording; ``on_bad_file="raise"`` turns every per-file *skip* into
a *refusal*):

| kind | outcome |
| --- | --- |
| ``missing_file`` (CSV/list row naming a file that does not exist) | skipped |
| ``empty_file`` (0 bytes) | skipped |
| ``not_a_file`` (a folder or special file where an image was expected) | skipped |
| ``unreadable`` (permission denied, I/O error, dangling symlink) | skipped |
| ``not_image`` (content is not an image format, e.g. a text file named ``.jpeg``) | skipped |
| ``truncated`` (truncated or corrupt image data) | skipped |
| ``bad_image`` (decoded but unusable: unsupported pixel type or layout, preprocessing failed) | skipped |
| ``outside_root`` (``../``, an absolute path or a symlink leading out of the data root) | skipped |
| ``unknown_label`` / ``missing_label`` (CSV label not among the classes / blank) | skipped |
| ``duplicate_row`` (the same file twice with the same label) | later rows skipped |
| ``conflicting_labels`` (the same file with different labels) | all its rows skipped |
| ``no_class_folder`` (an image directly in the root of a class-folder tree) | skipped |
| ``empty_class`` (a class folder without images) | refused (``allow_empty_classes=True``: note) |
| ``bad_table`` (CSV without the named columns, no rows, ``.xls``; ``.npz`` without the arrays) | refused |
| ``no_images`` (a source that resolves to no usable example) | refused |
| ``ignored_file`` (hidden files, ``__MACOSX``, non-image suffixes, symlinked folders) | note |
| ``own_patient`` (no patient rule matched: the file is its own patient) | note |
| ``duplicate_content`` (byte-identical files; splits keep them together) | note |

CMYK JPEGs and 16-bit PNG/TIFF are not problems: :func:`kd_keras.data.preprocess.read_image` converts CMYK to RGB
and keeps 16-bit precision.

Example:

```python
from kd_keras.data.sources import from_class_folders
from kd_keras.data.validate import check_files

records = check_files(from_class_folders("chest_xray/train"), mode="decode")
print(records.report.format_summary())
records.report.write_json("runs/cxr/data_report.json")
```
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kd_keras.data.records import Records
from kd_keras.data.report import ACTIONS, PROBLEMS, DataError, DataReport, Problem, logger
from kd_keras.data.source_files import stat_problem

__all__ = [
    "ACTIONS",
    "CHECK_MODES",
    "PROBLEMS",
    "DataError",
    "DataReport",
    "Problem",
    "check_file",
    "check_files",
    "classify_read_error",
    "find_duplicate_files",
    "logger",
    "report_duplicates",
]

CHECK_MODES = ("exists", "header", "decode")

# --------------------------------------------------------------------------------------------------------------
# File checks
# --------------------------------------------------------------------------------------------------------------

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
          (b"MM\x00*", "TIFF"), (b"GIF8", "GIF"), (b"RIFF", "WebP"), (b"\x93NUMPY", "NPY"))
_PNG_END = b"IEND\xaeB`\x82"
_TAIL_BYTES = 4096


_JPEG_SOS, _JPEG_EOI = b"\xff\xda", b"\xff\xd9"
_PNG_MAX_CHUNKS = 100_000
# Stands in for scan data that a cut-off JPEG lost (no 0xFF byte, so no marker): see _jpeg_scan_problem.
_FILLER = bytes((np.random.default_rng(16).integers(0, 255, 2048, dtype=np.uint8) % 0xFF).tolist())


def _header_problem(path: str) -> tuple[str, str] | None:
    """Magic bytes; for JPEG an end-of-image marker after the last start-of-scan, for PNG an unbroken chain of
    chunks up to IEND (only chunk headers are read: a file cut off, or cut and given a new end, breaks it)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
            fmt = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
            if fmt is None or fmt == "NPY":
                return "not_image", "not an image (no known image signature)"
            if fmt == "JPEG":
                return _jpeg_end_problem(handle, tail)
            if fmt == "PNG":
                return _png_chunk_problem(handle, size)
    except OSError as error:
        return "unreadable", f"cannot read file ({error.strerror or error})"
    return None


def _jpeg_end_problem(handle, tail: bytes) -> tuple[str, str] | None:
    """Entropy-coded data cannot hold FFD9, so the last end-of-image marker must come after the last start of a
    scan. Only the last 4 KB are read, unless they hold no end marker (data appended after it, or a cut file)."""
    eoi, sos = tail.rfind(_JPEG_EOI), tail.rfind(_JPEG_SOS)
    if eoi < 0:
        handle.seek(0)
        data = handle.read()
        eoi, sos = data.rfind(_JPEG_EOI), data.rfind(_JPEG_SOS)
        if eoi < 0:
            return "truncated", "truncated JPEG (no end-of-image marker)"
    if sos > eoi:
        return "truncated", "truncated JPEG (no end-of-image marker after the last scan)"
    return None


def _png_chunk_problem(handle, size: int) -> tuple[str, str] | None:
    """Walks the chunk headers (length, type) from the signature to IEND, seeking over the data."""
    offset = 8
    for _ in range(_PNG_MAX_CHUNKS):
        handle.seek(offset)
        header = handle.read(8)
        if len(header) < 8:
            return "truncated", f"truncated PNG (file ends at byte {size} inside the chunk list, no IEND chunk)"
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if not kind.isalpha():
            return "truncated", f"truncated or corrupt PNG (no chunk header at byte {offset}: data cut off or " \
                                "overwritten)"
        end = offset + 12 + length
        if end > size:
            return "truncated", (f"truncated PNG (chunk {kind.decode('ascii')} at byte {offset} needs {length} "
                                 f"bytes; the file ends first)")
        if kind == b"IEND":
            return None
        offset = end
    return "bad_image", f"PNG with over {_PNG_MAX_CHUNKS} chunks"


def _jpeg_scan_problem(data: bytes) -> str | None:
    """A JPEG whose scan data ends before its last block, given an end marker (cut off and "repaired", or
    written by a tool that lost data), passes every marker check, and libjpeg decodes it with the missing blocks
    in grey and only a warning. Inserting filler bytes before the end marker shows it: a complete scan never
    reads them (the image is unchanged), a cut one decodes them as its missing blocks (the image changes)."""
    import io

    from PIL import Image

    sos = data.rfind(_JPEG_SOS)
    eoi = data.find(_JPEG_EOI, sos) if sos >= 0 else -1
    if eoi < 0:
        return None  # the marker checks report it

    def pixels(encoded: bytes) -> np.ndarray | None:
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                if not (image.info.get("progressive") or image.info.get("progression")):
                    # Sequential: the filler changes the missing blocks' DC terms, which a decode at 1/8 scale
                    # (libjpeg's DCT scaling: DC terms only, several times faster) shows. Progressive: full size.
                    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                return np.asarray(image)
        except Exception:  # noqa: BLE001 - a decoder failure here is not proof of a cut scan
            return None

    whole, padded = pixels(data), pixels(data[:eoi] + _FILLER + data[eoi:])
    if whole is None or padded is None or (whole.shape == padded.shape and np.array_equal(whole, padded)):
        return None
    return "truncated JPEG (the scan data ends before the last block; the decoder would fill the rest in grey)"


def _jpeg_restart_problem(data: bytes) -> str | None:
    """With restart markers (a DRI segment), the last scan must hold one marker per restart interval but the last:
    a scan cut after a marker decodes the same with or without filler (the decoder resynchronises on the end
    marker), so the markers are counted instead."""
    if b"\xff\xdd" not in data:  # no restart interval (FFDD cannot occur inside entropy-coded data)
        return None
    at, interval, frame, last = 2, 0, None, None
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
            continue
        length = int.from_bytes(data[at + 2: at + 4], "big")
        segment = data[at + 4: at + 2 + length]
        at += 2 + length
        if marker in (0xC0, 0xC1, 0xC2) and len(segment) >= 6:
            height, width, count = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big"), segment[5]
            frame = (height, width, {segment[6 + 3 * k]: (segment[7 + 3 * k] >> 4, segment[7 + 3 * k] & 15)
                                     for k in range(count) if 7 + 3 * k < len(segment)})
        elif marker == 0xDD and len(segment) >= 2:
            interval = int.from_bytes(segment[:2], "big")
        elif marker == 0xDA and segment:
            components = [segment[1 + 2 * k] for k in range(segment[0]) if 1 + 2 * k < len(segment)]
            markers = 0
            while True:  # over the entropy-coded data: stuffed FF00 and restart markers belong to the scan
                at = data.find(b"\xff", at)
                if at < 0 or at + 1 >= len(data):
                    at = len(data)
                    break
                following = data[at + 1]
                if following in (0x00, 0xFF):
                    at += 1 if following == 0xFF else 2
                elif 0xD0 <= following <= 0xD7:
                    markers += 1
                    at += 2
                else:
                    break
            last = (components, markers, interval)
    if frame is None or last is None or not last[2]:
        return None
    height, width, sampling = frame
    components, markers, interval = last
    if not sampling or any(c not in sampling for c in components):
        return None
    h_max, v_max = max(h for h, _ in sampling.values()), max(v for _, v in sampling.values())
    if len(components) == 1:  # a non-interleaved scan: one block per MCU
        h, v = sampling[components[0]]
        units = math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
    else:
        units = math.ceil(width / (8 * h_max)) * math.ceil(height / (8 * v_max))
    expected = math.ceil(units / interval) - 1
    if markers < expected:
        return (f"truncated JPEG (its last scan holds {markers} of {expected} restart markers: the scan data ends "
                "early)")
    return None


def _decode_problem(path: str) -> tuple[str, str] | None:
    from kd_keras.data.preprocess import ImageReadError, decode_image

    try:
        with open(path, "rb") as handle:
            data = handle.read()
        image = decode_image(data, path)
    except OSError as error:
        return "unreadable", f"cannot read file ({error.strerror or error})"
    except ImageReadError as error:
        return classify_read_error(error.problem), error.problem
    except Exception as error:  # noqa: BLE001 - any decoder failure is a skipped file, not a crash
        return "bad_image", f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ''}"
    if image.shape[0] < 1 or image.shape[1] < 1:
        return "bad_image", f"image has no pixels (shape {image.shape})"
    if data[:3] == b"\xff\xd8\xff":
        problem = _jpeg_restart_problem(data) or _jpeg_scan_problem(data)
        if problem is not None:
            return "truncated", problem
    return None


def classify_read_error(problem: str) -> str:
    """Maps the wording of an :class:`~kd_keras.data.preprocess.ImageReadError` to a report kind."""
    text = problem.lower()
    if "0 bytes" in text or "empty file" in text:
        return "empty_file"
    if "cannot read" in text:
        return "unreadable"
    if "not an image" in text:
        return "not_image"
    if "truncated" in text or "corrupt" in text:
        return "truncated"
    return "bad_image"


def check_file(path: str | os.PathLike, mode: str = "header") -> tuple[str, str] | None:
    """Checks one file: ``None`` when usable, else ``(kind, one-line problem)``.

    Args:
        path: the file.
        mode: ``"exists"`` (a non-empty regular file), ``"header"`` (also a known image signature; for JPEG an
            end-of-image marker after the last scan, for PNG an unbroken chain of chunks up to IEND), ``"decode"``
            (also decodes it fully with OpenCV, and proves a JPEG's scan data complete).

    Example:

    ```python
    check_file("CNV-1016042-1.jpeg", mode="decode")  # None, or ("truncated", "truncated JPEG ...")
    ```
    """
    if mode not in CHECK_MODES:
        raise ValueError(f"mode must be one of {CHECK_MODES}, got {mode!r}")
    path = os.fspath(path)
    problem = stat_problem(path)
    if problem is None and mode in ("header", "decode"):
        problem = _header_problem(path)
    if problem is None and mode == "decode":
        problem = _decode_problem(path)
    return problem


def check_files(
    records: Records,
    mode: str = "header",
    workers: int | None = None,
    on_bad_file: str = "skip",
) -> Records:
    """Checks every file of a source before training; bad files are skipped and reported, or refused.

    ``"header"`` reads 16 bytes and the last 4 KB of each file (fast enough for a pool of 500k files);
    ``"decode"`` decodes every image (what a labeled set or a test set deserves). Whatever a check misses is
    still caught by the pipeline at run time, skipped and reported, never raised inside ``tf.data``.

    Args:
        records: the source.
        mode: ``"exists"``, ``"header"`` or ``"decode"`` (see :func:`check_file`).
        workers: threads (OpenCV and file reads release the GIL); default ``min(8, cpu_count + 2)``.
        on_bad_file: ``"skip"`` (leave out and report) or ``"raise"`` (refuse: :class:`DataError` naming the
            first bad file, and how many there are).

    Returns:
        The records without the bad files (same report).

    Raises:
        DataError: ``on_bad_file="raise"`` and a file is bad, or no file is usable.

    Example:

    ```python
    records = check_files(from_folder("/data/oct_pool"), mode="header")
    ```
    """
    if on_bad_file not in ("skip", "raise"):
        raise ValueError(f"on_bad_file must be 'skip' or 'raise', got {on_bad_file!r}")
    if mode not in CHECK_MODES:
        raise ValueError(f"mode must be one of {CHECK_MODES}, got {mode!r}")
    if records.paths is None:
        return records  # array sources hold decoded pixels already
    n = len(records)
    paths = records.paths
    problems: list = [None] * n
    chunk = 2048

    def run(start: int):
        return start, [check_file(paths[i], mode) for i in range(start, min(n, start + chunk))]

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start, results in pool.map(run, range(0, n, chunk)):
            problems[start : start + len(results)] = results
    bad = [i for i, problem in enumerate(problems) if problem is not None]
    if bad and on_bad_file == "raise":
        kind, detail = problems[bad[0]]
        more = f" ({len(bad)} bad files in all)" if len(bad) > 1 else ""
        raise records.report.refuse(kind, paths[bad[0]], detail + more)
    for i in bad:
        kind, detail = problems[i]
        records.report.skip(kind, paths[i], detail)
    keep = np.ones(n, bool)
    keep[bad] = False
    if n and not keep.any():
        raise records.report.refuse("no_images", records.root or paths[0], f"none of the {n} files is usable")
    return records.subset(keep) if bad else records


def find_duplicate_files(paths) -> list[np.ndarray]:
    """Groups of byte-identical files (sizes first, then a BLAKE2 hash of equal-sized files only).

    Args:
        paths: file paths.

    Returns:
        A list of int arrays, each the positions (into ``paths``) of two or more identical files.

    Example:

    ```python
    groups = find_duplicate_files(records.paths)  # the Kermany chest X-rays hold 24 such groups
    ```
    """
    by_size: dict[int, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        try:
            by_size[os.stat(path).st_size].append(i)
        except OSError:
            continue
    by_hash: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for size, members in by_size.items():
        if len(members) < 2 or size == 0:
            continue
        for i in members:
            try:
                with open(paths[i], "rb") as handle:
                    digest = hashlib.blake2b(handle.read(), digest_size=16).digest()
            except OSError:
                continue
            by_hash[(size, digest)].append(i)
    return [np.asarray(group, np.int64) for group in by_hash.values() if len(group) > 1]


def report_duplicates(records: Records) -> list[np.ndarray]:
    """Finds byte-identical files in ``records``, notes each in its report (naming the other copies, and whether
    their labels disagree) and returns the groups (see :func:`find_duplicate_files`).

    Example:

    ```python
    groups = report_duplicates(records)
    print(records.report.counts()["notes_by_kind"].get("duplicate_content", 0))
    ```
    """
    if records.paths is None:
        return []
    groups = find_duplicate_files(records.paths)
    for group in groups:
        if records.task == "multilabel":
            labels = {tuple(records.labels[i].tolist()) for i in group}
        else:
            labels = {int(records.labels[i]) for i in group}
        disagree = " with DIFFERENT labels" if len(labels) > 1 else ""
        for i in group:
            others = ", ".join(os.path.basename(records.paths[j]) for j in group if j != i)
            records.report.note("duplicate_content", records.paths[i],
                                f"byte-identical to {others}{disagree}")
    return groups
