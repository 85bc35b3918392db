"""Study settings: one typed dataclass per study, named presets, config files and ``--set key=value``.

A run's settings are resolved in this order, each layer overriding the one before:

1. the dataclass defaults;
2. the preset (``quick``, ``paper``, ``smoke``, ``demo``: whatever the study defines);
3. config files (YAML or JSON, ``--config FILE``, in the order given);
4. the study's command-line flags (``--image-size 96``);
5. ``--set key=value`` (the value is read as YAML: ``--set fractions=[0,0.5,1]``,
   ``--set student_objective="{name: hinton, alpha: 0.1, temperature: 4}"``, ``--set synthetic.difficulty=0.3``).

Dictionary-valued settings merge key by key (``synthetic: {difficulty: 0.3}`` keeps the preset's other keys);
every other value replaces the one before. The result is validated against the dataclass's type hints by
pydantic (``"3"`` becomes ``3`` for an ``int``, a list becomes a tuple, a wrong type is refused), then by the
dataclass's own ``__post_init__`` checks. Any problem is a :class:`ConfigError` with one line naming the key.

Every run writes its resolved settings as ``config.yaml`` beside ``results.json``
(:func:`write_config`); ``kd-keras run <study> --config that/config.yaml`` replays the run.

Example:

```python
from kd_keras.config import resolve_config
from kd_keras.studies.oct_student_teacher import OCTStudyConfig, PRESETS

config = resolve_config(OCTStudyConfig, PRESETS, preset="smoke", sets=["students=[mobilenet_wd4]"])
```
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

__all__ = ["ConfigError", "ScaleSettings", "config_to_dict", "field_help", "read_config_file", "resolve_config",
           "write_config"]

_HEADER = "# kd-keras settings of one run; `kd-keras run {study} --config {path}` replays it.\n"


class ConfigError(ValueError):
    """A setting that cannot be used; ``str(error)`` is one line that names it."""


@dataclasses.dataclass(kw_only=True)
class ScaleSettings:
    """Where and how a run computes: settings every study inherits (``kd-keras run <study> --strategy mirrored``).

    The runner (:func:`kd_keras.runner.run_study`) enters the strategy's scope and sets the Keras mixed-precision
    policy for the whole run, so model building, training, pseudo-labelling and evaluation all use them
    (:func:`kd_keras.engine.distribute.run_scope`). Batch sizes are global batches (split over the replicas);
    learning rates are not scaled and the steps per epoch come from the global batch (``docs/scale.md``).

    Scale:
        strategy: ``auto`` (the workers of ``TF_CONFIG``, else all visible GPUs when there are two or more, else
            one device), ``default`` (one device), ``mirrored`` (all local GPUs; without GPU, the logical CPU
            devices of ``logical_cpu_devices``) or ``multiworker`` (``MultiWorkerMirroredStrategy`` over the
            workers of ``TF_CONFIG``: ``scripts/launch_workers.py``).
        precision: ``float32``, ``mixed_float16`` (GPU only; the loss is scaled) or ``mixed_bfloat16`` (CPU and
            recent GPUs); weights, losses and the student's logits stay float32, exports are float32.
        jit_compile: XLA compilation of the training step (off by default: it made CPU training 7x slower here).
        logical_cpu_devices: split the CPU into this many devices before TensorFlow starts (replicas of
            ``mirrored`` on a machine without GPU); 0: 2 when ``strategy`` is ``mirrored`` and there is no GPU,
            else none.
    """

    strategy: Literal["auto", "default", "mirrored", "multiworker"] = "auto"
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit_compile: bool = False
    logical_cpu_devices: int = 0


def config_to_dict(config: Any) -> dict[str, Any]:
    """The dataclass ``config`` as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or JSON mapping from ``path`` (JSON is YAML, so one parser reads both).

    Raises:
        ConfigError: the file is missing, unreadable, or not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML or JSON{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings, got a {type(values).__name__}")
    return values


def parse_set(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` as (``["a", "b"]``, the value read as YAML)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set student_epochs=3")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML (quote it)") from None
    return key.strip().split("."), value


def _merge(base: dict[str, Any], update: Mapping[str, Any], dict_fields: set[str]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if key in dict_fields and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _check_keys(keys: Iterable[str], known: Sequence[str], where: str) -> None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}; `--print-config` lists them")


def _dict_fields(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    return {f.name for f in dataclasses.fields(cls)
            if hints.get(f.name) is dict or typing.get_origin(hints.get(f.name)) is dict}


def _describe(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first.get("loc", ())) or "settings"
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if first.get("type") == "value_error" or not first.get("loc"):
        return message
    return f"setting {key!r}: {message} (got {first.get('input')!r})"


def resolve_config(
    cls: type,
    presets: Mapping[str, Mapping[str, Any]],
    *,
    preset: str | None = None,
    files: Sequence[str | os.PathLike] = (),
    flags: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    study: str | None = None,
    adjust: Callable[[dict[str, Any], set[str]], dict[str, Any]] | None = None,
) -> Any:
    """The settings of a run: ``cls`` defaults < preset < ``files`` < ``flags`` < ``sets``, validated.

    Args:
        cls: the study's settings dataclass (it has a ``preset`` field).
        presets: preset name -> the values it sets.
        preset: the preset to start from; ``None``: the files' ``preset`` key, else the dataclass default.
        files: YAML/JSON config files (a ``study`` key, if present, must name ``study``).
        flags: values from the study's command-line options that were given (``None`` is a value: e.g.
            ``--steps-per-epoch 0`` sets ``student_steps_per_epoch: None``).
        sets: ``key=value`` items (dotted keys reach into dictionary settings).
        study: the study's command name, checked against the files' ``study`` key.
        adjust: ``(values, explicit_keys) -> values``, the study's last word before validation (e.g. drop
            builder options of the preset's teacher when the user chose another teacher).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: an unknown preset or key, a wrong type, or a value the study refuses (one line).

    Example:
        >>> resolve_config(OCTStudyConfig, PRESETS, preset="smoke", sets=["image_size=48"]).image_size
        48
    """
    names = [f.name for f in dataclasses.fields(cls)]
    dict_fields = _dict_fields(cls)
    layers: list[tuple[str, dict[str, Any]]] = []
    for path in files:
        values = read_config_file(path)
        named = values.pop("study", None)
        if study is not None and named is not None and named != study:
            raise ConfigError(f"--config {path}: settings of study {named!r}, not {study!r}")
        layers.append((f"--config {path}", values))
    if flags:
        layers.append(("option", dict(flags)))
    if sets:
        nested: dict[str, Any] = {}
        for item in sets:
            keys, value = parse_set(item)
            if len(keys) > 1 and keys[0] not in dict_fields:
                _check_keys(keys[:1], names, f"--set {item}")
                raise ConfigError(f"--set {item}: {keys[0]!r} is not a dictionary setting")
            target = nested
            for key in keys[:-1]:
                target = target.setdefault(key, {})
            target[keys[-1]] = value
        layers.append(("--set", nested))
    if preset is None:
        preset = next((v["preset"] for _, v in reversed(layers) if "preset" in v), None)
    default_preset = next((f.default for f in dataclasses.fields(cls) if f.name == "preset"), None)
    preset = preset if preset is not None else default_preset
    if preset not in presets:
        raise ConfigError(f"--preset {preset!r}: not a preset of this study (presets: {', '.join(presets)})")
    values: dict[str, Any] = {**presets[preset]}
    explicit: set[str] = set()
    for where, layer in layers:
        # Keys with a leading underscore are hints from a study's own options to its ``adjust``, not settings.
        _check_keys([k for k in layer if not k.startswith("_")], names, where)
        explicit |= set(layer)
        values = _merge(values, layer, dict_fields)
    values["preset"] = preset
    try:
        if adjust is not None:
            values = adjust(values, explicit)
        values = {k: v for k, v in values.items() if not k.startswith("_")}
        return pydantic.TypeAdapter(cls).validate_python(values)
    except pydantic.ValidationError as error:
        raise ConfigError(_describe(error)) from None
    except (ValueError, RuntimeError) as error:  # the dataclass's own checks (e.g. StudyError)
        raise ConfigError(str(error).strip().splitlines()[0]) from None


def write_config(path: str | os.PathLike, config: Any, study: str) -> Path:
    """Write the resolved settings as YAML with the ``study`` key, so the file replays the run."""
    path = Path(path)
    values = {"study": study, **config_to_dict(config)}
    text = _HEADER.format(study=study, path=path) + yaml.safe_dump(values, sort_keys=False, width=110)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def field_help(cls: type) -> dict[str, str]:
    """Per-setting help read from the dataclass docstring (``name: text`` or ``a, b: text`` lines)."""
    helps: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    current: list[str] = []
    # Inherited settings (e.g. ScaleSettings) are described in their own class's docstring.
    docs = "\n".join(klass.__doc__ or "" for klass in reversed(cls.__mro__) if dataclasses.is_dataclass(klass))
    for line in docs.splitlines():
        match = re.match(r"^\s+([a-z_][\w]*(?:\s*(?:,|and)\s*[a-z_][\w]*)*)\s*:\s+(.*)$", line)
        if match and all(n.strip() in names for n in re.split(r",|\band\b", match.group(1))):
            current = [n.strip() for n in re.split(r",|\band\b", match.group(1))]
            for name in current:
                helps[name] = match.group(2).strip()
        elif current and line.strip() and line.startswith(" " * 8):
            for name in current:
                helps[name] += " " + line.strip()
        else:
            current = []
    return helps
