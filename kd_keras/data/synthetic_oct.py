"""Seeded synthetic retinal OCT: the embedded default dataset of the main job.

A stand-in for OCT2017 (Kermany et al.) that needs no download, written in the same layout so the same loaders,
patient rule and splits read it:

```
<root>/
  labeled/{CNV,DME,DRUSEN,NORMAL}/CNV-1234567-17.png    # class folders, CLASS-<patient>-<n>.png
  unlabeled/OCT-2345678-3.png                           # pool from other patients, no label in the path
  test/{CNV,DME,DRUSEN,NORMAL}/...                       # held-out patients
  index.csv                                             # every image: split, patient, volume, slice, label, lesions
  unlabeled_truth.csv                                   # the pool's true labels (analysis only, never for training)
  manifest.json                                         # generator version, config, seed, counts, timing
```

How an image is made. A patient has one (or two) eyes scanned as a volume of ``bscans_per_volume`` B-scans
(128, as in study 002). The volume has an anatomy (retina depth, tilt, curvature, thickness, foveal position,
retinal vessels) and, for a diseased eye, a set of 3-D lesions near the fovea. A B-scan is a cross-section:

- a layered retina (RNFL, GCL, IPL, INL, OPL, ONL, photoreceptor bands with a bright ellipsoid zone, a bright
  RPE) following a curved, tilted profile with a foveal pit whose depth fades away from the foveal slice, a
  choroid with dark vessel lumens and depth attenuation below, vessel shadows (dark vertical streaks: normal
  anatomy that looks a little like pathology);
- lesions cut by the slice, sized by the ellipsoidal cross-section: intraretinal fluid cysts with retinal
  thickening and hard exudates (DME); subretinal fluid, a pigment-epithelial detachment and outer-layer
  disruption (CNV); sub-RPE drusen bumps (DRUSEN);
- normal look-alikes: a gentle RPE ripple, a faint posterior hyaloid line, choroidal vessels;
- a scanner style per eye (speckle grain, axial blur), multiplicative (log-normal, spatially correlated)
  speckle, log compression, additive noise and a random gain/offset/gamma per B-scan, so global intensity
  statistics say little about the label.

A B-scan is abnormal iff a lesion is drawn in it: a lesion's cross-section is drawn only when it is at least
``min_lesion_px`` high and twice that wide at the output size, so edge slices of a lesion are small but never
invisible. Its class folder is the eye's disease if it shows a lesion, else ``NORMAL`` (so a patient can appear
under NORMAL and a disease, as in OCT2017). ``difficulty`` scales lesion size and contrast down and speckle up.

Default (``SyntheticOCTConfig()``): 64x64 PNGs; 16 B-scans written per 128-B-scan volume (fovea-weighted),
one volume per patient; 20 labeled patients (320 B-scans), 140 pool patients (2,240), 40 test patients (640):
3,200 B-scans, about half abnormal, generated in about 4 s on one CPU core. Few labels on purpose: on this
default (seed 0), ``python -m kd_keras.data.synthetic_oct --check`` gives test AUC (normal vs abnormal)
0.51 for logistic regression on intensity histograms, 0.82 for a 25k-parameter CNN trained on the 320 labeled
B-scans and 0.96 for the same CNN and number of steps on labeled + pool with true labels (the ceiling that
pseudo-labels approach).

Example:

```python
from kd_keras.data.synthetic_oct import SyntheticOCTConfig, generate_synthetic_oct

root = generate_synthetic_oct()  # cached under ~/.cache/kd_keras (or $KD_KERAS_CACHE)
labeled_dir, pool_dir, test_dir = root / "labeled", root / "unlabeled", root / "test"
```
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

GENERATOR_VERSION = 1  # bump when the images a config produces change, so caches are rebuilt
CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
NORMAL = "NORMAL"
POOL_PREFIX = "OCT"  # unlabeled file names: OCT-<patient>-<n>.png (no class in the name)

# Retinal layers from the vitreous down, with their relative reflectivity (linear scale, before log compression)
# and thickness as a fraction of the retina's thickness away from the fovea. "srf" and "sub_rpe" have zero
# thickness in a healthy eye; lesions give them thickness.
_LAYERS = (
    # name, reflectivity, thickness fraction
    ("rnfl", 0.80, 0.10),
    ("gcl", 0.34, 0.13),
    ("ipl", 0.52, 0.11),
    ("inl", 0.17, 0.11),
    ("opl", 0.50, 0.08),
    ("onl", 0.10, 0.26),
    ("myoid", 0.20, 0.07),
    ("ez", 0.90, 0.035),
    ("os", 0.22, 0.045),
    ("srf", 0.02, 0.0),
    ("rpe", 1.00, 0.08),
    ("sub_rpe", 0.30, 0.0),
    ("choroid", 0.28, None),  # thickness set per eye
    ("sclera", 0.05, None),  # to the bottom of the image
)
_LAYER_INDEX = {name: k for k, (name, _, _) in enumerate(_LAYERS)}
_INNER = ("rnfl", "gcl", "ipl", "inl", "opl")  # thin out at the foveal pit
_VITREOUS_REFLECTIVITY = 0.003


def default_cache_dir() -> Path:
    """Where generated datasets are cached: ``$KD_KERAS_CACHE`` or ``~/.cache/kd_keras``.

    Example:

    ```python
    print(default_cache_dir() / "synthetic_oct")
    ```
    """
    return Path(os.environ.get("KD_KERAS_CACHE", Path.home() / ".cache" / "kd_keras")).expanduser()


@dataclass(frozen=True)
class SyntheticOCTConfig:
    """Parameters of a synthetic OCT dataset; equal configs give identical files.

    Args:
        image_size: ``(height, width)`` of the written B-scans.
        bscans_per_volume: B-scans in a simulated volume (002: 128); lesion extents are measured in slices.
        bscans_sampled_per_volume: how many of a volume's B-scans are written, drawn without replacement with a
            preference for the central (foveal) slices, as a clinician picks B-scans; ``None`` writes the whole
            volume.
        volumes_per_patient: 1 or 2 (one volume per eye).
        labeled_patients: patients in the labeled set.
        unlabeled_patients: other patients, in the unlabeled pool.
        test_patients: other patients, in the held-out test set.
        disease_mix: probability of each eye's diagnosis, in the order of ``CLASSES`` (CNV, DME, DRUSEN, NORMAL).
        difficulty: 0 (large, high-contrast lesions, mild speckle) .. 1 (default) .. 2 (small, faint lesions,
            strong speckle).
        speckle: multiplier of the speckle strength on top of ``difficulty``.
        min_lesion_px: smallest drawn lesion cross-section height in output pixels (width at least twice this).
        seed: seed of everything.
        image_format: ``"png"`` (lossless) or ``"jpeg"`` (as OCT2017 ships).
    """

    image_size: tuple[int, int] = (64, 64)
    bscans_per_volume: int = 128
    bscans_sampled_per_volume: int | None = 16
    volumes_per_patient: int = 1
    labeled_patients: int = 20
    unlabeled_patients: int = 140
    test_patients: int = 40
    disease_mix: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    difficulty: float = 1.0
    speckle: float = 1.0
    min_lesion_px: float = 1.5
    seed: int = 0
    image_format: str = "png"

    def __post_init__(self):
        if min(self.image_size) < 32:
            raise ValueError(f"image_size must be at least 32x32 (model contract), got {self.image_size}")
        if self.bscans_per_volume < 1:
            raise ValueError(f"bscans_per_volume must be >= 1, got {self.bscans_per_volume}")
        sampled = self.bscans_sampled_per_volume
        if sampled is not None and not 1 <= sampled <= self.bscans_per_volume:
            raise ValueError(f"bscans_sampled_per_volume must be in [1, bscans_per_volume] or None, got {sampled}")
        if self.volumes_per_patient not in (1, 2):
            raise ValueError(f"volumes_per_patient must be 1 or 2, got {self.volumes_per_patient}")
        if min(self.labeled_patients, self.unlabeled_patients, self.test_patients) < 0:
            raise ValueError("patient counts must be >= 0")
        if len(self.disease_mix) != len(CLASSES) or min(self.disease_mix) < 0 or sum(self.disease_mix) <= 0:
            raise ValueError(f"disease_mix must be {len(CLASSES)} non-negative weights for {CLASSES}")
        if not 0.0 <= self.difficulty <= 3.0:
            raise ValueError(f"difficulty must be in [0, 3], got {self.difficulty}")
        if self.image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpeg', got {self.image_format!r}")

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in
                dataclasses.asdict(self).items()}

    def fingerprint(self) -> str:
        """Short hash of the config and generator version (the cache key)."""
        payload = json.dumps({"version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class Lesion:
    """A 3-D lesion of a volume (positions in slices and in normalised image coordinates)."""

    kind: str  # "cyst", "exudate", "srf", "ped", "disruption", "druse"
    slice_centre: float
    slice_radius: float
    u: float  # horizontal centre in [-1, 1]
    half_width: float  # fraction of the image width
    height: float  # fraction of the image height (for cysts, of the layer it sits in)
    contrast: float  # 0..1
    depth: float = 0.5  # where in its layer (cysts), 0 top .. 1 bottom
    seed: int = 0  # texture of the lesion (mottling), independent of the B-scan's noise

    def cross_section(self, slice_index: float) -> float:
        """Scale of this lesion's cut by a slice: 0 outside, 1 through its centre (an ellipsoid)."""
        d = (slice_index - self.slice_centre) / self.slice_radius
        return float(np.sqrt(1.0 - d * d)) if abs(d) < 1.0 else 0.0


