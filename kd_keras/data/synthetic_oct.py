"""Seeded synthetic retinal OCT: the embedded default dataset of the main job.

A stand-in for OCT2017 (Kermany et al.) that needs no download, written in the same layout so the same loaders,
patient rule and splits read it:

```
<root>/
  labeled/{CNV,DME,DRUSEN,NORMAL}/CNV-1234567-17.png    # class folders, CLASS-<patient>-<n>.png
  unlabeled/OCT-2345678-3.png                           # pool from other patients, no label in the path
  test/{CNV,DME,DRUSEN,NORMAL}/...                       # held-out patients
  validation/{CNV,DME,DRUSEN,NORMAL}/...                 # only with validation_patients > 0: more patients
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

The code is in three modules: :mod:`~kd_keras.data.synthetic_oct_volume` (the config and the simulated eyes),
:mod:`~kd_keras.data.synthetic_oct_render` (drawing B-scans) and this one (writing the dataset, the cache, the
difficulty check and the command line), which re-exports the other two's public names.

Example:

```python
from kd_keras.data.synthetic_oct import SyntheticOCTConfig, generate_synthetic_oct

root = generate_synthetic_oct()  # cached under ~/.cache/kd_keras (or $KD_KERAS_CACHE)
labeled_dir, pool_dir, test_dir = root / "labeled", root / "unlabeled", root / "test"
```
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from kd_keras.data.synthetic_oct_render import (
    render_bscan,
    render_volume,
    sample_slices,
)
from kd_keras.data.synthetic_oct_volume import (
    CLASSES,
    GENERATOR_VERSION,
    NORMAL,
    POOL_PREFIX,
    Lesion,
    SyntheticOCTConfig,
    Volume,
    simulate_volume,
)

__all__ = [
    "CLASSES",
    "GENERATOR_VERSION",
    "NORMAL",
    "POOL_PREFIX",
    "Lesion",
    "SyntheticOCTConfig",
    "Volume",
    "default_cache_dir",
    "difficulty_check",
    "generate_synthetic_oct",
    "main",
    "render_bscan",
    "render_volume",
    "simulate_volume",
]


def default_cache_dir() -> Path:
    """Where generated datasets are cached: ``$KD_KERAS_CACHE`` or ``~/.cache/kd_keras``.

    Example:

    ```python
    print(default_cache_dir() / "synthetic_oct")
    ```
    """
    return Path(os.environ.get("KD_KERAS_CACHE", Path.home() / ".cache" / "kd_keras")).expanduser()


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
                       "test": "test/<CLASS>/<CLASS>-<patient>-<n>.<ext>",
                       **({"validation": "validation/<CLASS>/<CLASS>-<patient>-<n>.<ext>"}
                          if config.validation_patients else {})},
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
    if config.validation_patients:
        # Drawn after the others and generated last (volumes are keyed by their position), so the labeled, pool
        # and test images and their patients are those of the same config without validation patients.
        splits += (("validation", config.validation_patients),)
        wanted, taken = config.validation_patients, set(ids)
        while wanted:
            fresh = [i for i in _patient_ids(master, wanted) if i not in taken][:wanted]
            ids, wanted = ids + fresh, wanted - len(fresh)
            taken.update(fresh)
    mix = np.asarray(config.disease_mix, dtype=np.float64)
    mix = mix / mix.sum()
    ext = "png" if config.image_format == "png" else "jpeg"
    for split in [split for split, _ in splits if split != "unlabeled"]:
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
                slices = sample_slices(rng, config, volume.anatomy["fovea_slice"])
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
    parser.add_argument("--validation-patients", type=int, default=SyntheticOCTConfig.validation_patients)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--check", action="store_true", help="run difficulty_check and print its AUCs")
    args = parser.parse_args(argv)
    config = SyntheticOCTConfig(image_size=(args.size, args.size), difficulty=args.difficulty, seed=args.seed,
                                labeled_patients=args.labeled_patients, unlabeled_patients=args.unlabeled_patients,
                                test_patients=args.test_patients, validation_patients=args.validation_patients)
    root = generate_synthetic_oct(args.out, config, overwrite=args.overwrite, progress=True)
    manifest = json.loads((root / "manifest.json").read_text())
    print(f"{root}: {manifest['counts']['total_images']} B-scans, generated in {manifest['generation_seconds']} s")
    if args.check:
        print(json.dumps(difficulty_check(root), indent=2))


if __name__ == "__main__":
    main()
