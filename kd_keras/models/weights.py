"""Pretrained weights for the teachers, with a clear way out when there is no internet.

``keras.applications`` downloads ImageNet weights on first use and caches them in ``$KERAS_HOME/models/``
(``~/.keras/models/`` by default). On a machine without internet that download ends in a long URL traceback;
here it ends in one :class:`WeightsUnavailableError` that names the exact file to provide and where to put it.

The same module reads Keras' legacy "notop" ``.h5`` files layer by layer (:func:`read_legacy_h5_weights`), so
a student that shares layer names with a teacher (``densenet40`` and DenseNet-121) can start from its weights.

Example:
    >>> from kd_keras.models.weights import resolve_backbone_weights
    >>> resolve_backbone_weights("resnet50", None) is None
    True
    >>> resolve_backbone_weights("resnet50", "imagenet")  # offline, no cached file
    Traceback (most recent call last):
    WeightsUnavailableError: resnet50: cannot get the ImageNet weights: ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had (no cached file and the download failed)."""


@dataclass(frozen=True)
class NotopWeights:
    """A Keras-applications ImageNet weights file without the classifier ("notop").

    Args:
        file_name: the name Keras caches it under in ``$KERAS_HOME/models/``.
        origin: the URL Keras downloads it from.
        md5: the hash Keras checks after downloading.
    """

    file_name: str
    origin: str
    md5: str


# File names, URLs and hashes as in keras/src/applications/{vgg16,resnet,densenet,inception_v3}.py (Keras 3.15).
NOTOP_WEIGHTS: dict[str, NotopWeights] = {
    "vgg16": NotopWeights(
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
    ),
    "resnet50": NotopWeights(
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
    ),
    "densenet121": NotopWeights(
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "densenet169": NotopWeights(
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "densenet/densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "b8c4d4c20dd625c148057b9ff1c1176b",
    ),
    "densenet201": NotopWeights(
        "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "densenet/densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
    ),
    "inception_v3": NotopWeights(  # keras/src/applications/inception_v3.py
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _KERAS_BASE + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
    ),
}


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights: ``$KERAS_HOME/models`` (default ``~/.keras/models``).

    Like ``keras.utils.get_file``, falls back to ``/tmp/.keras/models`` when the Keras home is not writable.
    ``KERAS_HOME`` is read at call time, so a test or a user can point it elsewhere after importing Keras.
    """
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser()).expanduser()
    probe = home if home.exists() else home.parent
    if not os.access(probe, os.W_OK):
        home = Path("/tmp/.keras")
    return home / "models"


def resolve_backbone_weights(arch: str, weights: str | os.PathLike | None) -> Path | None:
    """A local weights file for ``arch``'s backbone, or ``None`` for random initialisation.

    Args:
        arch: a key of :data:`NOTOP_WEIGHTS`, e.g. ``"resnet50"``.
        weights: ``None``, ``"imagenet"`` (the cached Keras notop file, downloaded if missing) or a path to a
            weights file.

    Returns:
        ``None`` or the path of an existing file.

    Raises:
        WeightsUnavailableError: ``"imagenet"`` was asked for, the file is not cached and cannot be downloaded.
        FileNotFoundError: ``weights`` is a path that does not exist.

    Example:
        >>> resolve_backbone_weights("vgg16", "imagenet")
        PosixPath('/root/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
    """
    if weights is None:
        return None
    if arch not in NOTOP_WEIGHTS:
        raise ValueError(f"no pretrained weights are known for {arch!r}; known: {sorted(NOTOP_WEIGHTS)}")
    if str(weights) == "imagenet":
        return _imagenet_file(arch)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{arch}: weights file {path} does not exist (pass weights='imagenet', None, or an existing file)"
        )
    return path


def _imagenet_file(arch: str) -> Path:
    spec = NOTOP_WEIGHTS[arch]
    models_dir = keras_models_dir()
    cached = models_dir / spec.file_name
    if cached.is_file():
        return cached
    try:
        # Looked up at call time so tests can replace the download; cache_dir keeps our lookup and Keras' in sync.
        downloaded = keras.utils.get_file(
            spec.file_name, spec.origin, cache_subdir="models", cache_dir=str(models_dir.parent), file_hash=spec.md5
        )
    except Exception as error:  # any download failure gets the same advice
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        # Keras' message repeats the URL ("URL fetch failure on <url>: None -- <reason>"); keep the reason.
        reason = reason.split(" -- ")[-1][:200]
        message = (
            f"{arch}: cannot get the ImageNet weights: {spec.file_name} is not in {models_dir} and the download "
            f"failed ({reason}). Copy that file (from {spec.origin}) into {models_dir}/ (Keras' cache: "
            f"$KERAS_HOME/models, by default ~/.keras/models/), or pass its path as "
            f"weights='/path/to/{spec.file_name}', or build with weights=None."
        )
        # `from None`: the user gets this one message, not the URL/socket traceback beneath it.
        raise WeightsUnavailableError(message) from None
    return Path(downloaded)


def load_backbone_weights(backbone: keras.Model, path: str | os.PathLike, arch: str) -> None:
    """Load a Keras-applications weights file into ``backbone``; a mismatch is one clear ``ValueError``.

    Args:
        backbone: the model ``keras.applications`` built (layers in Keras' order).
        path: a legacy ``.h5``/``.hdf5`` weights file (what Keras caches) or a Keras 3 ``.weights.h5`` file of
            the same backbone.
        arch: the architecture's name, for the message.

    Example:
        >>> backbone = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
        >>> load_backbone_weights(backbone, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16")
    """
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"{arch}: weights file {path} must be a .h5 / .hdf5 file")
    try:
        backbone.load_weights(str(path))
    except Exception as error:  # Keras raises several types for a wrong file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise ValueError(f"{arch}: weights file {path} does not fit the {arch} backbone: {reason}") from None


def read_legacy_h5_weights(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """The weights of a Keras legacy ``.h5`` weights file, by layer name.

    Keras-applications files (and ``model.save("x.h5")`` files) store each layer's arrays in a group named after
    the layer, in the order of ``layer.weights``.

    Args:
        path: the ``.h5`` file.

    Returns:
        ``{layer_name: [array, ...]}`` for every layer that has weights.

    Example:
        >>> w = read_legacy_h5_weights("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5")
        >>> w["conv1_conv"][0].shape
        (7, 7, 3, 64)
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ValueError("no 'layer_names' attribute (not a Keras legacy weights file)")
            weights = {}
            for raw_name in group.attrs["layer_names"]:
                layer_name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                layer_group = group[layer_name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in layer_group.attrs["weight_names"]]
                if names:
                    weights[layer_name] = [np.asarray(layer_group[n]) for n in names]
            return weights
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"cannot read Keras weights file {path}: {error}") from None