@dataclass
class Volume:
    """An eye: anatomy shared by its B-scans, its diagnosis and its lesions."""

    disease: str
    anatomy: dict
    lesions: list[Lesion] = field(default_factory=list)


def _difficulty_ranges(difficulty: float) -> dict:
    d = float(difficulty)
    return {
        # Lesion size multiplier and contrast ranges: the low end falls with difficulty.
        "size": (max(0.3, 1.0 - 0.3 * d), max(0.6, 1.2 - 0.1 * d)),
        "contrast": (max(0.25, 1.0 - 0.3 * d), 1.0),
        "speckle_sigma": 0.2 + 0.2 * d,
        "noise_sigma": 2.0 + 2.0 * d,
    }


def simulate_volume(rng: np.random.Generator, disease: str, config: SyntheticOCTConfig) -> Volume:
    """Draws one eye's anatomy and lesions.

    Example:

    ```python
    volume = simulate_volume(np.random.default_rng(0), "DME", SyntheticOCTConfig())
    ```
    """
    n = config.bscans_per_volume
    fovea_slice = (n - 1) / 2 + rng.normal(0, 0.04 * n)
    anatomy = {
        "bruch_depth": rng.uniform(0.52, 0.68),  # Bruch's membrane depth at the fovea (fraction of height)
        "curvature": rng.uniform(-0.02, 0.16),  # edges rise by this much (OCT's bowl-shaped retina)
        "tilt": rng.normal(0, 0.05),
        "thickness": rng.uniform(0.28, 0.36),  # ILM to Bruch's, fraction of height
        "choroid": rng.uniform(0.12, 0.22),
        "fovea_u": rng.normal(0, 0.12),
        "fovea_slice": fovea_slice,
        "fovea_slice_sigma": rng.uniform(0.05, 0.09) * n,
        "pit_width": rng.uniform(0.12, 0.2),
        "pit_depth": rng.uniform(0.65, 0.95),
        "nasal_sign": rng.choice((-1.0, 1.0)),  # right or left eye: RNFL thicker on the nasal side
        "attenuation": rng.uniform(0.35, 0.7),
        "vessels": [(rng.uniform(-0.95, 0.95), rng.uniform(0.012, 0.03), rng.uniform(0.25, 0.6))
                    for _ in range(rng.integers(1, 5))],  # (u, half width, shadow strength)
        # (u, depth in the choroid, half width, half height, lateral drift across slices)
        "choroid_vessels": [(rng.uniform(-1.1, 1.1), rng.uniform(0.3, 0.9), rng.uniform(0.04, 0.12),
                             rng.uniform(0.12, 0.3), rng.normal(0, 0.3)) for _ in range(rng.integers(6, 14))],
        # Normal variants that resemble small lesions: a gentle RPE ripple and a faint posterior hyaloid line.
        "rpe_ripple": (rng.uniform(0.0, 0.012), rng.uniform(6, 18), rng.uniform(0, 2 * np.pi)),
        "hyaloid": (rng.uniform(0.02, 0.1), rng.uniform(0.008, 0.025)) if rng.random() < 0.35 else None,
        # Scanner style (differs between devices and sessions): speckle grain size and axial blur.
        "grain": (rng.uniform(0.35, 0.9), rng.uniform(0.5, 1.5)),
        "axial_blur": rng.uniform(0.0, 0.7),
    }
    volume = Volume(disease=disease, anatomy=anatomy)
    if disease == NORMAL:
        return volume
    ranges = _difficulty_ranges(config.difficulty)

    def size() -> float:
        return rng.uniform(*ranges["size"])

    def contrast() -> float:
        return rng.uniform(*ranges["contrast"])

    def near_fovea(spread_slices: float, spread_u: float) -> tuple[float, float]:
        return (fovea_slice + rng.normal(0, spread_slices * n),
                float(np.clip(anatomy["fovea_u"] + rng.normal(0, spread_u), -0.85, 0.85)))

    # Lesion.height is a fraction of the retina's thickness, half_width a fraction of the half image width.
    lesions = volume.lesions
    if disease == "DME":
        for _ in range(rng.integers(2, 7)):
            s, u = near_fovea(0.07, 0.25)
            m = size()
            lesions.append(Lesion("cyst", s, rng.uniform(0.08, 0.2) * n * m, u, rng.uniform(0.04, 0.09) * m,
                                  rng.uniform(0.15, 0.4) * m, contrast(), depth=rng.uniform(0.2, 0.8)))
        for _ in range(rng.integers(0, 4)):
            s, u = near_fovea(0.08, 0.35)
            lesions.append(Lesion("exudate", s, rng.uniform(0.04, 0.1) * n, u, 0.035, 0.1, contrast()))
    elif disease == "CNV":
        s, u = near_fovea(0.04, 0.15)
        m = size()
        lesions.append(Lesion("ped", s, rng.uniform(0.12, 0.25) * n * m, u, rng.uniform(0.12, 0.25) * m,
                              rng.uniform(0.2, 0.4) * m, contrast()))
        if rng.random() < 0.75:
            s2, u2 = near_fovea(0.04, 0.15)
            m = size()
            lesions.append(Lesion("srf", s2, rng.uniform(0.1, 0.22) * n * m, u2, rng.uniform(0.12, 0.25) * m,
                                  rng.uniform(0.12, 0.3) * m, contrast()))
        if rng.random() < 0.6:
            lesions.append(Lesion("disruption", s, rng.uniform(0.08, 0.18) * n, u, rng.uniform(0.08, 0.18),
                                  0.2, contrast()))
    elif disease == "DRUSEN":
        for _ in range(rng.integers(3, 9)):
            s, _ = near_fovea(0.08, 0.0)
            m = size()
            u = float(np.clip(anatomy["fovea_u"] + rng.normal(0, 0.35), -0.9, 0.9))
            lesions.append(Lesion("druse", s, rng.uniform(0.08, 0.18) * n * m, u, rng.uniform(0.05, 0.1) * m,
                                  rng.uniform(0.1, 0.22) * m, contrast()))
    else:
        raise ValueError(f"unknown disease {disease!r}; expected one of {CLASSES}")
    for lesion in lesions:
        lesion.seed = int(rng.integers(2**31))
    return volume


