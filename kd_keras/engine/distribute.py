"""Choose a ``tf.distribute`` strategy and a mixed-precision policy from settings or the environment.

- ``"default"``: no distribution (one device).
- ``"mirrored"``: ``MirroredStrategy`` over all local GPUs, or over given devices (``devices=[...]`` or
  ``"mirrored:/cpu:0,/cpu:1"``); on a machine without GPU, over its logical CPU devices
  (:func:`configure_logical_cpus`, before TensorFlow starts).
- ``"multiworker"``: ``MultiWorkerMirroredStrategy`` from the ``TF_CONFIG`` environment variable (ring
  collectives: they run on CPU and GPU). Create it first thing in the program, before other TensorFlow work.
- ``"auto"``: ``multiworker`` when ``TF_CONFIG`` names more than one worker, ``mirrored`` with two or
  more GPUs, else ``default``.

:func:`run_scope` is what the study runner enters for a whole run: devices, strategy scope, Keras
mixed-precision policy and the default ``jit_compile`` of every ``Distiller.compile`` (restored afterwards).
:func:`predict_on_batch` (pseudo-labels, validation, evaluation) splits a batch over every replica, of every
worker, and gathers the rows back in order (:func:`replica_rows`, :func:`local_rows`).

Example:
    >>> strategy = get_strategy("auto")
    >>> with strategy.scope():
    ...     distiller = Distiller(student, teacher)
    >>> global_batch = per_replica_batch * strategy.num_replicas_in_sync
    >>> with run_scope(strategy="mirrored", precision="mixed_bfloat16", logical_cpu_devices=2) as strategy:
    ...     train(build_model("mobilenet_wd4", (32, 32, 1), 2), make_stream, epochs=1)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["PRECISIONS", "STRATEGIES", "ScaleError", "check_scale", "configure_logical_cpus", "default_jit_compile",
           "float32_model", "get_strategy", "global_batch_size", "local_rows", "predict_on_batch", "replica_rows",
           "run_scope", "tf_config_workers"]

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Logical CPU devices created for ``mirrored`` on a machine without GPU when the settings name none.
DEFAULT_CPU_REPLICAS = 2

_jit_compile: list[bool] = [False]  # the run's default for Distiller.compile(jit_compile=None)


class ScaleError(ValueError):
    """A strategy / precision / device setting that cannot be used here; ``str(error)`` is one line."""


def tf_config_workers(environ: dict[str, str] | None = None) -> int:
    """Number of workers named in ``TF_CONFIG`` (0 when unset); a clear error when it is malformed."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG is not valid: {error!r}; expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def configure_logical_cpus(count: int) -> int:
    """Split the CPU into ``count`` logical devices (replicas of a CPU ``MirroredStrategy``); returns how many
    logical CPU devices there are (0 when ``count`` <= 1: nothing is configured or started).

    Must run before TensorFlow executes its first operation. Afterwards the configuration is fixed: when the
    process already has ``count`` or more logical CPUs (e.g. the test suite's two) that is fine, else
    :class:`ScaleError` says to set it earlier.
    """
    if count <= 1:
        return 0  # nothing asked; listing logical devices would start TensorFlow (and fix its configuration)
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < count:
            raise ScaleError(f"logical_cpu_devices: {count}: TensorFlow had already started with {have} CPU "
                             "device(s); set it in the settings of the run (not after other TensorFlow work)"
                             ) from None
    return len(tf.config.list_logical_devices("CPU"))


