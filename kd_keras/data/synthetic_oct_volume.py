"""Synthetic OCT, part 1: the dataset's configuration and the simulated eyes (anatomy, diagnosis, 3-D lesions).

:mod:`kd_keras.data.synthetic_oct` describes the whole generator and writes the dataset; the B-scans are drawn by
:mod:`kd_keras.data.synthetic_oct_render`.

Example:

```python
import numpy as np
from kd_keras.data.synthetic_oct_volume import SyntheticOCTConfig, simulate_volume

volume = simulate_volume(np.random.default_rng(0), "DME", SyntheticOCTConfig())
print(volume.disease, len(volume.lesions))
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

GENERATOR_VERSION = 1  # bump when the images a config produces change, so caches are rebuilt
CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
NORMAL = "NORMAL"
POOL_PREFIX = "OCT"  # unlabeled file names: OCT-<patient>-<n>.png (no class in the name)


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
        validation_patients: other patients, labeled, written under ``validation/`` for choosing models (a
            study adds them to its validation set: inference only, never trained on). 0 (default) writes none,
            and the dataset (files and cache key) is then what it was before this option existed.
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
    validation_patients: int = 0
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
        if min(self.labeled_patients, self.unlabeled_patients, self.test_patients, self.validation_patients) < 0:
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
        fields = self.to_dict()
        if not fields["validation_patients"]:  # the key of every dataset generated before the option
            del fields["validation_patients"]
        payload = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True)
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



def difficulty_ranges(difficulty: float) -> dict:
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
    ranges = difficulty_ranges(config.difficulty)

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