def _visible_lesions(volume: Volume, slice_index: int, image_size: tuple[int, int], min_px: float):
    """The lesions drawn in a slice, each with its cross-section scale: those whose cut is at least ``min_px``
    high and ``2 * min_px`` wide at the output size."""
    height, width = image_size
    retina_px = volume.anatomy["thickness"] * height
    visible = []
    for lesion in volume.lesions:
        scale = lesion.cross_section(slice_index)
        if scale <= 0:
            continue
        height_px = lesion.height * scale * retina_px
        width_px = lesion.half_width * scale * width  # full width: half_width is in half-widths of the image
        if height_px >= min_px and width_px >= 2 * min_px:
            visible.append((lesion, scale))
    return visible


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _bump(u: np.ndarray, centre: float, half_width: float, power: float = 0.7) -> np.ndarray:
    """A smooth dome of height 1 at ``centre`` falling to 0 at ``centre +- half_width``."""
    x = np.clip(1.0 - ((u - centre) / max(half_width, 1e-6)) ** 2, 0.0, None)
    return x**power


def _smooth_noise(rng: np.random.Generator, shape, sigma_rows: float, sigma_cols: float) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over a few pixels (speckle grains are elongated laterally)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma_cols, sigmaY=sigma_rows, borderType=cv2.BORDER_REFLECT)
    return noise / max(float(noise.std()), 1e-6)


