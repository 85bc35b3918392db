"""The teacher-cache command line: build a cache (or one part of it) and merge the parts.

``python -m kd_keras.engine.teacher_cache`` runs :func:`main` (build, ``--shard i/n`` or ``--merge``);
:func:`build_main` and :func:`merge_main` are the same two jobs as separate commands (``kd-keras cache build``
and ``kd-keras cache merge``), and :func:`add_cache_arguments` adds their options to any ``argparse`` parser.
Bad input (a missing teacher file, an unreadable pool, an output folder that cannot be written, parts that do
not fit) ends with one line on stderr and exit status 2, never a traceback.

Example::

    python -m kd_keras.engine.teacher_cache --teacher teacher.keras --pool OCT_unlabeled/ --image-size 224 \\
        --out runs/teacher_cache [--shard 0/4 | --merge]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from kd_keras.cli_checks import OneLineArgumentParser, at_least
from kd_keras.data.preprocess import ImageReadError, PreprocessConfig
from kd_keras.engine.teacher_cache.build import build_cache_part, build_teacher_cache
from kd_keras.engine.teacher_cache.keys import ON_BAD_FILE, TAP_STORAGES, CacheError, make_cache_key
from kd_keras.engine.teacher_cache.merge import merge_teacher_cache
from kd_keras.engine.teacher_cache.store import TeacherCache

__all__ = ["EXIT_BAD_INPUT", "add_cache_arguments", "build_main", "main", "merge_main", "run_cache_command"]

EXIT_BAD_INPUT = 2
_MODES = ("any", "build", "merge")


def _image_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:[xX,](\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got {text!r}")
    height = int(match.group(1))
    size = height, int(match.group(2) or height)
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return size


def _tap_argument(text: str) -> tuple[str, str]:
    name, _, storage = text.partition(":")
    storage = storage or "float16"
    if storage not in TAP_STORAGES:
        raise argparse.ArgumentTypeError(f"tap storage must be one of {TAP_STORAGES}, got {storage!r}")
    return name, storage


def add_cache_arguments(parser: argparse.ArgumentParser, mode: str = "any") -> argparse.ArgumentParser:
    """Adds the cache options to ``parser``: those of a build (``mode="build"``), of a merge (``"merge"``) or
    both with ``--shard``/``--merge`` as alternatives (``"any"``, the ``python -m`` command).

    Example:

    ```python
    cache = subparsers.add_parser("cache").add_subparsers(dest="cache_command", required=True)
    add_cache_arguments(cache.add_parser("build"), "build")
    add_cache_arguments(cache.add_parser("merge"), "merge")
    # then: sys.exit(run_cache_command(args, merge=args.cache_command == "merge"))
    ```
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    parser.add_argument("--teacher", required=True, help="saved teacher (.keras)")
    parser.add_argument("--pool", required=True, help="image folder, read recursively in sorted path order")
    parser.add_argument("--image-size", required=True, type=_image_size, help="N or HxW (the teacher's input)")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--clahe", action="store_true", help="per-channel CLAHE (study 000)")
    parser.add_argument("--clahe-clip", type=at_least(1e-6, float), default=2.0)
    parser.add_argument("--clahe-grid", type=at_least(1), default=8)
    parser.add_argument("--fundus-crop", action="store_true")
    parser.add_argument("--out", required=True, help="parent folder of cache folders")
    parser.add_argument(
        "--taps",
        nargs="*",
        default=(),
        type=_tap_argument,
        metavar="LAYER[:STORAGE]",
        help="feature taps to store too; storage float16 (default), float32 or pooled",
    )
    parser.add_argument("--data-fingerprint", help="your data version, instead of stat-ing every file")
    if mode == "any":
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--shard", metavar="i/n", help="compute only part i of n (i from 0), for one worker")
        group.add_argument("--merge", action="store_true", help="check that all parts are there, write the manifest")
    elif mode == "build":
        parser.add_argument("--shard", metavar="i/n", help="compute only part i of n (i from 0), for one worker")
    if mode in ("any", "merge"):
        parser.add_argument(
            "--parts", nargs="*", default=(), metavar="OUT", help="merge: other --out folders holding parts"
        )
    if mode in ("any", "build"):
        parser.add_argument("--batch-size", type=at_least(1), default=64)
        parser.add_argument("--shard-size", type=at_least(1), default=4096)
        parser.add_argument("--on-bad-file", choices=ON_BAD_FILE, default="raise")
        parser.add_argument("--workers", type=at_least(0), default=0,
                            help="parallel decode calls (0: tf.data AUTOTUNE)")
    return parser


