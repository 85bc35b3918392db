"""Synthetic OCT, part 2: drawing B-scans of a simulated eye (layers, lesions, vessels, speckle, scanner style).

See :mod:`kd_keras.data.synthetic_oct` for what the images show and why.

Example:

```python
import numpy as np
from kd_keras.data.synthetic_oct_render import render_volume
from kd_keras.data.synthetic_oct_volume import SyntheticOCTConfig, simulate_volume

config = SyntheticOCTConfig()
rng = np.random.default_rng(0)
images, labels, lesion_kinds = render_volume(simulate_volume(rng, "CNV", config), config, rng)
```
"""

from __future__ import annotations

import cv2
import numpy as np

from kd_keras.data.synthetic_oct_volume import NORMAL, SyntheticOCTConfig, Volume, difficulty_ranges

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
    ranges = difficulty_ranges(config.difficulty)
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


def sample_slices(rng: np.random.Generator, config: SyntheticOCTConfig, fovea_slice: float) -> np.ndarray:
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