def render_bscan(volume: Volume, slice_index: int, rng: np.random.Generator, config: SyntheticOCTConfig):
    """Renders one B-scan of a volume.

    ``rng`` draws only the acquisition noise (speckle, gain, additive noise): rendering the same volume without
    its lesions from the same ``rng`` state gives the same image outside the lesions.

    Returns:
        ``(image, lesions)``: uint8 array ``(height, width)`` and the list of lesion kinds drawn (empty for a
        normal B-scan).

    Example:

    ```python
    rng = np.random.default_rng(0)
    volume = simulate_volume(rng, "CNV", SyntheticOCTConfig())
    image, kinds = render_bscan(volume, 64, rng, SyntheticOCTConfig())
    ```
    """
    height, width = config.image_size
    anat = volume.anatomy
    ranges = _difficulty_ranges(config.difficulty)
    u = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5

    # Per-column layer thicknesses in pixels.
    retina_px = anat["thickness"] * height
    thickness_px = retina_px * (1.0 + 0.06 * np.sin(2.3 * u + anat["tilt"] * 7))
    foveal_weight = np.exp(-0.5 * ((slice_index - anat["fovea_slice"]) / anat["fovea_slice_sigma"]) ** 2)
    pit = anat["pit_depth"] * foveal_weight * np.exp(-0.5 * ((u - anat["fovea_u"]) / anat["pit_width"]) ** 2)
    thick = {}
    for name, _, fraction in _LAYERS:
        if fraction is None:
            continue
        t = fraction * thickness_px
        if name in _INNER:
            t = t * (1.0 - pit)
        if name == "rnfl":  # thicker towards the optic nerve (nasal side)
            t = t * (0.6 + 0.9 * np.clip(0.5 + 0.5 * anat["nasal_sign"] * u, 0, 1))
        if name == "onl":
            t = t * (1.0 + 0.35 * pit)
        thick[name] = t.astype(np.float32)
    thick["choroid"] = np.full(width, anat["choroid"] * height, np.float32)
    ripple_amplitude, ripple_frequency, ripple_phase = anat["rpe_ripple"]
    ripple = ripple_amplitude * height * (0.5 + 0.5 * np.sin(ripple_frequency * u + ripple_phase + 0.05 * slice_index))
    thick["sub_rpe"] = thick["sub_rpe"] + ripple.astype(np.float32)

    drawn: list[str] = []
    peds = []
    srf_contrast = None
    cysts = []
    disruptions = []
    exudates = []
    # Elevations under the neural retina are partly absorbed by a thinner ONL (drusen barely move the inner
    # retina; a large detachment lifts it): the share absorbed per lesion kind.
    absorbed = {"druse": 0.85, "ped": 0.45, "srf": 0.35}
    for lesion, scale in _visible_lesions(volume, slice_index, config.image_size, config.min_lesion_px):
        drawn.append(lesion.kind)
        if lesion.kind == "srf":
            srf_contrast = lesion.contrast if srf_contrast is None else max(srf_contrast, lesion.contrast)
        if lesion.kind in ("srf", "ped", "druse"):
            power = {"srf": 0.7, "ped": 0.55, "druse": 0.9}[lesion.kind]
            rise = lesion.height * scale * retina_px * _bump(u, lesion.u, lesion.half_width * scale, power)
            layer = "srf" if lesion.kind == "srf" else "sub_rpe"
            thick[layer] = thick[layer] + rise.astype(np.float32)
            thick["onl"] = np.maximum(thick["onl"] - absorbed[lesion.kind] * rise, 0.25 * thick["onl"])
        if lesion.kind == "ped":
            peds.append(lesion)
        elif lesion.kind == "cyst":
            cysts.append((lesion, scale))
        elif lesion.kind == "disruption":
            disruptions.append((lesion, scale))
        elif lesion.kind == "exudate":
            exudates.append((lesion, scale))
    for lesion, scale in cysts:  # the retina swells around intraretinal fluid (a smooth, wider rise)
        layer = "inl" if lesion.depth < 0.35 else "onl"
        spread = max(lesion.half_width * scale * 2.5, 3.0 / width)
        swell = 0.6 * lesion.height * scale * thickness_px * np.exp(-0.5 * ((u - lesion.u) / spread) ** 2)
        thick[layer] = thick[layer] + swell.astype(np.float32)

    # Boundaries (top of each layer), stacked upward from Bruch's membrane (the bottom of sub_rpe).
    bruch = (anat["bruch_depth"] - anat["curvature"] * (u - anat["fovea_u"] * 0.3) ** 2 + anat["tilt"] * u) * height
    names = [name for name, _, _ in _LAYERS]
    tops = {}
    depth = bruch.astype(np.float32).copy()
    for name in reversed(names[: _LAYER_INDEX["sub_rpe"] + 1]):
        depth = depth - thick[name]
        tops[name] = depth.copy()
    tops["choroid"] = bruch.astype(np.float32)
    tops["sclera"] = (bruch + thick["choroid"]).astype(np.float32)
    ilm = tops["rnfl"]

    # Reflectivity: a sum of soft steps at each boundary (anti-aliased at sub-pixel positions).
    reflectivity = np.full((height, width), _VITREOUS_REFLECTIVITY, np.float32)
    previous = _VITREOUS_REFLECTIVITY
    for name, value, _ in _LAYERS:
        if name == "srf" and srf_contrast is not None:  # fainter fluid is less dark
            value = value + (1.0 - srf_contrast) * 0.25
        step = _sigmoid((rows - tops[name][None, :]) / 0.35)
        reflectivity += (value - previous) * step
        previous = value

    # Texture inside the choroid: dark vessel lumens.
    choroid_rows = (rows - tops["choroid"][None, :]) / np.maximum(thick["choroid"][None, :], 1.0)
    position = slice_index / max(config.bscans_per_volume - 1, 1)
    for cu, cz, ru, rz, drift in anat["choroid_vessels"]:
        cu = cu + drift * (position - 0.5)
        blob = np.exp(-0.5 * (((u[None, :] - cu) / ru) ** 2 + ((choroid_rows - cz) / rz) ** 2))
        reflectivity *= 1.0 - 0.65 * blob * (choroid_rows > 0)

    # Lesions drawn as intensity changes.
    layer_depth = rows - ilm[None, :]
    for lesion, scale in cysts:
        layer = "inl" if lesion.depth < 0.35 else "onl"
        top, bottom = tops[layer], tops[names[_LAYER_INDEX[layer] + 1]]
        col = int(np.clip((lesion.u + 1) / 2 * (width - 1), 0, width - 1))
        centre_row = top[col] + (0.3 + 0.4 * lesion.depth) * (bottom[col] - top[col])
        radius_rows = max(0.5 * lesion.height * scale * thickness_px[col], 0.75)
        radius_cols = max(lesion.half_width * scale * width / 2, 1.0)
        inside = ((rows - centre_row) / radius_rows) ** 2 + ((u[None, :] - lesion.u) * width / 2 / radius_cols) ** 2
        mask = _sigmoid((1.0 - inside) * 6.0)
        reflectivity = reflectivity * (1.0 - 0.97 * lesion.contrast * mask) + 0.01 * mask
    for lesion, scale in exudates:
        col = int(np.clip((lesion.u + 1) / 2 * (width - 1), 0, width - 1))
        centre_row = tops["opl"][col] + 0.5 * thick["opl"][col]
        radius = max(0.5 * lesion.height * scale * thickness_px[col], 0.8)
        distance2 = ((rows - centre_row) / radius) ** 2 + ((u[None, :] - lesion.u) * width / 2 / radius) ** 2
        spot = np.exp(-0.5 * distance2)
        reflectivity = reflectivity + 1.1 * lesion.contrast * spot
    for lesion, scale in disruptions:
        region = _bump(u, lesion.u, lesion.half_width * scale, 0.5)[None, :]
        outer = (rows >= tops["myoid"][None, :] - 1) & (rows < tops["rpe"][None, :] + 0.5 * thick["rpe"][None, :])
        mottle = 0.45 + 0.9 * np.random.default_rng([lesion.seed, slice_index]).random((height, width))
        reflectivity = np.where(outer, reflectivity * (1 - lesion.contrast * region * 0.8)
                                + lesion.contrast * region * 0.45 * mottle, reflectivity)
    for lesion in peds:  # fibrovascular PED: mottled, brighter than drusen material
        sub = (rows >= tops["sub_rpe"][None, :]) & (rows < tops["choroid"][None, :])
        mottle = 0.7 + 0.9 * np.random.default_rng([lesion.seed, slice_index]).random((height, width))
        reflectivity = np.where(sub, reflectivity * mottle, reflectivity)

    # Retinal vessels in the inner retina cast shadows downward.
    for vessel_u, half_width, strength in anat["vessels"]:
        vessel_u = vessel_u + 0.02 * np.sin(slice_index / 9.0)
        column = np.exp(-0.5 * ((u - vessel_u) / half_width) ** 2)[None, :]
        below = _sigmoid((layer_depth - 0.15 * thickness_px[None, :]) / 0.7)
        reflectivity = reflectivity * (1.0 - strength * column * below)
        core_row = ilm + 0.12 * thickness_px
        core = np.exp(-0.5 * (((rows - core_row[None, :]) / 1.0) ** 2)) * column
        reflectivity = reflectivity + 0.4 * core

    if anat["hyaloid"] is not None:  # a thin faint line floating above the retina
        gap, strength = anat["hyaloid"]
        line_row = ilm - gap * height * (1.0 + 0.5 * np.sin(1.7 * u + 0.03 * slice_index))
        reflectivity = reflectivity + strength * np.exp(-0.5 * ((rows - line_row[None, :]) / 0.6) ** 2)
    if anat["axial_blur"] > 0.05:
        reflectivity = cv2.GaussianBlur(reflectivity.astype(np.float32), (0, 0), sigmaX=0.3,
                                        sigmaY=anat["axial_blur"], borderType=cv2.BORDER_REFLECT)

    # Signal falls off with depth below the retinal surface.
    below_ilm = np.clip(layer_depth, 0, None) / height
    below_bruch = np.clip(rows - tops["choroid"][None, :], 0, None) / np.maximum(thick["choroid"][None, :], 1.0)
    reflectivity = reflectivity * np.exp(-below_ilm / anat["attenuation"] - 0.9 * below_bruch)

    # Speckle (multiplicative, log-normal), log compression, per-B-scan gain and additive noise.
    speckle_sigma = ranges["speckle_sigma"] * config.speckle * rng.uniform(0.8, 1.2)
    speckle = np.exp(speckle_sigma * _smooth_noise(rng, (height, width), *anat["grain"]) - 0.5 * speckle_sigma**2)
    dynamic_range = rng.uniform(150.0, 500.0)
    signal = np.log1p(dynamic_range * reflectivity * speckle) / np.log1p(dynamic_range)
    gamma = rng.uniform(0.8, 1.25)
    gain = rng.uniform(200.0, 290.0)
    offset = rng.uniform(-30.0, 0.0)
    pixels = gain * np.clip(signal, 0, None) ** gamma + offset
    pixels = pixels + rng.normal(0.0, ranges["noise_sigma"] * rng.uniform(0.6, 1.4), (height, width))
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return image, drawn


