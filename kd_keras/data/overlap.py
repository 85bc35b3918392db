"""The same image in two places: by path, by resolved path (symlinks, hard links) or by identical bytes.

A held-out image that is also in the training data (an unlabeled pool that contains the test folder, a test set
copied into the labeled folder, one picture filed under two classes) makes every number of a run meaningless, and
nothing in training would notice. :func:`find_same_images` finds such images across named sets of files, fast
enough to run before every run:

- every file is ``stat``-ed once: two rows with the same device and inode are the same file, whatever the path
  (the same path twice, a symlink, a hard link, a folder reached twice);
- only files whose *sizes* collide are read and hashed (BLAKE2b), so the bytes of a typical set of photographs
  or B-scans, where sizes rarely collide, are hardly read at all.

Example:

```python
from kd_keras.data.overlap import find_same_images

groups = find_same_images({"pool": pool.paths, "test": test.paths})
leaks = [g for g in groups if {"pool", "test"} <= g.sets()]
print(leaks[0].how, leaks[0].paths())  # "identical bytes", ['/pool/a.png', '/data/test/NORMAL/a.png']
```
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SAME_IMAGE_KINDS", "SameImage", "example_pairs", "find_same_images", "images_under_two_labels"]

SAME_IMAGE_KINDS = ("same path", "same file", "identical bytes")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SameImage:
    """Rows of several sets that hold one image.

    Attributes:
        members: ``(set name, row, path)`` of each copy, in the order of the sets given.
        how: ``"same path"`` (one path listed twice), ``"same file"`` (different paths to one file: a symlink,
            a hard link) or ``"identical bytes"`` (different files with the same content).
    """

    members: tuple[tuple[str, int, str], ...]
    how: str

    def sets(self) -> set[str]:
        """The names of the sets this image is in."""
        return {name for name, _, _ in self.members}

    def rows(self, name: str) -> list[int]:
        """The rows of set ``name`` that hold this image."""
        return [row for member, row, _ in self.members if member == name]

    def paths(self) -> list[str]:
        """Every path of the image (unique, in order)."""
        return list(dict.fromkeys(path for _, _, path in self.members))


def _digest(path: str) -> bytes | None:
    hasher = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                hasher.update(block)
    except OSError:
        return None
    return hasher.digest()


def find_same_images(sets: Mapping[str, Sequence[str]], *, compare_bytes: bool = True) -> list[SameImage]:
    """Groups of rows, in one set or across sets, that hold the same image.

    Args:
        sets: set name -> file paths (a set may be empty; files that cannot be ``stat``-ed are left out).
        compare_bytes: also match different files with identical bytes (hashing only files whose sizes
            collide); ``False`` matches paths and files only.

    Returns:
        One :class:`SameImage` per image found in two or more rows (in one set or several).

    Example:

    ```python
    groups = find_same_images({"train": ["/d/NORMAL/a.png"], "pool": ["/d/NORMAL/a.png", "/p/b.png"]})
    [(g.how, sorted(g.sets())) for g in groups]  # [("same path", ["pool", "train"])]
    ```
    """
    by_file: dict[tuple[int, int], list[tuple[str, int, str]]] = defaultdict(list)
    size_of: dict[tuple[int, int], int] = {}
    for name, paths in sets.items():
        for row, path in enumerate(paths):
            path = os.path.normpath(os.fspath(path))
            try:
                info = os.stat(path)
            except OSError:
                continue
            key = (info.st_dev, info.st_ino)
            by_file[key].append((name, row, path))
            size_of[key] = info.st_size
    # Files (not rows) with equal sizes and equal bytes are one image.
    image_of = {key: key for key in by_file}
    if compare_bytes:
        by_size: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for key, size in size_of.items():
            by_size[size].append(key)
        for size, keys in by_size.items():
            if len(keys) < 2 or size == 0:
                continue
            first_with: dict[bytes, tuple[int, int]] = {}
            for key in keys:
                digest = _digest(by_file[key][0][2])
                if digest is not None:
                    image_of[key] = first_with.setdefault(digest, key)
    images: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for key, image in image_of.items():
        images[image].append(key)
    groups = []
    for keys in images.values():
        members = [member for key in keys for member in by_file[key]]
        if len(members) < 2:
            continue
        if len(keys) > 1:
            how = "identical bytes"
        elif len({path for _, _, path in members}) == 1:
            how = "same path"
        else:
            how = "same file"
        order = {name: i for i, name in enumerate(sets)}
        members.sort(key=lambda m: (order[m[0]], m[1]))
        groups.append(SameImage(tuple(members), how))
    return groups


def images_under_two_labels(records) -> list[SameImage]:
    """Images of a labeled :class:`~kd_keras.data.records.Records` (single-label) found under two or more of
    its classes: one file reached twice, or identical bytes in two class folders.

    Example:

    ```python
    for group in images_under_two_labels(from_class_folders("chest_xray/train")):
        print(sorted(group.sets()), group.paths())  # ['NORMAL', 'PNEUMONIA'] ['/.../a.jpeg', '/.../b.jpeg']
    ```
    """
    if records.paths is None:
        return []
    labels = np.asarray(records.labels)
    rows_of = {name: np.flatnonzero(labels == i) for i, name in enumerate(records.class_names)}
    sets = {name: [records.paths[i] for i in rows] for name, rows in rows_of.items()}
    groups = [g for g in find_same_images(sets) if len(g.sets()) > 1]
    # Rows back to positions in ``records``.
    return [SameImage(tuple((name, int(rows_of[name][row]), path) for name, row, path in g.members), g.how)
            for g in groups]


def example_pairs(groups: Sequence[SameImage], limit: int = 2) -> str:
    """``"a.png = b.png (identical bytes); ..."`` for the first ``limit`` groups: examples in one line."""
    shown = []
    for group in list(groups)[:limit]:
        paths = group.paths()
        if len(paths) == 1:
            paths = paths * 2
        shown.append(f"{paths[0]} = {paths[1]} ({group.how})")
    return "; ".join(shown)
