"""Choose a ``tf.distribute`` strategy from a flag or the environment.

- ``"default"``: no distribution (one device).
- ``"mirrored"``: ``MirroredStrategy`` over all local GPUs, or over given devices (``devices=[...]`` or
  ``"mirrored:/cpu:0,/cpu:1"``).
- ``"multiworker"``: ``MultiWorkerMirroredStrategy`` from the ``TF_CONFIG`` environment variable (ring
  collectives: they run on CPU and GPU). Create it first thing in the program, before other TensorFlow work.
- ``"auto"``: ``multiworker`` when ``TF_CONFIG`` names more than one worker, ``mirrored`` with two or
  more GPUs, else ``default``.

Example:
    >>> strategy = get_strategy("auto")
    >>> with strategy.scope():
    ...     distiller = Distiller(student, teacher)
    >>> global_batch = per_replica_batch * strategy.num_replicas_in_sync
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")


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


def get_strategy(kind: str = "auto", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """A strategy from a flag.

    Args:
        kind: ``"auto"``, ``"default"``, ``"mirrored"`` (optionally ``"mirrored:dev1,dev2"``) or
            ``"multiworker"``.
        devices: devices of a ``MirroredStrategy`` (e.g. ``["/cpu:0", "/cpu:1"]``); ``None`` = all GPUs.

    Returns:
        The strategy; use its ``scope()`` to build models and compile.
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
            raise ValueError(
                "mirrored strategy: no GPU found; pass devices=['/cpu:0', '/cpu:1'] "
                "(after configuring logical CPU devices) or use 'default'"
            )
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