def _sample_slices(rng: np.random.Generator, config: SyntheticOCTConfig, fovea_slice: float) -> np.ndarray:
    n = config.bscans_per_volume
    k = config.bscans_sampled_per_volume
    if k is None or k >= n:
        return np.arange(n)
    weights = np.exp(-0.5 * ((np.arange(n) - fovea_slice) / (0.14 * n)) ** 2) + 0.02
    return np.sort(rng.choice(n, size=k, replace=False, p=weights / weights.sum()))


def render_volume(volume: Volume, config: SyntheticOCTConfig, rng: np.random.Generator, slices=None):
    """Renders B-scans of a volume (all of them by default).

    Returns:
        ``(images, labels, kinds)``: uint8 ``(n, height, width)``, the class name of each B-scan and the lesion
        kinds drawn in each.

    Example:

    ```python
    config = SyntheticOCTConfig()
    rng = np.random.default_rng(0)
    images, labels, _ = render_volume(simulate_volume(rng, "DRUSEN", config), config, rng)  # 128 B-scans
    ```
    """
    slices = range(config.bscans_per_volume) if slices is None else slices
    images, labels, kinds = [], [], []
    for s in slices:
        image, drawn = render_bscan(volume, int(s), rng, config)
        images.append(image)
        labels.append(volume.disease if drawn else NORMAL)
        kinds.append(drawn)
    return np.stack(images), labels, kinds