def get_strategy(kind: str = "auto", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """A strategy from a flag.

    Args:
        kind: ``"auto"``, ``"default"``, ``"mirrored"`` (optionally ``"mirrored:dev1,dev2"``) or
            ``"multiworker"``.
        devices: devices of a ``MirroredStrategy`` (e.g. ``["/cpu:0", "/cpu:1"]``); ``None`` = all GPUs, or all
            logical CPU devices when there is no GPU.

    Returns:
        The strategy; use its ``scope()`` to build models and compile.

    Raises:
        ValueError: an unknown kind; ``mirrored`` without GPU and with one CPU device; ``multiworker`` without
            ``TF_CONFIG``.
    """
    if kind.startswith("mirrored:"):
        kind, listed = "mirrored", kind.split(":", 1)[1]
        devices = [d.strip() for d in listed.split(",") if d.strip()]
    if kind not in STRATEGIES:
        raise ValueError(f"unknown strategy {kind!r}; choose one of {STRATEGIES} (or 'mirrored:dev1,dev2')")
    if kind == "auto":
        if tf_config_workers() > 1:
            kind = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if devices is None and not tf.config.list_logical_devices("GPU"):
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            if len(cpus) < 2:
                raise ValueError(
                    "mirrored strategy: no GPU found and one CPU device; set logical_cpu_devices: 2 (before "
                    "TensorFlow starts), pass devices=['/cpu:0', '/cpu:1'], or use 'default'"
                )
            devices = cpus
        return tf.distribute.MirroredStrategy(devices=devices)
    if tf_config_workers() == 0:
        raise ValueError("multiworker strategy needs TF_CONFIG (cluster and task) in the environment")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """``per_replica * num_replicas_in_sync``: the batch size of a ``tf.data`` stream under ``strategy``."""
    strategy = strategy or tf.distribute.get_strategy()
    return int(per_replica) * strategy.num_replicas_in_sync


def default_jit_compile() -> bool:
    """The ``jit_compile`` of a ``Distiller.compile`` that does not say (the run's ``jit_compile`` setting)."""
    return _jit_compile[0]


def check_scale(strategy: str = "auto", precision: str = "float32", logical_cpu_devices: int = 0) -> None:
    """Refuse settings that cannot run on this machine, with one line (:class:`ScaleError`): an unknown value,
    ``mixed_float16`` without GPU (use ``mixed_bfloat16``), ``multiworker`` without ``TF_CONFIG``."""
    if strategy.split(":")[0] not in STRATEGIES:
        raise ScaleError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise ScaleError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if logical_cpu_devices < 0:
        raise ScaleError(f"logical_cpu_devices: {logical_cpu_devices} must be >= 0")
    try:
        workers = tf_config_workers()
    except ValueError as error:
        raise ScaleError(str(error)) from None
    if strategy == "multiworker" and workers == 0:
        raise ScaleError("strategy: multiworker needs TF_CONFIG in the environment (one worker per process; "
                         "`python scripts/launch_workers.py --workers N -- run <study> ...` sets it); or use "
                         "mirrored/default")
    if precision == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        raise ScaleError("precision: mixed_float16 needs a GPU (float16 on a CPU is slow and lacks kernels); "
                         "on a CPU use mixed_bfloat16, or float32")


@contextlib.contextmanager
def run_scope(strategy: str = "auto", precision: str = "float32", jit_compile: bool = False,
              logical_cpu_devices: int = 0) -> Iterator[tf.distribute.Strategy]:
    """Everything built, compiled, trained, predicted and evaluated inside runs under one strategy and one Keras
    mixed-precision policy; the previous policy and ``jit_compile`` default are restored on exit.

    Args:
        strategy: see :func:`get_strategy`.
        precision: ``"float32"``, ``"mixed_float16"`` (GPU; Keras wraps the optimizer in a
            ``LossScaleOptimizer``) or ``"mixed_bfloat16"`` (CPU and recent GPUs; no loss scaling needed).
        jit_compile: XLA for every ``Distiller.compile`` that does not say otherwise.
        logical_cpu_devices: split the CPU into this many devices first (0: 2 for ``mirrored`` without a GPU,
            else none).

    Yields:
        The strategy, its scope entered.

    Raises:
        ScaleError: settings that cannot run here (one line).
    """
    import keras

    check_scale(strategy, precision, logical_cpu_devices)
    wanted = logical_cpu_devices
    if wanted == 0 and strategy == "mirrored" and not tf.config.list_physical_devices("GPU"):
        wanted = DEFAULT_CPU_REPLICAS
    configure_logical_cpus(wanted)
    try:
        chosen = get_strategy(strategy)
    except ValueError as error:
        raise ScaleError(str(error).splitlines()[0]) from None
    previous_policy, previous_jit = keras.mixed_precision.global_policy(), _jit_compile[0]
    keras.mixed_precision.set_global_policy(precision)
    _jit_compile[0] = bool(jit_compile)
    # The studies free memory between trainings with keras.backend.clear_session, which resets the default graph
    # (where TensorFlow keeps the entered strategy scopes) and Keras' global state (the precision policy): every
    # model built after it would silently be on one device in float32. Inside the run, clear_session keeps both.
    original_clear = keras.backend.clear_session
    entered = [chosen.scope()]

    def clear_session_in_scope(*args: Any, **kwargs: Any) -> None:
        policy = keras.mixed_precision.global_policy()
        entered[0].__exit__(None, None, None)
        original_clear(*args, **kwargs)
        keras.mixed_precision.set_global_policy(policy)
        entered[0] = chosen.scope()
        entered[0].__enter__()

    entered[0].__enter__()
    keras.backend.clear_session = keras.utils.clear_session = clear_session_in_scope
    try:
        yield chosen
    finally:
        keras.backend.clear_session = keras.utils.clear_session = original_clear
        entered[0].__exit__(None, None, None)
        keras.mixed_precision.set_global_policy(previous_policy)
        _jit_compile[0] = previous_jit


def replica_rows(rows: int, replicas: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` rows of a batch of ``rows`` that each of ``replicas`` replicas predicts: contiguous
    shares of ``ceil(rows / replicas)`` in replica order (the last ones shorter or empty), so gathering the
    replicas' outputs in replica order gives the rows in their original order.

    Example:
        >>> replica_rows(7, 2)
        [(0, 4), (4, 7)]
        >>> replica_rows(1, 2)
        [(0, 1), (1, 1)]
    """
    share = -(-int(rows) // int(replicas))
    return [(min(r * share, rows), min((r + 1) * share, rows)) for r in range(int(replicas))]


def local_rows(rows: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """How many of a batch's ``rows`` this process's replicas compute in :func:`predict_on_batch` under
    ``strategy`` (default: the current one): all of them on one worker, about ``rows / N`` on each of N workers.

    Example:
        >>> local_rows(64)  # no strategy: one replica, every row
        64
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return int(rows)
    here = len(getattr(strategy.extended, "worker_devices", ())) or replicas
    # MultiWorkerMirroredStrategy numbers the replicas worker k holds k * here to k * here + here - 1.
    first = int(getattr(strategy.extended, "_id_in_cluster", 0) or 0) * here
    return sum(stop - start for start, stop in replica_rows(rows, replicas)[first : first + here])


def _replica_predict(model: Any, strategy: tf.distribute.Strategy) -> Any:
    """A ``tf.function``: a batch of ``replicas * share`` rows split over every replica of ``strategy`` (replica
    ``r`` calls ``model`` on rows ``r * share`` to ``(r + 1) * share``), the outputs (float32) gathered back in row
    order on this worker."""
    cached = getattr(model, "_kd_replica_predict", None)
    if cached is not None and cached[0] is strategy:
        return cached[1]

    def on_replica(images: tf.Tensor) -> Any:
        context = tf.distribute.get_replica_context()
        share = tf.shape(images)[0] // context.num_replicas_in_sync
        start = context.replica_id_in_sync_group * share
        outputs = model(images[start : start + share], training=False)
        return tf.nest.map_structure(lambda value: tf.cast(value, tf.float32), outputs)

    multi_worker = getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)()

    def gather(value: Any) -> tf.Tensor:
        if multi_worker:  # the other workers' rows: an all-gather
            return strategy.gather(value, axis=0)
        # One worker: its replicas' results in replica order, joined without a collective (collective keys of two
        # MirroredStrategy objects over the same devices collide in one process).
        return tf.concat(strategy.experimental_local_results(value), axis=0)

    @tf.function(reduce_retracing=True)
    def predict(images: tf.Tensor) -> Any:
        return tf.nest.map_structure(gather, strategy.run(on_replica, args=(images,)))

    model._kd_replica_predict = (strategy, predict)
    return predict


def predict_on_batch(model: Any, images: Any) -> Any:
    """``model``'s outputs for one batch as float32 NumPy arrays (a list for a model with several outputs), whatever
    strategy the model was built under and whatever its precision.

    On one replica this is Keras' ``predict_on_batch``. Under a strategy with several replicas (Keras' own
    ``predict_on_batch`` would hand the whole batch to every replica and return every row once per replica) the
    batch is split over **every** replica, each predicting a contiguous share (:func:`replica_rows`; the batch is
    padded with blank rows to equal shares of at least one row, whose outputs are dropped), and the outputs are
    gathered back in the original row order. Under ``MultiWorkerMirroredStrategy`` each worker passes the same
    batch, computes only the rows of its own replicas (1/N of the model's work on N workers: the teacher's
    pseudo-labels of a pool, evaluation) and gets every row back (an all-gather): every worker must make the same
    calls in the same order, as in training. Mixed-precision outputs (float16, bfloat16) are returned as float32.

    Example:
        >>> logits = predict_on_batch(student, images)  # (len(images), classes) float32
    """
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or strategy.num_replicas_in_sync == 1:
        outputs = model.predict_on_batch(images)
    else:
        images = tf.convert_to_tensor(images)
        rows, replicas = int(images.shape[0]), strategy.num_replicas_in_sync
        # Padded with blank rows to equal shares of at least one row: an empty share fails in some kernels
        # (a convolution of an empty batch under MultiWorkerMirroredStrategy) and equal shares gather evenly.
        padding = max(1, -(-rows // replicas)) * replicas - rows
        if padding:
            images = tf.concat([images, tf.zeros((padding, *images.shape[1:]), images.dtype)], axis=0)
        outputs = tf.nest.map_structure(lambda value: value[:rows], _replica_predict(model, strategy)(images))
    return tf.nest.map_structure(lambda value: np.asarray(value).astype(np.float32, copy=False), outputs)


def _float32_config(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(value.get("config"), dict):
            return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    return value


def float32_model(model: Any) -> Any:
    """``model`` itself when it computes in float32, else a float32 copy of it with the same weights (mixed
    precision keeps float32 master weights, so nothing is lost): what an export converts, so a student trained in
    ``mixed_float16`` / ``mixed_bfloat16`` exports to float32 TFLite / ONNX files.

    Example:
        >>> exported = float32_model(keras.models.load_model("student_bf16.keras"))
    """
    import keras

    layers = list(model._flatten_layers(include_self=False))
    if all(layer.dtype_policy.name == "float32" for layer in layers):
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        config = _float32_config(keras.saving.serialize_keras_object(model))
        copy = keras.saving.deserialize_keras_object(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy
