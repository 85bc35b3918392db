"""Seeded synthetic colour fundus photographs graded for diabetic retinopathy (study 000's demo data).

Written in the EyePACS (Kaggle DR) layout so the same loaders and patient rule read it:

```
<root>/
  train/10_left.jpeg, 10_right.jpeg, ...   # <patient>_<eye>
  trainLabels.csv                          # image,level   (image = file name without extension; level 0-4)
  manifest.json                            # generator version, config, seed, counts
```

Each image: a fundus disc on black with radial illumination fall-off and choroidal texture, an optic disc with a
pale cup on the nasal side (right of the image for a right eye), a darker macula with a foveal reflex, and
vessels: four arcades and nasal branches leaving the disc, branching and narrowing (veins darker and wider than
arteries). Lesions follow the international DR grades:

- 0 none; 1 mild: microaneurysms only; 2 moderate: microaneurysms, dot/blot haemorrhages, hard exudates, maybe a
  cotton-wool spot; 3 severe: many haemorrhages in every quadrant, cotton-wool spots, venous beading;
  4 proliferative: the above plus neovascularisation (fine tangled loops at the disc or elsewhere) and sometimes
  a pre-retinal (boat-shaped) haemorrhage.

The two eyes of a patient usually share a grade (or differ by one), as in EyePACS.

Example:

```python
from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus

root = generate_synthetic_fundus(config=SyntheticFundusConfig(patients=50, image_size=128))
```
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kd_keras.data.synthetic_oct import default_cache_dir

GENERATOR_VERSION = 1
GRADES = (0, 1, 2, 3, 4)
GRADE_NAMES = ("no DR", "mild", "moderate", "severe", "proliferative")


@dataclass(frozen=True)
class SyntheticFundusConfig:
    """Parameters of a synthetic fundus dataset; equal configs give identical files.

    Args:
        image_size: side of the square images in pixels.
        patients: patients (two images each).
        grade_mix: probability of each patient's grade 0-4 (EyePACS is about 73/7/15/2.5/2 %; the default is
            flatter so every grade appears in a small demo).
        difficulty: 0 (many large, contrasted lesions) .. 1 (default) .. 2 (few, small, faint lesions).
        seed: seed.
        image_format: ``"jpeg"`` (as EyePACS) or ``"png"``.
    """

    image_size: int = 128
    patients: int = 100
    grade_mix: tuple[float, float, float, float, float] = (0.4, 0.15, 0.2, 0.13, 0.12)
    difficulty: float = 1.0
    seed: int = 0
    image_format: str = "jpeg"

    def __post_init__(self):
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {self.image_size}")
        if self.patients < 0:
            raise ValueError(f"patients must be >= 0, got {self.patients}")
        if len(self.grade_mix) != 5 or min(self.grade_mix) < 0 or sum(self.grade_mix) <= 0:
            raise ValueError("grade_mix must be 5 non-negative weights for grades 0-4")
        if not 0.0 <= self.difficulty <= 3.0:
            raise ValueError(f"difficulty must be in [0, 3], got {self.difficulty}")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {self.image_format!r}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def fingerprint(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _bgr(rgb) -> tuple[float, float, float]:
    return (float(rgb[2]), float(rgb[1]), float(rgb[0]))


def _walk(rng, start, angle, length, step, bend, target=None, pull=0.0):
    """A smooth random curve: points from ``start`` heading ``angle``, curving by ``bend`` per step, optionally
    pulled towards ``target`` (vessel arcades bend around the macula)."""
    points = [np.asarray(start, np.float64)]
    heading = angle
    for _ in range(max(2, int(length / step))):
        heading += bend + rng.normal(0, 0.05)
        if target is not None and pull:
            to_target = math.atan2(target[1] - points[-1][1], target[0] - points[-1][0])
            heading += pull * math.sin(to_target - heading)
        points.append(points[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
    return np.stack(points)


def _draw_vessel_tree(canvas, rng, start, angle, length, width, colour, scale, depth=0, bend=0.0,
                      target=None, pull=0.0, beading=0.0):
    path = _walk(rng, start, angle, length, 2.0 * scale, bend, target, pull)
    n = len(path)
    for k in range(n - 1):
        w = width * (1.0 - 0.5 * k / n)
        if beading:  # venous beading: the calibre swells and narrows along the vein
            w *= 1.0 + beading * math.sin(k * 0.9)
        p0 = tuple(int(round(v * 4)) for v in path[k])
        p1 = tuple(int(round(v * 4)) for v in path[k + 1])
        cv2.line(canvas, p0, p1, colour, max(1, int(round(w))), cv2.LINE_AA, shift=2)
    if depth < 3:
        for _ in range(rng.integers(1, 3)):
            k = int(rng.integers(n // 4, max(n // 4 + 1, 3 * n // 4)))
            direction = math.atan2(*(path[min(k + 1, n - 1)] - path[k])[::-1])
            branch_angle = direction + rng.choice((-1, 1)) * rng.uniform(0.4, 0.9)
            _draw_vessel_tree(canvas, rng, path[k], branch_angle, length * rng.uniform(0.35, 0.6), width * 0.65,
                              colour, scale, depth + 1, bend * 0.5, beading=beading * 0.5)


def _lesion_counts(rng, grade: int, difficulty: float) -> dict:
    """How many of each lesion an eye of this grade shows (difficulty lowers counts towards the grade's minimum)."""
    f = max(0.25, 1.0 - 0.3 * difficulty)
    counts = dict.fromkeys(("microaneurysm", "haemorrhage", "exudate", "cotton_wool", "neovascular",
                            "preretinal"), 0)
    if grade >= 1:
        counts["microaneurysm"] = int(rng.integers(1, 3) + rng.integers(0, 1 + int(6 * f)))
    if grade >= 2:
        counts["microaneurysm"] += int(rng.integers(2, 4 + int(8 * f)))
        counts["haemorrhage"] = int(rng.integers(1, 2 + int(5 * f)))
        counts["exudate"] = int(rng.integers(2, 4 + int(12 * f)))
        counts["cotton_wool"] = int(rng.random() < 0.4)
    if grade >= 3:
        counts["haemorrhage"] += int(rng.integers(8, 12 + int(10 * f)))
        counts["cotton_wool"] += int(rng.integers(1, 3 + int(3 * f)))
    if grade >= 4:
        counts["neovascular"] = int(rng.integers(1, 3))
        counts["preretinal"] = int(rng.random() < 0.35)
    return counts


def render_fundus(rng: np.random.Generator, grade: int, eye: str, size: int, difficulty: float = 1.0):
    """Renders one fundus photograph.

    Args:
        rng: random generator (the image is a function of its state).
        grade: DR grade 0-4.
        eye: ``"left"`` or ``"right"`` (the optic disc is on the nasal side: image left for a left eye).
        size: image side in pixels.
        difficulty: see :class:`SyntheticFundusConfig`.

    Returns:
        ``(image, counts)``: uint8 RGB ``(size, size, 3)`` and the number of each lesion drawn.

    Example:

    ```python
    image, counts = render_fundus(np.random.default_rng(0), grade=3, eye="right", size=256)
    ```
    """
    if grade not in GRADES or eye not in ("left", "right"):
        raise ValueError(f"grade must be 0-4 and eye 'left' or 'right', got {grade}, {eye!r}")
    scale = size / 128.0
    centre = np.array([size / 2 + rng.normal(0, 0.02 * size), size / 2 + rng.normal(0, 0.02 * size)])
    radius = size * rng.uniform(0.44, 0.49)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.hypot(xx - centre[0], yy - centre[1]) / radius

    # Background: orange-red fundus, brighter in the middle, with low-frequency choroidal texture.
    base = np.array([rng.uniform(170, 215), rng.uniform(70, 105), rng.uniform(25, 50)], np.float32)
    texture = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 3 * scale)
    texture /= max(float(texture.std()), 1e-6)
    illumination = (1.0 - 0.45 * dist**2.2)[..., None]
    image = base[None, None, :] * illumination * (1.0 + 0.05 * texture[..., None])

    # Macula (darker, a little browner) with a foveal reflex, temporal to the disc.
    side = 1.0 if eye == "right" else -1.0  # disc on the image right for a right eye
    disc = centre + np.array([side * rng.uniform(0.36, 0.44) * radius, rng.normal(0, 0.04) * radius])
    macula = centre + np.array([-side * rng.uniform(0.02, 0.1) * radius, rng.normal(0, 0.03) * radius])
    macula_r = rng.uniform(0.16, 0.22) * radius
    m = np.exp(-0.5 * (np.hypot(xx - macula[0], yy - macula[1]) / macula_r) ** 2)[..., None]
    image = image * (1.0 - 0.35 * m * np.array([0.8, 1.0, 1.0], np.float32))

    canvas = np.clip(image, 0, 255).astype(np.uint8)[..., ::-1].copy()  # draw in BGR with OpenCV
    disc_r = rng.uniform(0.075, 0.095) * radius

    # Vessels: superior and inferior temporal arcades (artery + vein each) curving around the macula, nasal
    # branches; veins darker and wider.
    vein = _bgr((rng.uniform(95, 120), 20, 25))
    artery = _bgr((rng.uniform(150, 175), 40, 35))
    beading = 0.35 if grade >= 3 else 0.0
    for vertical in (-1.0, 1.0):
        for colour, width, offset in ((vein, 2.2, 0.0), (artery, 1.6, 0.15)):
            # Leave the disc steeply up or down, heading temporally (towards the macula).
            angle = math.atan2(vertical * math.sin(1.15 + offset), -side * math.cos(1.15 + offset))
            _draw_vessel_tree(canvas, rng, disc, angle, radius * rng.uniform(0.95, 1.25), width * scale,
                              colour, scale, bend=vertical * side * rng.uniform(0.018, 0.03),
                              beading=beading if colour == vein else 0.0)
    for _ in range(rng.integers(2, 4)):
        angle = (0.0 if side > 0 else math.pi) + rng.uniform(-1.0, 1.0)
        _draw_vessel_tree(canvas, rng, disc, angle, radius * rng.uniform(0.4, 0.7), 1.2 * scale,
                          artery if rng.random() < 0.5 else vein, scale)

    # Optic disc: pale yellow-pink with a paler cup, drawn over the vessel roots.
    disc_layer = np.zeros_like(canvas)
    cv2.circle(disc_layer, tuple(int(v) for v in disc), int(disc_r), _bgr((245, 200, 140)), -1, cv2.LINE_AA)
    disc_mask = cv2.GaussianBlur((disc_layer.max(-1) > 0).astype(np.float32), (0, 0), 1.2 * scale)[..., None]
    canvas = (canvas * (1 - 0.85 * disc_mask) + disc_layer * 0.85 * disc_mask).astype(np.uint8)
    cv2.circle(canvas, tuple(int(v) for v in disc + [0.15 * disc_r, 0]), int(0.45 * disc_r), _bgr((252, 235, 205)),
               -1, cv2.LINE_AA)
    for vertical in (-1, 1):  # vessel trunks visible on the disc
        end = disc + np.array([-side * 0.3 * disc_r, vertical * disc_r])
        cv2.line(canvas, tuple(int(v) for v in disc), tuple(int(v) for v in end), vein,
                 max(1, int(1.8 * scale)), cv2.LINE_AA)

    # Lesions, placed inside the disc of the retina but not on the optic disc.
    counts = _lesion_counts(rng, grade, difficulty)
    contrast = rng.uniform(max(0.45, 1.0 - 0.3 * difficulty), 1.0)

    def spot(near=None, spread=0.6):
        for _ in range(50):
            if near is None:
                r, a = radius * 0.85 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
                p = centre + r * np.array([math.cos(a), math.sin(a)])
            else:
                p = near + rng.normal(0, spread * radius, 2)
            if np.hypot(*(p - centre)) < 0.9 * radius and np.hypot(*(p - disc)) > 1.5 * disc_r:
                return p
        return centre.copy()

    def blend(colour, alpha=contrast):
        return tuple(float(c) for c in colour), alpha

    overlay = canvas.copy()
    for _ in range(counts["microaneurysm"]):
        p = spot(macula, 0.35)
        cv2.circle(overlay, tuple(int(v) for v in p), max(1, int(round(rng.uniform(0.6, 1.1) * scale))),
                   _bgr((110, 10, 15)), -1, cv2.LINE_AA)
    for _ in range(counts["haemorrhage"]):
        p = spot()
        axes = (max(1, int(rng.uniform(1.2, 3.5) * scale)), max(1, int(rng.uniform(1.2, 3.0) * scale)))
        cv2.ellipse(overlay, tuple(int(v) for v in p), axes, rng.uniform(0, 180), 0, 360, _bgr((120, 15, 15)), -1,
                    cv2.LINE_AA)
    for _ in range(counts["exudate"]):
        cluster = spot(macula, 0.45)
        for _ in range(rng.integers(1, 5)):
            q = cluster + rng.normal(0, 2.5 * scale, 2)
            cv2.circle(overlay, tuple(int(v) for v in q), max(1, int(round(rng.uniform(0.6, 1.4) * scale))),
                       _bgr((250, 235, 120)), -1, cv2.LINE_AA)
    canvas = cv2.addWeighted(overlay, contrast, canvas, 1 - contrast, 0)
    for _ in range(counts["cotton_wool"]):  # soft, fluffy pale patches near the arcades
        p = spot(disc, 0.4)
        patch = np.zeros(canvas.shape[:2], np.float32)
        axes = (max(1, int(rng.uniform(2.5, 5) * scale)), max(1, int(rng.uniform(1.5, 3.5) * scale)))
        cv2.ellipse(patch, tuple(int(v) for v in p), axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
        patch = cv2.GaussianBlur(patch, (0, 0), 1.2 * scale)[..., None] * 0.8 * contrast
        canvas = (canvas * (1 - patch) + np.array(_bgr((240, 235, 215)), np.float32) * patch).astype(np.uint8)
    for _ in range(counts["neovascular"]):  # a tangle of fine loops at the disc or along an arcade
        origin = disc + rng.normal(0, 0.8 * disc_r, 2) if rng.random() < 0.6 else spot(disc, 0.35)
        for _ in range(rng.integers(5, 10)):
            loop = _walk(rng, origin, rng.uniform(0, 2 * math.pi), rng.uniform(4, 10) * scale, 0.8 * scale,
                         rng.choice((-1, 1)) * rng.uniform(0.3, 0.6))
            cv2.polylines(canvas, [np.round(loop * 4).astype(np.int32)], False, _bgr((150, 25, 30)), 1,
                          cv2.LINE_AA, shift=2)
    for _ in range(counts["preretinal"]):  # boat-shaped: flat top, round bottom
        p = spot(macula, 0.3)
        axes = (int(rng.uniform(6, 10) * scale), int(rng.uniform(4, 7) * scale))
        cv2.ellipse(canvas, tuple(int(v) for v in p), axes, 0, 0, 180, _bgr((115, 10, 12)), -1, cv2.LINE_AA)

    # Camera: mild blur, sensor noise, and the black surround.
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.5 * scale).astype(np.float32)
    canvas += rng.normal(0, 2.5, canvas.shape)
    edge = np.clip((1.0 - dist) * radius / 1.5, 0, 1)[..., None]  # antialiased rim
    canvas = np.clip(canvas * edge, 0, 255).astype(np.uint8)
    return canvas[..., ::-1].copy(), counts


def generate_synthetic_fundus(
    out_dir: str | os.PathLike | None = None,
    config: SyntheticFundusConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes (or finds in the cache) a synthetic EyePACS-like fundus dataset.

    Args:
        out_dir: dataset folder; ``None`` uses ``default_cache_dir()/synthetic_fundus/<config fingerprint>``.
        config: generator parameters.
        overwrite: regenerate even when the folder already holds this config (a folder holding something else
            is refused unless ``overwrite`` is set).

    Returns:
        The dataset folder (``train/`` and ``trainLabels.csv``).

    Example:

    ```python
    root = generate_synthetic_fundus(config=SyntheticFundusConfig(patients=20, seed=1))
    ```
    """
    config = config or SyntheticFundusConfig()
    root = Path(out_dir) if out_dir is not None else default_cache_dir() / "synthetic_fundus" / config.fingerprint()
    manifest_path = root / "manifest.json"
    if manifest_path.is_file() and not overwrite:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("fingerprint") == config.fingerprint() and manifest.get("complete") is True:
            return root
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{root}: folder exists and does not hold this synthetic fundus config; pass overwrite=True or "
                "another out_dir"
            )
        if not manifest_path.is_file():
            raise FileExistsError(f"{root}: refusing to overwrite a folder that is not a synthetic dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (staging / "train").mkdir()
        master = np.random.default_rng(config.seed)
        ids = sorted(int(x) for x in master.choice(np.arange(10, 10 * max(config.patients, 1) + 100),
                                                   size=config.patients, replace=False))
        mix = np.asarray(config.grade_mix, np.float64) / sum(config.grade_mix)
        ext = "jpeg" if config.image_format == "jpeg" else "png"
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == "jpeg" else []
        rows, by_grade = [], dict.fromkeys(range(5), 0)
        for index, patient in enumerate(ids):
            rng = np.random.default_rng([config.seed, index])
            patient_grade = int(rng.choice(5, p=mix))
            for eye in ("left", "right"):
                # Fellow eyes mostly share the grade; sometimes one is a grade milder.
                grade = max(0, patient_grade - int(rng.random() < 0.25))
                image, _ = render_fundus(rng, grade, eye, config.image_size, config.difficulty)
                name = f"{patient}_{eye}"
                ok, encoded = cv2.imencode(f".{ext}", image[..., ::-1], params)
                if not ok:
                    raise OSError(f"{staging / 'train' / name}: OpenCV could not encode the image")
                (staging / "train" / f"{name}.{ext}").write_bytes(encoded.tobytes())
                rows.append((name, grade))
                by_grade[grade] += 1
        with open(staging / "trainLabels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "level"])
            writer.writerows(rows)
        manifest = {
            "generator": "kd_keras.data.synthetic_fundus",
            "generator_version": GENERATOR_VERSION,
            "fingerprint": config.fingerprint(),
            "seed": config.seed,
            "config": config.to_dict(),
            "layout": {"images": f"train/<patient>_<left|right>.{ext}", "labels": "trainLabels.csv (image,level)"},
            "counts": {"patients": len(ids), "images": len(rows), "by_grade": by_grade},
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


# A test-only set's seed is the run's seed plus this offset: its patients are drawn apart from the training ones.
TEST_ONLY_SEED_OFFSET = 1_000_003


def test_only_fundus(out_dir: str | os.PathLike, config: SyntheticFundusConfig):
    """Generates (or finds) synthetic fundus photographs of test-only patients and loads them as EyePACS grades.

    The demos' test sets are otherwise a fifth of 60 patients (24 images, CIs tens of points wide); more test-only
    patients cost inference only and add no training label. The images come from the same generator settings
    with the seed ``config.seed + TEST_ONLY_SEED_OFFSET`` (other patients than any training set of seed
    ``config.seed``), and their patient ids are prefixed ``test-`` so none collides with a training patient's.

    Args:
        out_dir: the test-only dataset's folder.
        config: the training data's generator settings; ``config.patients`` is the number of test-only patients.

    Returns:
        :class:`~kd_keras.data.records.Records` of DR grades 0-4 (apply a task such as ``referable_dr``).

    Example:

    ```python
    extra = test_only_fundus(out / "data" / "fundus_test", SyntheticFundusConfig(patients=150, image_size=64))
    ```
    """
    from kd_keras.data.source_tables import eyepacs

    config = dataclasses.replace(config, seed=config.seed + TEST_ONLY_SEED_OFFSET)
    root = generate_synthetic_fundus(out_dir, config)
    records = eyepacs(root / "trainLabels.csv", root / "train")
    patients = np.array([f"test-{p}" for p in records.patients], dtype=object)
    return dataclasses.replace(records, patients=patients)