def _patient_ids(rng: np.random.Generator, count: int) -> list[int]:
    # Seven-digit ids like OCT2017's, unique across the whole dataset.
    return [int(x) for x in rng.choice(np.arange(1_000_000, 10_000_000), size=count, replace=False)]


def _write_image(path: Path, image: np.ndarray, image_format: str):
    ext = ".png" if image_format == "png" else ".jpeg"
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpeg" else []
    ok, encoded = cv2.imencode(ext, image, params)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    path.write_bytes(encoded.tobytes())


def _matches(root: Path, config: SyntheticOCTConfig) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return data.get("fingerprint") == config.fingerprint() and data.get("complete") is True


def generate_synthetic_oct(
    out_dir: str | os.PathLike | None = None,
    config: SyntheticOCTConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Writes (or finds in the cache) a synthetic OCT dataset in the OCT2017 layout.

    Args:
        out_dir: dataset folder; ``None`` uses ``default_cache_dir()/synthetic_oct/<config fingerprint>``.
        config: generator parameters (``SyntheticOCTConfig()`` by default: 64x64, 200 patients, 3,200 B-scans).
            The pool's labels are written only to ``index.csv`` and ``unlabeled_truth.csv`` at the root, never
            under ``unlabeled/``.
        overwrite: regenerate even if ``out_dir`` already holds this config; a folder holding a different
            config (or anything else) is refused unless ``overwrite`` is set.
        progress: show a progress bar.

    Returns:
        The dataset folder (see the module docstring for its layout).

    Example:

    ```python
    root = generate_synthetic_oct(config=SyntheticOCTConfig(difficulty=1.5, seed=3))
    print(json.loads((root / "manifest.json").read_text())["counts"])
    ```
    """
    config = config or SyntheticOCTConfig()
    root = Path(out_dir) if out_dir is not None else default_cache_dir() / "synthetic_oct" / config.fingerprint()
    if _matches(root, config) and not overwrite:
        return root
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{root}: folder exists and does not hold this synthetic OCT config; pass overwrite=True or "
                "another out_dir"
            )
        if not (root / "manifest.json").is_file():
            raise FileExistsError(f"{root}: refusing to overwrite a folder that is not a synthetic dataset")
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Write into a sibling temporary folder and rename at the end, so an interrupted run never leaves a
    # half-written dataset that looks complete.
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        counts = _generate_into(staging, config, progress)
        elapsed = time.perf_counter() - start
        manifest = {
            "generator": "kd_keras.data.synthetic_oct",
            "generator_version": GENERATOR_VERSION,
            "fingerprint": config.fingerprint(),
            "seed": config.seed,
            "config": config.to_dict(),
            "classes": list(CLASSES),
            "normal_class": NORMAL,
            "layout": {"labeled": "labeled/<CLASS>/<CLASS>-<patient>-<n>.<ext>",
                       "unlabeled": f"unlabeled/{POOL_PREFIX}-<patient>-<n>.<ext>",
                       "test": "test/<CLASS>/<CLASS>-<patient>-<n>.<ext>"},
            "counts": counts,
            "generation_seconds": round(elapsed, 2),
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


def _generate_into(root: Path, config: SyntheticOCTConfig, progress: bool) -> dict:
    master = np.random.default_rng(config.seed)
    splits = (("labeled", config.labeled_patients), ("unlabeled", config.unlabeled_patients),
              ("test", config.test_patients))
    ids = _patient_ids(master, sum(count for _, count in splits))
    mix = np.asarray(config.disease_mix, dtype=np.float64)
    mix = mix / mix.sum()
    ext = "png" if config.image_format == "png" else "jpeg"
    for split in ("labeled", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    (root / "unlabeled").mkdir(parents=True, exist_ok=True)

    total_patients = len(ids)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_patients, desc="synthetic OCT patients", unit="patient")
    rows = []
    counts: dict = {split: {"patients": count, "volumes": count * config.volumes_per_patient, "images": 0,
                            "by_class": dict.fromkeys(CLASSES, 0), "by_disease": dict.fromkeys(CLASSES, 0)}
                    for split, count in splits}
    patient_index = 0
    for split, count in splits:
        for _ in range(count):
            patient = ids[patient_index]
            number = 1
            for eye in range(config.volumes_per_patient):
                # One generator per volume, keyed by its position: volumes do not depend on each other.
                rng = np.random.default_rng([config.seed, patient_index, eye])
                disease = CLASSES[int(rng.choice(len(CLASSES), p=mix))]
                volume = simulate_volume(rng, disease, config)
                slices = _sample_slices(rng, config, volume.anatomy["fovea_slice"])
                images, labels, kinds = render_volume(volume, config, rng, slices)
                counts[split]["by_disease"][disease] += len(images)
                for image, label, drawn, s in zip(images, labels, kinds, slices, strict=True):
                    if split == "unlabeled":
                        relative = Path("unlabeled") / f"{POOL_PREFIX}-{patient}-{number}.{ext}"
                    else:
                        relative = Path(split) / label / f"{label}-{patient}-{number}.{ext}"
                    _write_image(root / relative, image, config.image_format)
                    rows.append({"file": relative.as_posix(), "split": split, "patient": patient,
                                 "volume": f"{patient}-{eye}", "slice": int(s), "label": label,
                                 "disease": disease, "lesions": "+".join(sorted(set(drawn)))})
                    counts[split]["images"] += 1
                    counts[split]["by_class"][label] += 1
                    number += 1
            patient_index += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    counts["total_images"] = sum(counts[split]["images"] for split, _ in splits)
    fields = ["file", "split", "patient", "volume", "slice", "label", "disease", "lesions"]
    with open(root / "index.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(root / "unlabeled_truth.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "patient"])
        for row in rows:
            if row["split"] == "unlabeled":
                writer.writerow([row["file"], row["label"], row["patient"]])
    return counts


def _read_split(root: Path, split: str):
    """Images (float32, ``(n, h, w, 1)``), binary labels (abnormal = 1) and patients of a split, from index.csv."""
    images, labels, patients = [], [], []
    with open(root / "index.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] != split:
                continue
            image = cv2.imdecode(np.fromfile(root / row["file"], np.uint8), cv2.IMREAD_GRAYSCALE)
            images.append(image)
            labels.append(int(row["label"] != NORMAL))
            patients.append(row["patient"])
    return np.stack(images)[..., None].astype(np.float32), np.asarray(labels), np.asarray(patients)


def _histogram_features(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1)
    hist = np.stack([np.histogram(x, bins=32, range=(0, 256))[0] for x in flat]) / flat.shape[1]
    stats = np.stack([flat.mean(1), flat.std(1), *np.percentile(flat, [5, 25, 50, 75, 95], axis=1)], 1) / 255.0
    return np.concatenate([hist, stats], axis=1)


def difficulty_check(root: str | os.PathLike, steps: int = 800, seed: int = 0) -> dict:
    """Evidence that a synthetic dataset is learnable, not solvable from global statistics, and data-hungry.

    Binary normal-vs-abnormal, AUC on the test split, for (1) logistic regression on global intensity statistics
    (32-bin histogram, mean, std, percentiles) and (2) a small CNN (4 conv blocks, ~25k parameters) trained for
    the same number of steps (batch 64, flips and vertical shifts) on the labeled split alone and on labeled +
    pool with the pool's true labels (the ceiling of pseudo-labelling). A good default shows
    histogram << CNN and CNN(labeled) < CNN(labeled + pool). Takes a few minutes on 2 CPU cores.

    Example:

    ```python
    print(difficulty_check(generate_synthetic_oct()))
    ```
    """
    import keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = Path(root)
    x_lab, y_lab, _ = _read_split(root, "labeled")
    x_pool, y_pool, _ = _read_split(root, "unlabeled")  # true labels, from index.csv
    x_test, y_test, _ = _read_split(root, "test")
    results = {"images": {"labeled": len(x_lab), "pool": len(x_pool), "test": len(x_test)},
               "abnormal_fraction_test": round(float(y_test.mean()), 3), "cnn_steps": steps}
    train_sets = {"labeled": (x_lab, y_lab),
                  "labeled+pool": (np.concatenate([x_lab, x_pool]), np.concatenate([y_lab, y_pool]))}
    for name, (x, y) in train_sets.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(_histogram_features(x), y)
        score = model.predict_proba(_histogram_features(x_test))[:, 1]
        results[f"histogram_logreg_auc[{name}]"] = round(float(roc_auc_score(y_test, score)), 3)
    layers = keras.layers
    for name, (x, y) in train_sets.items():
        keras.utils.set_random_seed(seed)
        inputs = keras.Input(x.shape[1:])
        h = layers.Rescaling(1 / 255.0)(inputs)
        for filters in (16, 24, 32, 48):
            h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
            h = layers.BatchNormalization()(h)
            h = layers.ReLU()(h)
            h = layers.MaxPooling2D()(h)
        h = layers.GlobalAveragePooling2D()(h)
        model = keras.Model(inputs, layers.Dense(1)(h))
        model.compile(keras.optimizers.Adam(2e-3), keras.losses.BinaryCrossentropy(from_logits=True))
        augment = keras.Sequential([layers.RandomFlip("horizontal", seed=seed),
                                    layers.RandomTranslation(0.08, 0.0, fill_mode="constant", seed=seed)])
        rng = np.random.default_rng(seed)
        curve = []
        for step in range(steps):
            batch = rng.choice(len(x), size=min(64, len(x)), replace=False)
            model.train_on_batch(augment(x[batch], training=True), y[batch].astype(np.float32))
            if (step + 1) % max(1, steps // 4) == 0:
                score = model.predict(x_test, batch_size=256, verbose=0)[:, 0]
                curve.append(round(float(roc_auc_score(y_test, score)), 3))
        results[f"small_cnn_auc[{name}]"] = curve[-1]
        results[f"small_cnn_auc_curve[{name}]"] = curve  # at 1/4, 1/2, 3/4 and all of the steps
    return results


def main(argv=None):
    """Command line: ``python -m kd_keras.data.synthetic_oct [--out DIR] [--difficulty D] [--check]``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="dataset folder (default: the cache)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--difficulty", type=float, default=1.0)
    parser.add_argument("--labeled-patients", type=int, default=SyntheticOCTConfig.labeled_patients)
    parser.add_argument("--unlabeled-patients", type=int, default=SyntheticOCTConfig.unlabeled_patients)
    parser.add_argument("--test-patients", type=int, default=SyntheticOCTConfig.test_patients)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--check", action="store_true", help="run difficulty_check and print its AUCs")
    args = parser.parse_args(argv)
    config = SyntheticOCTConfig(image_size=(args.size, args.size), difficulty=args.difficulty, seed=args.seed,
                                labeled_patients=args.labeled_patients, unlabeled_patients=args.unlabeled_patients,
                                test_patients=args.test_patients)
    root = generate_synthetic_oct(args.out, config, overwrite=args.overwrite, progress=True)
    manifest = json.loads((root / "manifest.json").read_text())
    print(f"{root}: {manifest['counts']['total_images']} B-scans, generated in {manifest['generation_seconds']} s")
    if args.check:
        print(json.dumps(difficulty_check(root), indent=2))


if __name__ == "__main__":
    main()
