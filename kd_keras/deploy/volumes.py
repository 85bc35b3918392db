"""Reading OCT volumes for prediction: a folder of B-scans, a multi-page TIFF, a ``.npy``/``.npz`` stack, DICOM.

Every reader returns a :class:`Volume`: the B-scans as a list of ``(H, W, C)`` arrays of their native type
(``uint8``, ``uint16`` or float pixels on the [0, 255] scale), one name per B-scan, all of one size. Nothing here
resizes or equalises: that is :func:`kd_keras.data.preprocess.preprocess`, driven by the model's sidecar.

Only NumPy and OpenCV are needed; DICOM needs ``pydicom`` (``pip install "kd-keras[dicom]"``).

Example:

```python
from kd_keras.deploy import read_volume

volume = read_volume("patient_0042/")  # folder of B-scans, natural order: scan2.png before scan10.png
print(volume.name, len(volume.frames), volume.frames[0].shape)
```
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from kd_keras.data.preprocess import ImageReadError, read_image

__all__ = ["IMAGE_SUFFIXES", "Volume", "VolumeError", "natural_key", "read_volume"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
# Keys of a .npz holding several arrays that name the B-scan stack.
NPZ_KEYS = ("volume", "bscans", "images", "frames", "x")


class VolumeError(ValueError):
    """A volume that cannot be used; ``str(error)`` is one line: ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class Volume:
    """One OCT volume: ``frames[i]`` is B-scan ``i`` as ``(H, W, C)``, named ``names[i]``."""

    name: str
    path: Path
    format: str
    frames: list[np.ndarray] = field(repr=False)
    names: list[str]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of every B-scan."""
        return tuple(self.frames[0].shape)


def natural_key(name: str) -> list:
    """Sort key putting ``scan2`` before ``scan10`` (digit runs compared as numbers), case-insensitive."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _hwc(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def _stack_frames(path: Path, stack: np.ndarray, what: str) -> list[np.ndarray]:
    """Frames of an ``(N, H, W)`` or ``(N, H, W, C)`` array, checked for type and pixel range."""
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim not in (3, 4) or (stack.ndim == 4 and stack.shape[-1] not in (1, 3, 4)) or 0 in stack.shape:
        raise VolumeError(path, f"{what} has shape {stack.shape}; expected (B-scans, H, W) or (B-scans, H, W, C) "
                                "with C 1, 3 or 4")
    if stack.dtype.kind == "f":
        if not np.isfinite(stack).all():
            raise VolumeError(path, f"{what} holds NaN or infinite pixels")
        low, high = float(stack.min()), float(stack.max())
        if low < 0 or high > 255:
            raise VolumeError(path, f"{what} holds float pixels in [{low:g}, {high:g}]; float pixels must be on "
                                    "the [0, 255] scale (or store uint8/uint16)")
        stack = stack.astype(np.float32, copy=False)
    elif stack.dtype.kind in "iu" and stack.dtype not in (np.uint8, np.uint16):
        low, high = int(stack.min()), int(stack.max())
        if low < 0 or high > 65535:
            raise VolumeError(path, f"{what} holds {stack.dtype} pixels in [{low}, {high}]; expected uint8 or uint16")
        stack = stack.astype(np.uint16 if high > 255 or stack.dtype.itemsize > 1 else np.uint8)
    elif stack.dtype not in (np.uint8, np.uint16):
        raise VolumeError(path, f"{what} has pixel type {stack.dtype}; expected uint8, uint16 or float [0, 255]")
    return [_hwc(frame) for frame in stack]


def _read_folder(path: Path) -> tuple[list[np.ndarray], list[str]]:
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
    if not files:
        raise VolumeError(path, f"empty folder: no B-scan images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) inside")
    frames = []
    for file in files:
        try:
            frames.append(read_image(file))
        except ImageReadError as error:
            raise VolumeError(path, f"B-scan {file.name}: {error.problem}") from None
    return frames, [f.name for f in files]


def _tiff_page(page: np.ndarray) -> np.ndarray:
    """A page as OpenCV decodes it (BGR order) -> RGB ``(H, W, C)``, alpha dropped."""
    page = _hwc(page)
    if page.shape[-1] == 2:
        return np.ascontiguousarray(page[:, :, :1])
    if page.shape[-1] == 4:
        return cv2.cvtColor(page, cv2.COLOR_BGRA2RGB)
    if page.shape[-1] == 3:
        return cv2.cvtColor(page, cv2.COLOR_BGR2RGB)
    return page


