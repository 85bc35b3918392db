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

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "DR_GRADES",
    "FILE_COLUMNS",
    "IGNORED_NAMES",
    "IMAGE_SUFFIXES",
    "LABEL_COLUMNS",
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
    "messidor",
    "scan_images",
]
