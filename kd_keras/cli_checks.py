"""Checks every ``kd-keras`` command makes of its options before it does any work (issue 16): one line naming the
option and the file, exit status 2, at the speed of a refusal.

- :class:`OneLineArgumentParser`: ``argparse`` whose errors are one ``error:`` line (not the usage block);
- :func:`output_folder`: ``--out`` is, or can become, a folder this process can write (not a file, not read-only);
- :func:`output_file_stem`: the folder of an output stem (``<out>.json``) can be written;
- :func:`model_file_problem`: a ``.keras`` / ``.tflite`` / ``.onnx`` file is what its suffix says (read from its
  first bytes, nothing loaded);
- :func:`at_least` and :func:`fraction`: numbers in range, for ``argparse`` ``type=``.

Nothing here imports TensorFlow.

Example:

```python
from kd_keras.cli_checks import OneLineArgumentParser, at_least, output_folder

parser = OneLineArgumentParser(prog="kd-keras export")
parser.add_argument("--batch-size", type=at_least(1), default=32)
args = parser.parse_args(argv)   # "error: kd-keras export: argument --batch-size: must be >= 1, got 0"
output_folder(args.out)          # CommandError("--out runs/x: exists and is not a folder")
```
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import NoReturn

__all__ = ["MODEL_SUFFIXES", "CommandError", "OneLineArgumentParser", "at_least", "fraction", "model_file_problem",
           "output_file_stem", "output_folder"]

MODEL_SUFFIXES = (".keras", ".tflite", ".onnx")


class CommandError(ValueError):
    """Bad input to a command; ``str(error)`` is one line naming the option or file."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr, ``error: <prog>: <problem> (<prog> --help)``,
    and exit status 2 (``--help`` still prints the whole usage)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {' '.join(message.split())} ({self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def at_least(lowest: float, kind: type = int):
    """An ``argparse`` type: a ``kind`` number ``>= lowest``.

    Example:
        >>> at_least(1)("3")
        3
    """

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
        return value

    parse.__name__ = f"number >= {lowest}"
    return parse


def fraction(text: str) -> float:
    """An ``argparse`` type: a number in [0, 1].

    Example:
        >>> fraction("0.5")
        0.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


def _write_problem(folder: Path) -> str | None:
    """Why this process cannot create files in the existing ``folder`` (``None``: it can)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kd-keras-write-check-"):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as an output folder: created if missing (with its parents), refused when it is a file or cannot be
    written (read-only, no permission, a file on the way).

    Raises:
        CommandError: one line naming ``option`` and the path.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"{option} {folder}: exists and is not a folder; pass a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"{option} {folder}: cannot create the folder ({error.strerror or error})") from None
    problem = _write_problem(folder)
    if problem:
        raise CommandError(f"{option} {folder}: cannot write into the folder ({problem})")
    return folder


def output_file_stem(stem: str | os.PathLike, suffixes: tuple[str, ...], option: str = "--out") -> Path:
    """An output stem (``<stem>.json``, ...): its folder is an :func:`output_folder`, and no ``<stem><suffix>``
    is a folder."""
    stem = Path(stem)
    output_folder(stem.parent if str(stem.parent) else Path("."), option)
    for suffix in suffixes:
        target = stem.with_name(stem.name + suffix)
        if target.is_dir():
            raise CommandError(f"{option} {stem}: {target} is a folder; pass another output stem")
    return stem


def model_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a usable ``.keras`` / ``.tflite`` / ``.onnx`` file, from its first bytes (``None``:
    it looks like one; loading can still fail later).

    Example:
        >>> model_file_problem("student.txt")
        'not a model file (.keras, .tflite or .onnx)'
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        return f"not a model file ({', '.join(MODEL_SUFFIXES[:-1])} or {MODEL_SUFFIXES[-1]})"
    if not path.exists():
        return "no such model file"
    if not path.is_file():
        return "not a file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"
    if not head:
        return "empty file (0 bytes)"
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        return "not a .keras file (not a zip archive; save the model with model.save('name.keras'))"
    if suffix == ".tflite" and head[4:8] != b"TFL3":
        return "not a .tflite file (no TFL3 flatbuffer identifier)"
    if suffix == ".onnx" and head[:1] not in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42", b"\x52"):
        return "not an .onnx file (not an ONNX protobuf)"
    return None
