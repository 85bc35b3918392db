"""Data sources: the layouts public datasets ship in, resolved to a :class:`~kd_keras.data.records.Records` table.

Labeled sources:

- :func:`from_class_folders`: one folder per class (OCT2017 ``CNV/DME/DRUSEN/NORMAL``, chest X-ray
  ``NORMAL/PNEUMONIA``), optionally under ``train/``, ``val/``, ``test/`` subfolders (kept as ``given_split``).
  Class folders may nest subfolders.
- :func:`from_csv`: a manifest with a file (or id) column, one label column or several (multi-label), and
  optional patient and split columns. Presets: :func:`eyepacs` (``trainLabels.csv``: ``image,level``),
  :func:`messidor` (Messidor's ``Image name, Retinopathy grade`` sheets exported to CSV, or Messidor-2's
  ``image_id, adjudicated_dr_grade``), :func:`chexpert` (14 observations, uncertain ``-1`` labels mapped by a
  policy: ``"zeros"`` (U-zero, the default, as study 004), ``"ones"`` (U-ones) or ``"ignore"`` (kept as -1 for a
  masking loss)).
- :func:`from_npz`: MedMNIST-style arrays ``<split>_images`` / ``<split>_labels``.

Unlabeled sources (the pool): :func:`from_folder` (any folder tree, recursive) and :func:`from_list_file` (one path
per line).

Every source checks paths as it resolves them: files that are missing, empty, not regular files, or outside the
data root (``../``, absolute paths, symlinks) are skipped and reported in ``records.report`` (or refused with
``on_bad_file="raise"``); hidden files, ``__MACOSX`` and non-image files are noted and not used. A source that
resolves to nothing, an empty class folder or a table without the named columns is refused with one line (see
:mod:`kd_keras.data.validate`). Pixels are only checked by :func:`kd_keras.data.validate.check_files` and, at the
latest, by the pipeline.

This module is the public entry point; the code lives in :mod:`~kd_keras.data.source_files` (scanning and path
checks), :mod:`~kd_keras.data.source_folders` (folder layouts), :mod:`~kd_keras.data.source_tables` (CSV
manifests and list files) and :mod:`~kd_keras.data.source_npz` (``.npz`` arrays).

Example:

```python
from kd_keras.data import sources, tasks

cxr = sources.from_class_folders("chest_xray/train")                # NORMAL 1,341, PNEUMONIA 3,875
oct_binary = tasks.normal_vs_abnormal(sources.from_class_folders("OCT2017/train"))
dr = tasks.referable_dr(sources.eyepacs("trainLabels.csv", "train/"))
pool = sources.from_folder("OCT2017_unlabeled/")                     # unlabeled, recursive
```
"""

from kd_keras.data.records import Records
from kd_keras.data.source_files import IGNORED_NAMES, IMAGE_SUFFIXES, SPLIT_FOLDERS, scan_images
from kd_keras.data.source_folders import from_class_folders, from_folder
from kd_keras.data.source_npz import from_npz
from kd_keras.data.source_tables import (
    CHEXPERT_OBSERVATIONS,
    DR_GRADES,
    FILE_COLUMNS,
    LABEL_COLUMNS,
    MESSIDOR_GRADES,
    UNCERTAIN_POLICIES,
    chexpert,
    eyepacs,
    from_csv,
    from_list_file,
    messidor,
)

LAYOUTS = ("folders", "eyepacs", "messidor", "chexpert", "csv", "npz")


def load_labeled(
    layout: str,
    path: str,
    *,
    image_dir: str | None = None,
    task: str | None = "auto",
    uncertain: str = "zeros",
    npz_split: str = "train",
) -> Records:
    """A labeled source in any layout on disk, with its task applied: the one loader every study uses.

    Args:
        layout: ``"folders"`` (one folder per class), ``"eyepacs"`` (``trainLabels.csv``), ``"messidor"`` (the
            Messidor / Messidor-2 sheet as CSV), ``"chexpert"`` (CheXpert ``train.csv``), ``"csv"`` (a generic
            manifest) or ``"npz"`` (MedMNIST-style arrays).
        path: the folder, CSV or ``.npz`` file.
        image_dir: where a CSV's images are (default: next to the CSV).
        task: ``"auto"`` (DR grades for eyepacs/messidor, the classes as given otherwise), a task name of
            :func:`kd_keras.data.tasks.apply_task` (``"referable_dr"``, ``"normal_vs_abnormal"``, ...), or
            ``None`` for the labels exactly as the layout gives them.
        uncertain: CheXpert's uncertain-label policy (:data:`UNCERTAIN_POLICIES`).
        npz_split: the split of an ``.npz`` file.

    Raises:
        ValueError: an unknown layout or task (one line); the readers' own errors for missing or bad data.

    Example:
        >>> records = load_labeled("eyepacs", "trainLabels.csv", image_dir="train", task="referable_dr")
    """
    from kd_keras.data import tasks

    readers = {
        "folders": lambda: from_class_folders(path),
        "eyepacs": lambda: eyepacs(path, image_dir),
        "messidor": lambda: messidor(path, image_dir),
        "chexpert": lambda: chexpert(path, image_dir, uncertain=uncertain),
        "csv": lambda: from_csv(path, image_dir),
        "npz": lambda: from_npz(path, split=npz_split),
    }
    if layout not in readers:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    records = readers[layout]()
    if task is None:
        return records
    if task == "auto":
        if layout in ("eyepacs", "messidor"):
            return tasks.dr_grades(records, n_grades=max(int(records.labels.max()) + 1, 2))
        return records
    return tasks.apply_task(records, task)


__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "DR_GRADES",
    "FILE_COLUMNS",
    "IGNORED_NAMES",
    "IMAGE_SUFFIXES",
    "LABEL_COLUMNS",
    "LAYOUTS",
    "MESSIDOR_GRADES",
    "SPLIT_FOLDERS",
    "UNCERTAIN_POLICIES",
    "chexpert",
    "eyepacs",
    "from_class_folders",
    "from_csv",
    "from_folder",
    "from_list_file",
    "from_npz",
    "load_labeled",
    "messidor",
    "scan_images",
]