def _parser(mode: str = "any") -> argparse.ArgumentParser:
    prog = {"any": "python -m kd_keras.engine.teacher_cache", "build": "kd-keras cache build",
            "merge": "kd-keras cache merge"}[mode]
    parser = OneLineArgumentParser(
        prog=prog,
        description="Compute (once) the teacher's logits over an unaugmented image folder into a sharded, "
        "memory-mapped cache keyed by teacher, data and preprocessing.",
    )
    return add_cache_arguments(parser, mode)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _saved_input_shape(path: str) -> tuple | None:
    """The input shape (without the batch) a ``.keras`` file records in its ``config.json``, read without loading
    the model; ``None`` when the file does not say (the build checks the loaded model again)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        layers = config["config"]["layers"]
        first = next(layer for layer in layers if layer.get("class_name") == "InputLayer")["config"]
        shape = first.get("batch_shape") or first.get("batch_input_shape")
        return tuple(shape[1:]) if shape else None
    except (OSError, KeyError, TypeError, ValueError, StopIteration, zipfile.BadZipFile):
        return None


def _check_paths(args: argparse.Namespace, merge: bool) -> None:
    """The teacher file, the pool, the output folder and the parts, before any work (one line naming each)."""
    from kd_keras.cli_checks import model_file_problem, output_folder

    if not Path(args.teacher).exists():
        raise CacheError(args.teacher, "teacher file does not exist")
    problem = model_file_problem(args.teacher)
    if problem is None and Path(args.teacher).suffix != ".keras":
        problem = "the teacher must be a .keras file"
    if problem:
        raise CacheError(args.teacher, f"cannot load the teacher (--teacher: {problem})")
    shape = _saved_input_shape(args.teacher)
    given = (*args.image_size, args.channels)
    if shape is not None and len(shape) == 3 and any(
            s is not None and s != g for s, g in zip(shape, given, strict=True)):
        raise CacheError(args.teacher, f"teacher takes inputs of shape {tuple(shape)}, --image-size/--channels "
                         f"give {given}; set them to the teacher's")
    if not Path(args.pool).is_dir():
        raise CacheError(args.pool, "--pool: no such folder")
    for part in getattr(args, "parts", ()) or ():
        if not Path(part).is_dir():
            raise CacheError(part, "--parts: no such folder (an --out folder of `kd-keras cache build --shard`)")
    if not merge or Path(args.out).exists():  # a merge into a missing folder: "no parts to merge" names it
        output_folder(args.out)


def run_cache_command(args: argparse.Namespace, merge: bool = False) -> int:
    """Runs a build (or part) or, with ``merge``, a merge from parsed :func:`add_cache_arguments` options.

    Returns:
        0, or 2 after one line on stderr for bad input.

    Example:

    ```python
    args = add_cache_arguments(argparse.ArgumentParser(), "merge").parse_args(argv)
    status = run_cache_command(args, merge=True)
    ```
    """
    from kd_keras.data.sources import from_folder
    from kd_keras.data.validate import DataError

    try:
        config = PreprocessConfig(
            image_size=args.image_size,
            channels=args.channels,
            clahe=args.clahe,
            clahe_clip=args.clahe_clip,
            clahe_grid=args.clahe_grid,
            fundus_crop=args.fundus_crop,
        )
        _check_paths(args, merge or getattr(args, "merge", False))
        records = from_folder(args.pool)
        if records.report.counts().get("skipped"):
            print(records.report.format_summary(), file=sys.stderr)
        taps = dict(args.taps)
        if merge or getattr(args, "merge", False):
            key = make_cache_key(args.teacher, records, config, taps, data_fingerprint=args.data_fingerprint)
            cache = merge_teacher_cache(
                Path(args.out) / key.digest, [Path(p) / key.digest for p in args.parts], expected_key=key
            )
            print(f"merged {cache.manifest['parts']} parts: {cache}")
            return 0

        def progress(shard: int) -> None:
            print(f"shard {shard} written", file=sys.stderr, flush=True)

        options = {
            "taps": taps,
            "batch_size": args.batch_size,
            "shard_size": args.shard_size,
            "data_fingerprint": args.data_fingerprint,
            "on_bad_file": args.on_bad_file,
            "workers": args.workers or None,
            "on_shard_done": progress,
        }
        if args.shard:
            result = build_cache_part(args.teacher, records, config, args.out, args.shard, **options)
        else:
            result = build_teacher_cache(args.teacher, records, config, args.out, **options)
        stats = result.build_stats
        print(
            f"{result.path}: {stats['shards_computed']} shards computed, {stats['shards_reused']} reused, "
            f"{stats['examples_computed']} images in {stats['seconds']:.1f} s"
            + (
                ""
                if isinstance(result, TeacherCache)
                else f" (part {result.part[0]}/{result.part[1]}; run --merge when every part is done)"
            )
        )
        return 0
    except (CacheError, ImageReadError, DataError, ValueError, OSError) as error:  # CommandError is a ValueError
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(argv: Sequence[str] | None, mode: str) -> int:
    try:
        args = _parser(mode).parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its one-line usage error (or the help)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    return run_cache_command(args, merge=mode == "merge")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kd_keras.engine.teacher_cache``: build, ``--shard i/n`` or ``--merge``; the exit status.

    Example:

    ```python
    main(["--teacher", "t.keras", "--pool", "pool/", "--image-size", "224", "--out", "runs/tc", "--merge"])
    ```
    """
    return _run(argv, "any")


def build_main(argv: Sequence[str] | None = None) -> int:
    """``kd-keras cache build``: a whole cache, or one part with ``--shard i/n``; the exit status.

    Example:

    ```python
    build_main(["--teacher", "t.keras", "--pool", "pool/", "--image-size", "224", "--out", "runs/tc"])
    ```
    """
    return _run(argv, "build")


def merge_main(argv: Sequence[str] | None = None) -> int:
    """``kd-keras cache merge``: check every part and write the manifest; the exit status.

    Example:

    ```python
    merge_main(["--teacher", "t.keras", "--pool", "pool/", "--image-size", "224", "--out", "/shared/tc"])
    ```
    """
    return _run(argv, "merge")