def _read_tiff(path: Path) -> list[np.ndarray]:
    data = path.read_bytes()
    if not data:
        raise VolumeError(path, "empty file (0 bytes)")
    try:
        ok, pages = cv2.imdecodemulti(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "OpenCV error"
        raise VolumeError(path, f"OpenCV cannot decode this TIFF ({reason})") from None
    if not ok or not pages:
        raise VolumeError(path, "not a readable TIFF (OpenCV decodes no page)")
    if any(page.dtype not in (np.uint8, np.uint16) for page in pages):
        raise VolumeError(path, f"unsupported TIFF pixel type {pages[0].dtype} (8- and 16-bit pages are read)")
    return [_tiff_page(page) for page in pages]


def _read_numpy(path: Path) -> list[np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VolumeError(path, f"not a readable NumPy file ({reason})") from None
    if isinstance(loaded, np.ndarray):
        return _stack_frames(path, loaded, "the array")
    with loaded:
        keys = list(loaded.files)
        key = keys[0] if len(keys) == 1 else next((k for k in NPZ_KEYS if k in keys), None)
        if key is None:
            raise VolumeError(path, f"{len(keys)} arrays ({', '.join(keys) or 'none'}); store one array, or name the "
                                    f"B-scan stack one of {', '.join(NPZ_KEYS)}")
        try:
            stack = loaded[key]
        except ValueError as error:
            raise VolumeError(path, f"array {key!r} cannot be read ({str(error).splitlines()[0]})") from None
    return _stack_frames(path, stack, f"array {key!r}")


def _read_dicom(path: Path) -> list[np.ndarray]:
    try:
        import pydicom
    except ImportError:
        raise VolumeError(path, 'DICOM needs pydicom, which is not installed: pip install "kd-keras[dicom]"') from None
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for a bad or compressed file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VolumeError(path, f"pydicom cannot read its pixels ({reason})") from None
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
    if frames == 1:  # a single frame: (rows, cols[, samples]) -> one B-scan
        pixels = pixels[None]
    if samples == 1 and pixels.ndim == 3:
        pixels = pixels[..., None]
    if str(getattr(dataset, "PhotometricInterpretation", "")) == "MONOCHROME1":  # 0 is white: invert to 0 black
        top = (1 << int(getattr(dataset, "BitsStored", pixels.dtype.itemsize * 8))) - 1
        pixels = top - pixels
    return _stack_frames(path, np.asarray(pixels), "the pixel data")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def read_volume(path: str | os.PathLike, name: str | None = None) -> Volume:
    """Read one volume, whatever its format, into a :class:`Volume` of equally sized B-scans.

    Args:
        path: a folder of B-scan images (natural sort order of the file names), a multi-page TIFF, a ``.npy``
            array or ``.npz`` archive ``(B-scans, H, W[, C])`` (``uint8``, ``uint16``, or float on the [0, 255]
            scale), or a DICOM file (multi-frame ophthalmic tomography, or one frame; ``.dcm`` or any file with
            the ``DICM`` preamble).
        name: the volume's name in the outputs (default: the file or folder name without its suffix).

    Returns:
        The volume; ``frames`` keep their native type (16-bit stays 16-bit).

    Raises:
        VolumeError: missing, empty, unreadable or mixed-size volume; one line naming the file.

    Example:
        >>> volume = read_volume("eye.tiff")
        >>> len(volume.frames), volume.names[:2]
        (128, ['eye.tiff[0]', 'eye.tiff[1]'])
    """
    path = Path(path)
    try:
        if path.is_dir():
            frames, names = _read_folder(path)
            fmt = "folder"
        elif not path.is_file():
            raise VolumeError(path, "no such file or folder")
        else:
            suffix = path.suffix.lower()
            if suffix in TIFF_SUFFIXES:
                frames, fmt = _read_tiff(path), "tiff"
            elif suffix in (".npy", ".npz"):
                frames, fmt = _read_numpy(path), suffix[1:]
            elif _is_dicom(path):
                frames, fmt = _read_dicom(path), "dicom"
            else:
                raise VolumeError(path, "not a volume: expected a folder of B-scans, .tif/.tiff, .npy, .npz or DICOM")
            names = [f"{path.name}[{index}]" for index in range(len(frames))]
    except OSError as error:
        raise VolumeError(path, f"cannot read it ({error.strerror or error})") from None
    shapes = {frame.shape[:2] for frame in frames}
    if len(shapes) > 1:
        first = frames[0].shape[:2]
        odd = next(index for index, frame in enumerate(frames) if frame.shape[:2] != first)
        raise VolumeError(path, f"mixed B-scan sizes: {names[0]} is {first[0]}x{first[1]} but {names[odd]} is "
                                f"{frames[odd].shape[0]}x{frames[odd].shape[1]} (one volume has one size)")
    volume_name = name or (path.name if path.is_dir() else path.stem) or "volume"
    return Volume(volume_name, path, fmt, frames, names)
