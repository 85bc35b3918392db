"""Image reading and medical preprocessing with OpenCV.

Every image the data layer feeds a model goes through :func:`load_image`: :func:`read_image` decodes the file to
an RGB (or grey) array of its native bit depth, and :func:`preprocess` applies the study's preprocessing
(fundus circle crop, per-channel CLAHE), resizes to the model size and sets the channel count.

The output is float32 pixels on the [0, 255] scale and is **never** ImageNet-normalised here: every kd-keras
model normalises inside its graph (:class:`kd_keras.models.layers.PixelNormalization`), so the same pipeline
feeds every model and an exported TFLite/ONNX file takes the same raw pixels.

Example:

```python
from kd_keras.data.preprocess import PreprocessConfig, load_image

config = PreprocessConfig(image_size=(300, 300), clahe=True, fundus_crop=True)
pixels = load_image("10_left.jpeg", config)  # float32 (300, 300, 3) in [0, 255]
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

# File signatures, only to word the error for a file OpenCV cannot decode ("truncated JPEG" vs "not an image").
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"RIFF", "WebP"),
)


# How an image of another aspect ratio becomes the model's input shape (PreprocessConfig.geometry).
GEOMETRIES = ("resize", "center_crop", "pad")


class ImageReadError(ValueError):
    """An image file that cannot be used; ``str(error)`` is one line: ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class PreprocessConfig:
    """What :func:`preprocess` does to a decoded image.

    Args:
        image_size: ``(height, width)`` of the output.
        channels: output channels, 1 (grey) or 3 (RGB). Grey inputs are repeated to 3 channels; RGB inputs are
            converted to luma (ITU-R BT.601 weights) for 1.
        clahe: per-channel contrast-limited adaptive histogram equalisation, as study 000 ("local histogram
            equalization is performed separately on each input channel").
        clahe_clip: CLAHE clip limit (OpenCV's ``clipLimit``).
        clahe_grid: CLAHE tiles per side (OpenCV's ``tileGridSize``).
        fundus_crop: crop a fundus photograph to its bright circle, centred and padded to a square, before the
            resize (removes the black border whose width varies between cameras).
        geometry: how an image whose shape is not ``image_size``'s becomes it (after the fundus crop, before the
            resize): ``"resize"`` stretches it (distorts a wide OCT B-scan), ``"center_crop"`` keeps the centred
            box of the output's aspect ratio (for a B-scan: the full height, the central columns; the same as
            resizing the height and cropping the width), ``"pad"`` pads it with black to that aspect ratio
            (keeps every column, smaller retina). See :func:`fit_geometry`.
    """

    image_size: tuple[int, int]
    channels: int = 3
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    fundus_crop: bool = False
    geometry: str = "resize"

    def __post_init__(self):
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width) with positive sides, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.clahe_clip <= 0 or self.clahe_grid < 1:
            raise ValueError(f"clahe_clip must be > 0 and clahe_grid >= 1, got {self.clahe_clip}, {self.clahe_grid}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {self.geometry!r}")


