"""Study 000's "random images": a pool of unlabeled natural images for distillation.

Study 000 distils the teacher into the student on natural images unrelated to the task before using retina
images. :func:`natural_image_pool` returns a folder of such images: the user's own folder when given, otherwise
a built-in fallback made of random crops of the photographs bundled with scikit-image and scikit-learn (no
download), written once as an ordinary image folder (so the same unlabeled loaders read it) and cached.

The fallback uses only photographs of natural scenes and objects. Bundled images that are medical or retinal
(``skimage.data.retina`` is a fundus photograph, ``microaneurysms`` a retinal angiogram crop, ``cell`` and
``immunohistochemistry`` microscopy) or synthetic (text, logos, phantoms, checkerboards) are excluded, so the
pool carries no in-domain signal.

Example:

```python
from kd_keras.data.natural_images import natural_image_pool

pool_dir = natural_image_pool(n_images=2000, image_size=128, seed=0)  # folder of PNG crops
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from kd_keras.data.synthetic_oct import default_cache_dir

GENERATOR_VERSION = 1
# Photographs of natural scenes and objects bundled with scikit-image (loaded without a download).
SKIMAGE_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "camera", "coins", "moon", "grass",
    "gravel", "brick", "clock", "stereo_motorcycle",
)
# Bundled images that must never enter the pool: medical / retinal, or not photographs.
EXCLUDED = ("retina", "microaneurysms", "cell", "immunohistochemistry", "kidney", "human_mitosis", "cells3d",
            "brain", "skin", "text", "page", "logo", "colorwheel", "horse", "checkerboard", "binary_blobs",
            "shepp_logan_phantom")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def load_bundled_photos() -> dict[str, np.ndarray]:
    """The natural photographs shipped with scikit-image and scikit-learn, as uint8 RGB arrays by name.

    Photos a given installation lacks (or that would need a download) are skipped.

    Example:

    ```python
    photos = load_bundled_photos()  # {"astronaut": (512, 512, 3) uint8, ..., "sklearn_china": ...}
    ```
    """
    photos: dict[str, np.ndarray] = {}
    try:
        import skimage.data
    except ImportError:  # scikit-image is optional for this fallback
        skimage = None
    if skimage is not None:
        for name in SKIMAGE_PHOTOS:
            loader = getattr(skimage.data, name, None)
            if loader is None:
                continue
            try:
                image = loader()
            except Exception:  # not bundled in this version (would need pooch / network): skip it
                continue
            if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
                image = image[0]
            photos[name] = _as_rgb_uint8(np.asarray(image))
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for path, image in zip(sample.filenames, sample.images, strict=True):
            photos[f"sklearn_{Path(path).stem}"] = _as_rgb_uint8(np.asarray(image))
    except Exception:  # scikit-learn without its sample images
        pass
    return photos


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    return np.ascontiguousarray(image[:, :, :3])


def random_crops(
    photos: dict[str, np.ndarray], n_images: int, image_size: int, seed: int = 0, min_fraction: float = 0.15,
    max_fraction: float = 0.8,
):
    """Yields ``(source_name, crop)``: square crops of random photos at random positions and scales, randomly
    flipped, resized to ``image_size`` (area interpolation).

    Args:
        photos: name -> uint8 RGB array.
        n_images: how many crops.
        image_size: output side in pixels.
        seed: seed.
        min_fraction: smallest crop side as a fraction of the photo's shorter side.
        max_fraction: largest crop side as a fraction of the photo's shorter side.

    Example:

    ```python
    crops = list(random_crops(load_bundled_photos(), n_images=10, image_size=64))
    ```
    """
    if not photos:
        raise ValueError("no photos to crop from")
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    for _ in range(n_images):
        name = names[int(rng.integers(len(names)))]
        photo = photos[name]
        height, width = photo.shape[:2]
        side = int(min(height, width) * rng.uniform(min_fraction, max_fraction))
        side = max(side, 8)
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        interpolation = cv2.INTER_AREA if side >= image_size else cv2.INTER_LINEAR
        yield name, cv2.resize(np.ascontiguousarray(crop), (image_size, image_size), interpolation=interpolation)


def _folder_has_images(folder: Path) -> bool:
    return any(path.suffix.lower() in IMAGE_SUFFIXES for path in folder.rglob("*") if path.is_file())


def natural_image_pool(
    folder: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    n_images: int = 1000,
    image_size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """A folder of unlabeled natural images: ``folder`` when given, else the cached built-in fallback.

    Args:
        folder: the user's own natural images (any folder tree of image files); returned as is after a check
            that it holds at least one image.
        out_dir: where to write the fallback; ``None`` uses ``default_cache_dir()/natural_images/<fingerprint>``.
        n_images: number of crops in the fallback.
        image_size: side of the fallback's square crops.
        seed: seed of the fallback.
        overwrite: rewrite the fallback even if cached.

    Returns:
        The folder. The fallback holds ``natural-<n>.png`` files and a ``manifest.json`` listing the source
        photos and how many crops each gave.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no image files (one line naming it).

    Example:

    ```python
    pool_dir = natural_image_pool()                       # built-in fallback, cached
    pool_dir = natural_image_pool("/data/imagenet_val")   # the user's own images
    ```
    """
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: natural-image folder does not exist")
        if not _folder_has_images(folder):
            suffixes = ", ".join(IMAGE_SUFFIXES)
            raise FileNotFoundError(f"{folder}: natural-image folder holds no image files ({suffixes})")
        return folder
    if n_images < 1 or image_size < 8:
        raise ValueError(f"n_images must be >= 1 and image_size >= 8, got {n_images}, {image_size}")
    params = {"version": GENERATOR_VERSION, "n_images": n_images, "image_size": image_size, "seed": seed}
    fingerprint = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(out_dir) if out_dir is not None else default_cache_dir() / "natural_images" / fingerprint
    manifest_path = root / "manifest.json"
    if manifest_path.is_file() and not overwrite:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("fingerprint") == fingerprint and manifest.get("complete") is True:
            return root
    if root.exists() and any(root.iterdir()) and not (overwrite and manifest_path.is_file()):
        raise FileExistsError(f"{root}: folder exists and does not hold this natural-image pool; pass "
                              "overwrite=True (for a pool folder) or another out_dir")
    photos = load_bundled_photos()
    if not photos:
        raise RuntimeError("no bundled photos found: install scikit-image or scikit-learn, or pass folder=")
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        per_source: dict[str, int] = dict.fromkeys(sorted(photos), 0)
        for index, (name, crop) in enumerate(random_crops(photos, n_images, image_size, seed)):
            ok, encoded = cv2.imencode(".png", crop[:, :, ::-1])
            if not ok:
                raise OSError(f"{staging}: OpenCV could not encode a crop of {name}")
            (staging / f"natural-{index:06d}.png").write_bytes(encoded.tobytes())
            per_source[name] += 1
        manifest = {
            "generator": "kd_keras.data.natural_images",
            "fingerprint": fingerprint,
            **params,
            "sources": per_source,
            "excluded": list(EXCLUDED),
            "generation_seconds": round(time.perf_counter() - start, 2),
            "complete": True,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
