"""One runner for every study: an ordered list of named stages over prepared data, each finished stage recorded.

A study (:class:`Study`) says how to prepare its data and which stages to run; the runner runs them in order
and records each finished stage as one JSON file under ``<out>/stages/``. A stage that trains passes
``ctx.run_dir(name)`` to :func:`kd_keras.engine.train` (``directory=``), which checkpoints the training, so:

- ``--resume`` skips every finished stage (its recorded result is read back) and continues a killed training
  from its last checkpoint: the run ends as an uninterrupted one would (tested per study with SIGKILL);
- ``--resume`` with different settings is refused (one line naming what changed);
- a run into a folder that holds an earlier run is refused unless ``--resume`` or ``--overwrite``; with
  ``--overwrite`` the earlier run's outputs are moved aside to ``<out>/previous/<time>/``, never deleted.

Inside a stage, ``ctx.stage(name, fn)`` records a sub-step the same way (e.g. one student run of a grid), so a
long stage resumes at the sub-step too.

Every run writes ``config.yaml`` (the resolved settings: ``kd-keras run <study> --config <out>/config.yaml``
replays it), ``results.json`` and the study's report.

Example:

```python
from kd_keras.runner import Stage, Study, run_study

class Tiny(Study):
    name, title = "tiny", "a two-stage example"
    config_class, presets = TinyConfig, {"quick": {}}

    def prepare(self, ctx):
        return load_my_data(ctx.config)

    def stages(self, ctx):
        return [Stage("teacher", train_teacher), Stage("student", train_student)]

    def results(self, ctx):
        return {"teacher": ctx.outputs["teacher"], "student": ctx.outputs["student"]}

results = run_study(Tiny(), TinyConfig(), "runs/tiny", resume=True)
```
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kd_keras.config import config_to_dict, write_config

__all__ = ["Flag", "RunContext", "RunError", "Stage", "StageFailedError", "StageStore", "Study", "apply_demo_flags",
           "demo_flags", "expected_errors",
           "fingerprint_files", "fingerprint_parts", "run_study"]

STAGES_DIR = "stages"
RUNS_DIR = "runs"
PREVIOUS_DIR = "previous"
# Derived, keyed caches that a new run may reuse: never moved aside.
_KEPT_ON_OVERWRITE = {PREVIOUS_DIR, "teacher_cache", "data"}


class RunError(RuntimeError):
    """A problem the user can fix (option, data, output folder); ``str(error)`` is one line."""


class StageFailedError(RuntimeError):
    """An unexpected error inside a stage; the message names the stage and how to continue."""

    def __init__(self, stage: str, out: Path):
        super().__init__(f"stage {stage!r} failed; after fixing the cause, `--resume --out {out}` continues "
                         "from the last finished stage")
        self.stage = stage


@dataclass(frozen=True)
class Stage:
    """A named step of a study: ``run(ctx)`` returns a JSON-ready dict, recorded when it returns.

    Attributes:
        depends: the parts of the data (keys of :meth:`Study.fingerprint`) the stage reads; ``None``: all. When a
            resumed run finds that a part changed, the first stage that reads it and every stage after it are
            computed again.
    """

    name: str
    run: Callable[[RunContext], dict[str, Any]]
    depends: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Flag:
    """A study's own command-line option that is not simply ``--<setting-name>``.

    Args:
        names: the option strings (``("--unlabeled-dir",)``).
        kwargs: ``argparse.add_argument`` keyword arguments (``dest`` is set by the runner's CLI).
        settings: ``value -> {setting: value, ...}``, called when the option is given.
    """

    names: tuple[str, ...]
    kwargs: Mapping[str, Any]
    settings: Callable[[Any], Mapping[str, Any]]


def demo_flags(data: str) -> tuple[Flag, Flag]:
    """``--demo`` and ``--tiny``, the options every study script has had: ``--demo`` is ``--preset demo`` on the
    study's embedded ``data``; ``--demo --tiny`` (or ``--demo`` with ``KD_KERAS_TINY=1``) is ``--preset smoke``.
    Resolved by :func:`apply_demo_flags` in the study's ``adjust``."""
    return (
        Flag(("--demo",), {"action": "store_true", "help": f"{data} at demo sizes (= --preset demo; with --tiny "
                           "or KD_KERAS_TINY=1: --preset smoke)"}, lambda given: {"_demo": True} if given else {}),
        Flag(("--tiny",), {"action": "store_true", "help": "with --demo: CI smoke-test sizes (= --preset smoke)"},
             lambda given: {"_tiny": True} if given else {}),
    )


def apply_demo_flags(values: dict[str, Any], explicit: set[str], presets: Mapping[str, Mapping[str, Any]],
                     default_preset: str) -> dict[str, Any]:
    """The values of ``--demo`` / ``--demo --tiny`` (:func:`demo_flags`): the demo or smoke preset under every
    setting the user gave explicitly; ``--tiny`` alone changes nothing (the scripts' old meaning).

    Raises:
        ConfigError: ``--demo`` together with another ``--preset``.
    """
    from kd_keras.config import ConfigError

    demo, tiny = values.pop("_demo", False), values.pop("_tiny", False) or os.environ.get("KD_KERAS_TINY") == "1"
    if not demo:
        return values
    target = "smoke" if tiny else "demo"
    if values.get("preset") not in (default_preset, target):
        raise ConfigError(f"--demo runs the {target!r} preset: drop --preset {values['preset']}")
    given = {k: values[k] for k in explicit if k in values and not k.startswith("_") and k != "preset"}
    return {**presets[target], **given, "preset": target}


def _file_name(stage: str) -> str:
    return re.sub(r"[^\w.=+-]+", "__", stage)


class StageStore:
    """Finished stages of one output folder (``<out>/stages/<name>.json``) and the settings they belong to.

    Args:
        out: the run's output folder.
        settings: the run's resolved settings (JSON-ready); ``resume`` refuses different ones.
        resume: keep the finished stages of the run in ``out``.
        overwrite: move an earlier run's outputs aside (instead of refusing to start).
    """

    def __init__(self, out: Path, settings: Mapping[str, Any], *, resume: bool = False, overwrite: bool = False):
        self.out = Path(out)
        self.dir = self.out / STAGES_DIR
        self.skipped: list[str] = []
        self.moved_to: Path | None = None
        saved = self.dir / "config.json"
        if self.out.exists() and not self.out.is_dir():
            raise RunError(f"--out {self.out}: is a file, not a folder; choose another --out")
        if resume and saved.is_file():
            before = json.loads(saved.read_text())
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if changed:
                detail = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
                raise RunError(f"--resume: {self.out} was run with other settings ({detail}); run without "
                               "--resume and with --overwrite, or use another --out")
        elif not resume and self._earlier_run():
            if not overwrite:
                raise RunError(f"--out {self.out} holds an earlier run: --resume continues it, --overwrite moves "
                               f"it aside to {self.out / PREVIOUS_DIR}/, or choose another --out")
            self.moved_to = self._move_aside()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_json(saved, dict(settings))
        except OSError as error:
            raise RunError(f"--out {self.out}: cannot write there ({error.strerror or error})") from None

    def _earlier_run(self) -> bool:
        """A finished stage, a training checkpoint or results: work that a new run must not overwrite. (A run
        refused while preparing its data leaves only its settings behind, which a corrected rerun replaces.)"""
        if not self.out.is_dir():
            return False
        stages = [p for p in self.dir.glob("*.json") if p.name != "config.json"] if self.dir.is_dir() else []
        return bool(stages) or (self.out / RUNS_DIR).exists() or (self.out / "results.json").exists()

    def _move_aside(self) -> Path:
        target = self.out / PREVIOUS_DIR / time.strftime("%Y%m%d-%H%M%S")
        suffix = 1
        while target.exists():
            target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
            suffix += 1
        target.mkdir(parents=True)
        for entry in sorted(self.out.iterdir()):
            if entry.name not in _KEPT_ON_OVERWRITE:
                shutil.move(str(entry), str(target / entry.name))
        return target

    def path(self, name: str) -> Path:
        return self.dir / f"{_file_name(name)}.json"

    @property
    def _log(self) -> Path:
        return self.dir / "order.txt"

    def finished(self) -> list[str]:
        """Names of the recorded stages and sub-steps, in the order they finished."""
        if not self._log.is_file():
            return []
        return [line for line in self._log.read_text().splitlines() if line and self.path(line).is_file()]

    def data_changes(self, fingerprint: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Parts of the data whose fingerprint differs from the one recorded by the run in this folder
        (``{part: "40 -> 43 files"}``), then record ``fingerprint``. Nothing when no fingerprint was recorded."""
        path = self.dir / "data.fingerprint"  # not .json: the stage records own that namespace
        before = json.loads(path.read_text()) if path.is_file() else None
        _write_json(path, dict(fingerprint))
        if before is None:
            return {}
        changes = {}
        for part in sorted(set(before) | set(fingerprint)):
            old, new = before.get(part), fingerprint.get(part)
            if old == new:
                continue
            if old is None or new is None:
                changes[part] = f"new, {new['files']} files" if old is None else f"gone, was {old['files']} files"
            elif old["files"] != new["files"]:
                changes[part] = f"{old['files']} -> {new['files']} files"
            else:
                changes[part] = f"{new['files']} files, some changed (size or time)"
        return changes

    def invalidate_after(self, keep_through: str | None) -> Path | None:
        """Move every record finished after stage ``keep_through`` (all when ``None``) and every training
        checkpoint aside to ``<out>/previous/<time>-stale/``: never deleted, never reused."""
        finished = self.finished()
        cut = finished.index(keep_through) + 1 if keep_through in finished else 0
        stale = finished[cut:]
        runs = self.out / RUNS_DIR
        if not stale and not runs.exists():
            return None
        target = self.out / PREVIOUS_DIR / (time.strftime("%Y%m%d-%H%M%S") + "-stale")
        (target / STAGES_DIR).mkdir(parents=True, exist_ok=True)
        for name in stale:
            shutil.move(str(self.path(name)), str(target / STAGES_DIR / self.path(name).name))
        if runs.exists():
            shutil.move(str(runs), str(target / RUNS_DIR))
        self._log.write_text("".join(f"{name}\n" for name in finished[:cut]))
        return target

    def get(self, name: str) -> dict[str, Any] | None:
        """The recorded result of stage ``name``, or ``None`` when it has not finished."""
        path = self.path(name)
        if not path.is_file():
            return None
        self.skipped.append(name)
        return json.loads(path.read_text())

    def put(self, name: str, value: Mapping[str, Any]) -> dict[str, Any]:
        """Record stage ``name`` atomically; returns the value as read back (plain JSON types)."""
        _write_json(self.path(name), dict(value))
        with open(self._log, "a") as log:
            log.write(f"{name}\n")
        return json.loads(self.path(name).read_text())


def _write_json(path: Path, value: Any) -> None:
    from kd_keras.evaluation.report import write_json

    temporary = path.with_name(path.name + ".partial")
    write_json(temporary, value)
    os.replace(temporary, path)


@dataclass
class RunContext:
    """What a stage sees: the settings, the prepared data, earlier stages' outputs and the output folder."""

    config: Any
    out: Path
    store: StageStore
    say: Callable[[str], None] = print
    progress: bool = True
    data: Any = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    strategy: Any = None  # the tf.distribute strategy the run is in (its scope entered), or None

    def stage(self, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``run()`` once: its recorded result when stage ``name`` finished earlier, else run and record it."""
        done = self.store.get(name)
        if done is not None:
            self.outputs[name] = done
            return done
        start = time.perf_counter()
        value = run()
        self.timing[name] = round(time.perf_counter() - start, 2)
        self.outputs[name] = self.store.put(name, value)
        return self.outputs[name]

    def run_dir(self, name: str) -> Path:
        """The checkpoint folder of stage ``name``'s training (``<out>/runs/<name>``)."""
        return self.out / RUNS_DIR / _file_name(name)

    def path(self, *parts: str) -> Path:
        """A path under the output folder, its parent created."""
        path = self.out.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


class Study:
    """A study: settings, presets, data preparation, ordered stages, results and report.

    Subclasses set the class attributes and implement :meth:`prepare`, :meth:`stages`, :meth:`results` and
    :meth:`report`.

    Attributes:
        name: the command name (``kd-keras run <name>``).
        title: one line for ``--help`` and ``results.json``.
        config_class: the settings dataclass (with a ``preset`` and a ``seed`` field).
        presets: preset name -> values.
        default_out: default output folder.
        flags: the study's own options (:class:`Flag`) besides one ``--<setting>`` per setting.
        expected_errors: exception types that are the user's to fix (one line, exit status 2).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    default_out: ClassVar[str] = "runs/study"
    flags: ClassVar[Sequence[Flag]] = ()
    expected_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def adjust(self, values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
        """The study's last word on resolved values before validation (default: none)."""
        return values

    def check(self, config: Any) -> None:
        """Checks before anything is written or trained (default: none); raise :class:`RunError`."""

    def prepare(self, ctx: RunContext) -> Any:
        raise NotImplementedError

    def fingerprint(self, ctx: RunContext) -> dict[str, dict[str, Any]]:
        """The prepared data's parts (``{"train": fingerprint_files(paths), ...}``); ``--resume`` compares them
        with the run's and computes again what a changed part feeds (default: no parts, nothing compared)."""
        return {}

    def stages(self, ctx: RunContext) -> list[Stage]:
        raise NotImplementedError

    def results(self, ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError

    def report(self, results: dict[str, Any], out: Path) -> None:
        """Write ``report.md`` (and plots) from ``results``."""

    def summary_lines(self, results: dict[str, Any]) -> list[str]:
        """The one-screen summary printed at the end of a run."""
        return []


def fingerprint_files(paths: Sequence[str]) -> dict[str, Any]:
    """``{"files": n, "digest": sha256}`` over each file's path, size and modification time (no pixels read)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        try:
            info = os.stat(path)
            digest.update(f"{path}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\tmissing\n".encode())
    return {"files": len(paths), "digest": digest.hexdigest()}


def fingerprint_parts(parts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`fingerprint_files` of each part's ``paths`` (a :class:`~kd_keras.data.records.Records` table);
    a part without files (arrays) counts its rows only."""
    def paths(part: Any) -> list[str]:
        found = getattr(part, "paths", None)  # a NumPy array of paths, or None for array sources
        return [] if found is None else [str(p) for p in found]

    return {name: fingerprint_files(paths(part)) | {"rows": len(part)} for name, part in parts.items()}


# Operating-system failures that are the user's to fix: a full disk, a folder without write permission.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def expected_errors(study: Study) -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix, whatever the study (one line, exit status 2): bad settings or data,
    unreadable images, missing weights, an unusable cache, a diverging loss, and the study's own."""
    from kd_keras.data.preprocess import ImageReadError
    from kd_keras.data.report import DataError
    from kd_keras.engine.callbacks import NonFiniteLossError
    from kd_keras.engine.teacher_cache import CacheError
    from kd_keras.models.weights import WeightsUnavailableError

    return (RunError, WeightsUnavailableError, DataError, ImageReadError, CacheError, NonFiniteLossError,
            *study.expected_errors)


def run_study(
    study: Study,
    config: Any,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
    command: Sequence[str] | None = None,
    rerun_from: str | None = None,
) -> dict[str, Any]:
    """Run ``study`` with ``config`` into ``out``; returns the ``results.json`` content.

    Args:
        study: the :class:`Study`.
        config: its resolved settings (an instance of ``study.config_class``).
        out: output folder.
        resume: skip finished stages and continue a killed training (settings must be the same).
        overwrite: move an earlier run in ``out`` aside first (otherwise such a folder is refused).
        progress: progress bars (stderr).
        say: where progress lines go.
        command: the command line recorded in ``results.json`` (default: ``sys.argv``).
        rerun_from: with ``resume``, compute this stage and every later one again (e.g. after a fix to the code
            they run); their records and the run's training checkpoints are moved to ``<out>/previous/``.

    Raises:
        RunError and the study's ``expected_errors``: one line for the user.
        StageFailedError: an unexpected error in a stage (chained to the original exception).
    """
    out = Path(out)
    if rerun_from is not None and not resume:
        raise RunError(f"--rerun-from {rerun_from}: continues the run in {out}, so it needs --resume")
    study.check(config)
    scale = _scale_of(config)
    if scale is not None:
        from kd_keras.engine.distribute import ScaleError, check_scale

        try:
            check_scale(scale["strategy"], scale["precision"], scale["logical_cpu_devices"])
        except ScaleError as error:
            raise RunError(str(error)) from None
    settings = config_to_dict(config)
    store = StageStore(out, settings, resume=resume, overwrite=overwrite)
    if store.moved_to is not None:
        say(f"moved the earlier run in {out} aside to {store.moved_to}")
    write_config(out / "config.yaml", config, study.name)
    with contextlib.ExitStack() as scope:
        strategy = None
        if scale is not None:
            from kd_keras.engine.distribute import ScaleError, run_scope

            try:
                strategy = scope.enter_context(run_scope(**scale))
            except ScaleError as error:
                raise RunError(str(error)) from None
            if strategy.num_replicas_in_sync > 1 or scale["precision"] != "float32":
                kind = next((k.__name__ for k in type(strategy).__mro__ if k.__name__ in _STRATEGY_NAMES),
                            type(strategy).__name__)
                say(f"strategy: {kind} with {strategy.num_replicas_in_sync} replicas; "
                    f"precision: {scale['precision']}")
        ctx = RunContext(config=config, out=out, store=store, say=say, progress=progress, strategy=strategy)
        return _run_stages(study, ctx, resume, command, rerun_from)


def _invalidate_from(name: str, stages: list[Stage], store: StageStore, say: Callable[[str], None]) -> None:
    """``--rerun-from``: move the records of stage ``name`` and every later one aside, so that they run again."""
    names = [stage.name for stage in stages]
    if name not in names:
        raise RunError(f"--rerun-from {name}: not a stage of this run; its stages: {', '.join(names)}")
    index = names.index(name)
    finished = store.finished()
    if index and names[index - 1] not in finished:
        raise RunError(f"--rerun-from {name}: the stage before it, {names[index - 1]!r}, has not finished; "
                       "--resume alone continues the run")
    moved = store.invalidate_after(names[index - 1] if index else None)
    where = f"; the earlier results of those stages were moved to {moved}" if moved is not None else ""
    say(f"--rerun-from {name}: computing {name} and every later stage again{where}")


# The public names of the strategies (TensorFlow's multi-worker class is CollectiveAllReduceStrategy).
_STRATEGY_NAMES = {"MultiWorkerMirroredStrategy", "MirroredStrategy", "OneDeviceStrategy"}


def _scale_of(config: Any) -> dict[str, Any] | None:
    """The :class:`~kd_keras.config.ScaleSettings` of ``config`` as ``run_scope`` arguments (``None``: a
    settings class without them)."""
    names = ("strategy", "precision", "jit_compile", "logical_cpu_devices")
    if not all(hasattr(config, name) for name in names):
        return None
    return {name: getattr(config, name) for name in names}


def _run_stages(study: Study, ctx: RunContext, resume: bool, command: Sequence[str] | None,
                rerun_from: str | None = None) -> dict[str, Any]:
    config, out, store, say = ctx.config, ctx.out, ctx.store, ctx.say
    settings = config_to_dict(config)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    start = time.perf_counter()
    t = time.perf_counter()
    ctx.data = study.prepare(ctx)
    ctx.timing["data"] = round(time.perf_counter() - t, 2)
    stages = study.stages(ctx)
    changes = store.data_changes(study.fingerprint(ctx))
    if changes and resume:
        first = next((i for i, stage in enumerate(stages)
                      if stage.depends is None or set(stage.depends) & set(changes)), len(stages))
        moved = store.invalidate_after(stages[first - 1].name if first > 0 else None)
        what = "; ".join(f"{part}: {change}" for part, change in changes.items())
        again = f"computing again from stage {stages[first].name!r} on" if first < len(stages) else "no stage reads it"
        say(f"--resume: the data changed since this run started ({what}): {again}")
        if moved is not None:
            say(f"  the results that depended on the old data were moved to {moved}")
    if rerun_from is not None:
        _invalidate_from(rerun_from, stages, store, say)
    expected = expected_errors(study)
    for stage in stages:
        try:
            ctx.stage(stage.name, lambda stage=stage: stage.run(ctx))
        except expected:
            raise
        except OSError as error:
            if error.errno not in _USER_ERRNOS:
                raise StageFailedError(stage.name, out) from error
            raise RunError(f"stage {stage.name!r}: cannot write {error.filename or out}: {error.strerror}; free "
                           "space or fix the permission, then --resume continues from the last finished stage"
                           ) from None
        except Exception as error:
            raise StageFailedError(stage.name, out) from error
    ctx.timing["total"] = round(time.perf_counter() - start, 2)
    results = study.results(ctx)
    results.setdefault("study", study.title or study.name)
    results.setdefault("config", settings)
    results.setdefault("seed", getattr(config, "seed", None))
    results["run"] = {
        "study": study.name,
        "command": " ".join(command if command is not None else sys.argv),
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "resumed_stages": list(store.skipped),
        "replicas": ctx.strategy.num_replicas_in_sync if ctx.strategy is not None else 1,
        "config_file": str(out / "config.yaml"),
    }
    _write_json(out / "results.json", results)
    results = json.loads((out / "results.json").read_text())
    study.report(results, out)
    return results