def _sniff_format(data: bytes) -> str | None:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def decode_image(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes like :func:`read_image` (``path`` only names the source in errors).

    Example:

    ```python
    pixels = decode_image(open("scan.png", "rb").read(), "scan.png")
    ```
    """
    if len(data) == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt = _sniff_format(data)
    if fmt == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # Entropy-coded data cannot contain FFD9, so a file whose last end-of-image marker comes before its last
        # start-of-scan lost its tail (libjpeg would otherwise fill the missing rows with grey and only warn).
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker after the last scan)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # e.g. an image over OpenCV's pixel limit
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "OpenCV error"
        raise ImageReadError(path, f"OpenCV cannot decode it ({reason})") from None
    if image is None:
        if fmt is None:
            raise ImageReadError(path, "not an image (content is not a format OpenCV can decode)")
        raise ImageReadError(path, f"truncated or corrupt {fmt} data (OpenCV cannot decode it)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"unsupported pixel type {image.dtype} (only 8- and 16-bit images are read)")
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(path, f"unsupported image layout {image.shape}")
    channels = image.shape[-1]
    if channels == 1:
        return image
    if channels == 2:  # grey + alpha: drop alpha
        return np.ascontiguousarray(image[:, :, :1])
    if channels == 4:  # OpenCV gives BGRA: drop alpha (CMYK JPEGs are already converted to BGR by OpenCV)
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file with OpenCV into an RGB array of its native bit depth.

    Bytes are read by Python and decoded with ``cv2.imdecode``, so non-ASCII paths work on every platform.
    Alpha channels are dropped; CMYK JPEGs are converted to RGB by OpenCV's decoder; EXIF orientation is not
    applied (the stored pixel grid is what the scanner wrote).

    Args:
        path: image file (anything OpenCV decodes: PNG, JPEG, BMP, TIFF, WebP, ...).

    Returns:
        ``uint8`` or ``uint16`` array of shape ``(H, W, C)``, ``C`` 1 (grey) or 3 (RGB order).

    Raises:
        ImageReadError: missing or unreadable file, zero bytes, not an image, truncated or corrupt data, or an
            unsupported pixel type; the message is one line naming the file and the problem.

    Example:

    ```python
    pixels = read_image("OCT2017/train/CNV/CNV-1016042-1.jpeg")  # uint8 (496, 512, 1)
    ```
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ImageReadError(path, f"cannot read file ({error.strerror or error})") from None
    return decode_image(data, path)


def to_float_pixels(image: np.ndarray) -> np.ndarray:
    """Scales an 8- or 16-bit (or float [0, 255]) image to float32 on the [0, 255] scale, keeping 16-bit precision."""
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(255.0 / 65535.0)
    return image.astype(np.float32)


def fundus_circle_box(image: np.ndarray, threshold: float = 0.06) -> tuple[int, int, int] | None:
    """Finds the fundus circle: ``(centre_row, centre_col, radius)`` in pixels, or ``None`` for a blank image.

    The border of a fundus photograph is near-black; pixels brighter than ``threshold`` times the image maximum
    (on the brightest channel) are the disc. Rows and columns with fewer than 1% disc pixels are ignored, so
    sensor noise and text overlays in the border do not widen the box. When the disc touches the top and bottom
    edges (a circle clipped by the sensor, common in EyePACS) the radius comes from the horizontal extent.

    Example:

    ```python
    row, col, radius = fundus_circle_box(read_image("10_left.jpeg"))
    ```
    """
    brightness = image.max(axis=-1) if image.ndim == 3 else image
    peak = float(brightness.max())
    if peak <= 0:
        return None
    mask = brightness > threshold * peak
    height, width = mask.shape
    rows = np.flatnonzero(mask.sum(axis=1) > 0.01 * width)
    cols = np.flatnonzero(mask.sum(axis=0) > 0.01 * height)
    if rows.size == 0 or cols.size == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    radius = max(bottom - top, right - left) / 2.0
    centre_row = (top + bottom) / 2.0
    centre_col = (left + right) / 2.0
    return int(round(centre_row)), int(round(centre_col)), max(1, int(round(radius)))


def crop_fundus(image: np.ndarray, threshold: float = 0.06) -> np.ndarray:
    """Crops a fundus photograph to the square around its circle, centred, zero-padded where the circle leaves
    the frame. An image with no bright pixels is returned unchanged.

    Example:

    ```python
    square = crop_fundus(read_image("10_left.jpeg"))  # (2r, 2r, 3), disc centred
    ```
    """
    box = fundus_circle_box(image, threshold)
    if box is None:
        return image
    centre_row, centre_col, radius = box
    side = 2 * radius
    top, left = centre_row - radius, centre_col - radius
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, image.shape[0]), min(left + side, image.shape[1])
    out[src_top - top : src_bottom - top, src_left - left : src_right - left] = image[
        src_top:src_bottom, src_left:src_right
    ]
    return out


def apply_clahe(image: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on each channel separately (study 000).

    Args:
        image: ``uint8`` or ``uint16`` array ``(H, W, C)`` (OpenCV's CLAHE works on 8- and 16-bit integers).
        clip: clip limit.
        grid: tiles per side.

    Example:

    ```python
    equalised = apply_clahe(read_image("10_left.jpeg"), clip=2.0, grid=8)
    ```
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"CLAHE needs uint8 or uint16 pixels, got {image.dtype}")
    clahe = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(grid), int(grid)))
    channels = [clahe.apply(np.ascontiguousarray(image[:, :, c])) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1)


def fit_geometry(image: np.ndarray, size: tuple[int, int], geometry: str) -> np.ndarray:
    """``image`` ``(H, W, C)`` brought to the aspect ratio of ``size=(height, width)`` by ``geometry``, at its own
    resolution (the resize follows): ``"resize"`` returns it unchanged (the resize stretches it),
    ``"center_crop"`` cuts the centred box of that aspect ratio, ``"pad"`` centres it on a black canvas of that
    aspect ratio. The box is rounded to whole pixels; an image already of that aspect ratio is unchanged.

    Example:

    ```python
    fit_geometry(np.zeros((496, 1024, 1), np.uint8), (224, 224), "center_crop").shape  # (496, 496, 1)
    fit_geometry(np.zeros((496, 1024, 1), np.uint8), (224, 224), "pad").shape          # (1024, 1024, 1)
    ```
    """
    if geometry == "resize":
        return image
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    rows, cols = image.shape[:2]
    aspect = size[1] / size[0]  # width / height of the output
    if geometry == "center_crop":
        height, width = (rows, round(rows * aspect)) if cols / rows >= aspect else (round(cols / aspect), cols)
        height, width = max(1, min(rows, height)), max(1, min(cols, width))
        top, left = (rows - height) // 2, (cols - width) // 2
        return image[top:top + height, left:left + width]
    height, width = (round(cols / aspect), cols) if cols / rows >= aspect else (rows, round(rows * aspect))
    height, width = max(rows, height), max(cols, width)
    if (height, width) == (rows, cols):
        return image
    canvas = np.zeros((height, width, image.shape[2]), image.dtype)
    top, left = (height - rows) // 2, (width - cols) // 2
    canvas[top:top + rows, left:left + cols] = image
    return canvas


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes ``(H, W, C)`` to ``size=(height, width)``: area averaging when shrinking (no aliasing), bilinear
    otherwise. Keeps the channel axis even for one channel.

    Example:

    ```python
    small = resize_image(np.zeros((496, 512, 1), np.uint8), (96, 96))  # (96, 96, 1)
    ```
    """
    height, width = size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    return resized


def preprocess(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Applies the configured preprocessing to a decoded image.

    Order: fundus crop (native resolution), the geometry (:func:`fit_geometry`: crop or pad to the output's
    aspect ratio, native resolution), resize to ``config.image_size``, per-channel CLAHE, scaling to
    float [0, 255] (16-bit inputs divided by 65535/255 in float32, so no precision is lost to an 8-bit step),
    then the channel count. CLAHE runs after the resize because its tile grid is relative to the image, so
    the result hardly changes, and it costs (original pixels / model pixels) times less; it runs on the
    integer image (8- or 16-bit) as OpenCV requires.

    Args:
        image: ``uint8``/``uint16``/float array ``(H, W)`` or ``(H, W, C)``, ``C`` in {1, 3, 4} (RGB[A]).
        config: what to do.

    Returns:
        float32 array ``(height, width, config.channels)`` with values in [0, 255]. Not ImageNet-normalised:
        models normalise internally.

    Example:

    ```python
    config = PreprocessConfig(image_size=(224, 224), channels=3, clahe=True)
    pixels = preprocess(read_image("CNV-1016042-1.jpeg"), config)  # grey B-scan -> (224, 224, 3)
    ```
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, C) image with C in (1, 3, 4), got shape {image.shape}")
    if image.shape[-1] == 4:
        image = image[:, :, :3]
    if image.dtype.kind == "f" and config.clahe:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    elif image.dtype.kind not in "fu" or (image.dtype.kind == "u" and image.dtype.itemsize > 2):
        raise ValueError(f"expected uint8, uint16 or float pixels, got {image.dtype}")
    if config.fundus_crop:
        image = crop_fundus(image)
    image = fit_geometry(image, config.image_size, config.geometry)
    if config.clahe:
        image = resize_image(image, config.image_size)
        image = apply_clahe(image, config.clahe_clip, config.clahe_grid)
        pixels = to_float_pixels(image)
    else:
        pixels = resize_image(to_float_pixels(image), config.image_size)
    if config.channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    elif config.channels == 1 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)[:, :, None]
    return np.clip(pixels, 0.0, 255.0).astype(np.float32, copy=False)


def load_image(path: str | os.PathLike, config: PreprocessConfig) -> np.ndarray:
    """:func:`read_image` then :func:`preprocess`: float32 ``(height, width, channels)`` in [0, 255].

    Raises:
        ImageReadError: the file cannot be read or decoded (one line naming the file and the problem).

    Example:

    ```python
    pixels = load_image("NORMAL-1001666-1.jpeg", PreprocessConfig(image_size=(96, 96), channels=1))
    ```
    """
    return preprocess(read_image(path), config)
