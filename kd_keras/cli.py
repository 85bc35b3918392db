"""``kd-keras``: one command for every study, the export, the latency benchmark, the zoo and the teacher cache.

```
kd-keras run oct [--preset quick|paper|smoke] [--config FILE] [--set KEY=VALUE] [--out DIR] [--resume] ...
kd-keras run dr | simclr | attention ...      the other three studies, same options
kd-keras export MODEL.keras --out DIR ...     TFLite / ONNX with parity on real images
kd-keras latency TARGET ... --teacher resnet50  per-volume latency in LiteRT / ONNX Runtime / Keras
kd-keras zoo [--markdown]                     the model zoo's table
kd-keras cache build|merge ...                teacher-output caches (sharded, mergeable)
```

``python -m kd_keras`` is the same command. ``kd-keras run <study> --help`` lists the study's settings: every
setting is also an option (``--image-size 96``), a config-file key and a ``--set`` key; ``--print-config``
prints the resolved settings without running anything.

Exit status: 0 done; 2 a problem the user can fix (one line: the option, file or folder, and what to do);
1 an unexpected failure (its traceback, then the stage that failed and how ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "quiet_tensorflow_start", "resolve_run", "run_main", "run_parser"]

COMMANDS = {
    "run": "run a study: oct (002, the main job), dr (000), simclr (003), attention (004)",
    "export": "export a .keras student to TFLite / ONNX with parity on real images",
    "latency": "time teachers and students per volume in LiteRT, ONNX Runtime and Keras",
    "zoo": "list the model zoo (parameters, multiply-adds)",
    "cache": "build or merge a teacher-output cache (build | merge)",
    "predict": "flag B-scans of interest in OCT volumes with an exported student (no TensorFlow)",
}


def quiet_tensorflow_start(first_op: bool = True) -> None:
    """Import TensorFlow with its C++ start-up notes (oneDNN, absl) kept off the terminal.

    TensorFlow 2.21 prints them on file descriptor 2 whatever ``TF_CPP_MIN_LOG_LEVEL`` says, so a refused run
    would show four lines of noise above its one-line error. Python's own errors are unaffected: the descriptor
    is restored before anything is raised. ``first_op=False`` (``kd-keras run``) leaves the runtime unstarted,
    so a run can still split the CPU into logical devices and join a multi-worker cluster.
    """
    if "tensorflow" in sys.modules:
        return
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        import tensorflow as tf

        if first_op:
            tf.constant(0.0) + 1.0  # the second batch of notes comes with the first op
        tf.get_logger().setLevel("ERROR")  # Keras' retracing notes when many models are evaluated in turn
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _error(message: str) -> int:
    print(f"error: {message.strip().splitlines()[0] if message.strip() else 'failed'}", file=sys.stderr)
    return 2


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _setting_flags(cls: type, taken: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """One ``--<setting>`` option per scalar or list setting of ``cls`` (dictionaries: --set / --config)."""
    from kd_keras.config import field_help

    helps = field_help(cls)
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "preset" or flag in taken:
            continue
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        kwargs: dict[str, Any] = {"help": helps.get(f.name, f"setting {f.name}")}
        if hint is dict or origin is dict:
            continue
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            items = typing.get_args(hint)
            if any(typing.get_origin(item) in (tuple, dict) or item is dict for item in items):
                continue  # grids and objective lists: --set key="[[3, 1.5], [2, 0.5]]" or a config file
            kwargs["nargs"] = "+"
            kwargs["metavar"] = f.name.upper().rstrip("S") if f.name.endswith("s") else f.name.upper()
        else:
            kwargs["metavar"] = "VALUE"
        options.append((flag, f.name, kwargs))
    return options


def run_parser(study: Any) -> tuple[argparse.ArgumentParser, list[tuple[str, Callable[[Any], dict]]]]:
    """The parser of ``kd-keras run <study>`` and, per option, how its value becomes settings."""
    parser = argparse.ArgumentParser(
        prog=f"kd-keras run {study.name}", description=study.title,
        epilog=study.description, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=list(study.presets), default=None,
                     help=f"named settings to start from (default: {_default(study.config_class, 'preset')})")
    run.add_argument("--config", action="append", default=[], metavar="FILE",
                     help="YAML or JSON settings (repeatable; a run's own config.yaml replays it)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="one setting, the value read as YAML (repeatable): --set student_epochs=3")
    run.add_argument("--out", default=study.default_out, help=f"output folder (default {study.default_out})")
    run.add_argument("--resume", action="store_true", help="skip finished stages, continue a killed training")
    run.add_argument("--rerun-from", metavar="STAGE", default=None,
                     help="continue the run in --out (as --resume) but compute STAGE and every later stage again, "
                          "e.g. after a fix to the code they run (their earlier results are moved to "
                          "<out>/previous/, never deleted)")
    run.add_argument("--overwrite", action="store_true",
                     help="move an earlier run in --out aside to <out>/previous/ (never deleted) and start anew")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--print-config", action="store_true", help="print the resolved settings and stop")
    converters: list[tuple[str, Callable[[Any], dict]]] = []
    own = parser.add_argument_group(f"{study.name} options")
    taken = {"--preset", "--config", "--set", "--out", "--resume", "--rerun-from", "--overwrite", "--no-progress",
             "--print-config"}
    for index, flag in enumerate(study.flags):
        dest = f"_flag{index}"
        kwargs = dict(flag.kwargs)
        if kwargs.get("action") not in ("store_true", "store_false"):
            kwargs.setdefault("metavar", flag.names[0].lstrip("-").split("-")[-1].upper())
        own.add_argument(*flag.names, dest=dest, default=None, **kwargs)
        converters.append((dest, flag.settings))
        taken |= set(flag.names)
    settings = parser.add_argument_group("settings (each also a config-file and --set key)")
    for option, name, kwargs in _setting_flags(study.config_class, taken):
        settings.add_argument(option, dest=f"_set_{name}", default=None, **kwargs)
        converters.append((f"_set_{name}", lambda value, name=name: {name: value}))
    return parser, converters


def resolve_run(name: str, argv: Sequence[str]) -> tuple[Any, Any, argparse.Namespace]:
    """The study, its resolved settings and the parsed options of ``kd-keras run <name> *argv``.

    Raises:
        KeyError: an unknown study. ConfigError: a setting that cannot be used (one line).
        SystemExit: argparse's own refusal of a malformed option (status 2, with the usage).

    Example:
        >>> study, config, args = resolve_run("oct", ["--preset", "smoke", "--set", "image_size=48"])
    """
    from kd_keras.config import resolve_config
    from kd_keras.studies import get_study

    study = get_study(name)
    parser, converters = run_parser(study)
    args = parser.parse_args(list(argv))
    flags: dict[str, Any] = {}
    for dest, convert in converters:
        value = getattr(args, dest)
        if value is not None:
            flags.update(convert(value))
    config = resolve_config(study.config_class, study.presets, preset=args.preset, files=args.config,
                            flags=flags, sets=args.set, study=study.name, adjust=study.adjust)
    return study, config, args


def run_main(name: str, argv: Sequence[str]) -> int:
    """``kd-keras run <name> ...``."""
    from kd_keras.config import write_config

    try:
        study, config, args = resolve_run(name, argv)
    except KeyError as error:
        return _error(str(error.args[0]))
    except ValueError as error:  # ConfigError and the studies' own checks
        return _error(str(error))
    if args.print_config:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            print(write_config(Path(folder) / "config.yaml", config, study.name).read_text(), end="")
        return 0
    return _run(study, config, args, ["kd-keras", "run", name, *argv])


def _run(study: Any, config: Any, args: argparse.Namespace, command: list[str]) -> int:
    import traceback

    from kd_keras.runner import RunError, StageFailedError, expected_errors, run_study

    expected = expected_errors(study)
    start = time.perf_counter()
    try:
        if args.rerun_from is not None and args.overwrite:
            raise RunError("--rerun-from continues the run in --out; --overwrite would start anew: use one")
        results = run_study(study, config, args.out, resume=args.resume or args.rerun_from is not None,
                            overwrite=args.overwrite, progress=not args.no_progress, command=command,
                            rerun_from=args.rerun_from)
    except RunError as error:
        return _error(str(error))
    except expected as error:
        return _error(_weights_message(error) or str(error))
    except StageFailedError as error:
        traceback.print_exception(error.__cause__ or error, file=sys.stderr)
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; `--resume --out {args.out}` continues from the last finished stage", file=sys.stderr)
        return 130
    out = Path(args.out)
    lines = study.summary_lines(results)
    if lines:
        print()
        print("\n".join(lines))
    print()
    print(f"done in {time.perf_counter() - start:.0f} s; report: {out / 'report.md'}; results: "
          f"{out / 'results.json'}; settings (replay with --config): {out / 'config.yaml'}")
    skipped = results.get("run", {}).get("resumed_stages") or []
    if skipped:
        print(f"resumed: {len(skipped)} finished stages skipped ({', '.join(skipped[:6])}"
              f"{', ...' if len(skipped) > 6 else ''})")
    return 0


def _weights_message(error: BaseException) -> str | None:
    from kd_keras.models.weights import WeightsUnavailableError

    if not isinstance(error, WeightsUnavailableError):
        return None
    first = str(error).split(": ")[0]
    return (f"--teacher-weights imagenet: the ImageNet weights of {first} are not available offline "
            f"({str(error).splitlines()[0]}). Pass a local weights file (--teacher-weights /path/to/file.h5) "
            "or --teacher-weights none to train the teacher from scratch.")


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {c.ljust(width)}  {h}" for c, h in COMMANDS.items()]
    return ("usage: kd-keras COMMAND ...\n\nTeacher-student knowledge transfer for medical images.\n\ncommands:\n"
            + "\n".join(lines) + "\n\n`kd-keras COMMAND --help` for each; `kd-keras run STUDY --help` for a study.")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kd-keras`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # errors reach the user as one line from Python
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from kd_keras import __version__

        print(f"kd-keras {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    # predict runs with the edge runtime alone (no TensorFlow installed): it must not import TensorFlow here.
    if command in COMMANDS and command != "predict" and not {"-h", "--help"} & set(rest):
        quiet_tensorflow_start(first_op=command != "run")
    if command == "run":
        from kd_keras.studies import STUDIES

        if not rest or rest[0] in ("-h", "--help"):
            print("usage: kd-keras run STUDY [options]\n\nstudies:\n"
                  + "\n".join(f"  {name.ljust(10)} {title}" for name, title in STUDIES.items()))
            return 0 if rest else 2
        return run_main(rest[0], rest[1:])
    if command == "export":
        from kd_keras.export.cli import export_main

        return export_main(rest)
    if command == "latency":
        from kd_keras.export.cli import latency_main

        return latency_main(rest)
    if command == "zoo":
        from kd_keras.models.__main__ import main as zoo_main

        return zoo_main(rest)
    if command == "predict":
        from kd_keras.deploy.cli import predict_main

        return predict_main(rest)
    if command == "cache":
        from kd_keras.engine.teacher_cache import build_main, merge_main

        if not rest or rest[0] not in ("build", "merge"):
            if rest and rest[0] in ("-h", "--help"):
                print("usage: kd-keras cache build ... | kd-keras cache merge ...  (--help after either)")
                return 0
            given = f" {rest[0]!r}" if rest else ""
            return _error(f"kd-keras cache: unknown subcommand{given}; use `kd-keras cache build` or `kd-keras "
                          "cache merge` (--help after either)")
        return (build_main if rest[0] == "build" else merge_main)(rest[1:])
    return _error(f"unknown command {command!r}; commands: {', '.join(COMMANDS)} (kd-keras --help)")


if __name__ == "__main__":
    sys.exit(main())
