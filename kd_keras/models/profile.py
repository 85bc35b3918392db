"""Model size and cost: parameter counts and multiply-accumulate operations (MACs).

MACs count the multiply-adds of the layers that carry nearly all of a CNN's arithmetic, at the model's own input
size and for one image: ``Conv1D/2D/3D`` (grouped included), ``DepthwiseConv2D``, ``SeparableConv1D/2D``,
``Conv2DTranspose`` and ``Dense``. Biases, batch normalisation, activations, pooling and element-wise ops are not
counted. This is the convention of the MobileNet paper's "Mult-Adds" and of torchvision's "GFLOPS" column (which
reports MACs), so figures compare with the literature: Keras' MobileNet at 224x224 is 568.7 M here, "569 million
Mult-Adds" in Howard et al. 2017, Table 8.

Example:
    >>> from kd_keras.models import build_model
    >>> from kd_keras.models.profile import count_macs, count_params
    >>> model = build_model("mobilenet_w1", input_shape=(224, 224, 3), num_classes=1000)
    >>> count_params(model), count_macs(model)
    (4231976, 568740352)
"""

from __future__ import annotations

import math

import keras
from keras import layers

_CONVOLUTIONS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
_TRANSPOSED = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)


def count_params(model: keras.Model, trainable: bool = True) -> int:
    """Number of parameters of ``model``.

    Args:
        model: any Keras model (nested models included).
        trainable: ``True``: trainable weights only (what an optimizer updates, and what papers and imgclsmob
            report); ``False``: all weights, including batch-norm moving statistics.

    Example:
        >>> count_params(keras.applications.ResNet50(weights=None)), count_params(
        ...     keras.applications.ResNet50(weights=None), trainable=False)
        (25583592, 25636712)
    """
    weights = model.trainable_weights if trainable else model.weights
    return int(sum(math.prod(w.shape) for w in weights))


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulate operations of one forward pass of one image at ``model``'s input size.

    Walks the model's graph, so a layer called twice counts twice and nested models (e.g. a Keras-applications
    backbone used as a layer) are counted through.

    Args:
        model: a built functional or sequential model with a static input size.

    Returns:
        MACs per image (batch size 1).

    Raises:
        ValueError: the model's spatial input size is not static, or the model was never built.

    Example:
        >>> count_macs(keras.applications.MobileNet(weights=None))
        568740352
    """
    return _graph_macs(model, model.name)


def _graph_nodes(model: keras.Model, where: str) -> list:
    graph = model
    if isinstance(model, keras.Sequential):
        # A built Sequential model keeps an equivalent functional graph.
        graph = getattr(model, "_functional", None)
    nodes_by_depth = getattr(graph, "_nodes_by_depth", None)
    if nodes_by_depth is None:
        raise ValueError(f"{where}: count_macs needs a built functional or sequential model")
    return [node for depth in sorted(nodes_by_depth) for node in nodes_by_depth[depth]]


def _graph_macs(model: keras.Model, where: str) -> int:
    total = 0
    for node in _graph_nodes(model, where):
        operation = node.operation
        if isinstance(operation, keras.Model):
            total += _graph_macs(operation, f"{where}/{operation.name}")
        elif node.input_tensors:
            total += _layer_macs(operation, node.input_tensors[0].shape, node.output_tensors[0].shape, where)
    return total


def _spatial(shape: tuple, layer: layers.Layer, where: str) -> int:
    """Product of the spatial dimensions of an NHWC-style shape ``(batch, *spatial, channels)``."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ValueError(
            f"{where}: layer {layer.name!r} has a dynamic spatial size {shape}; build the model with a "
            f"fixed input size to count MACs"
        )
    return math.prod(dims)


def _layer_macs(layer, input_shape: tuple, output_shape: tuple, where: str) -> int:
    if isinstance(layer, layers.DepthwiseConv2D) or isinstance(layer, layers.DepthwiseConv1D):
        # kernel (k, k, in, multiplier): every output value takes k*k products.
        return _spatial(output_shape, layer, where) * math.prod(layer.kernel.shape)
    if isinstance(layer, _SEPARABLE):
        depthwise = math.prod(layer.depthwise_kernel.shape)
        pointwise = math.prod(layer.pointwise_kernel.shape)
        return _spatial(output_shape, layer, where) * (depthwise + pointwise)
    if isinstance(layer, _TRANSPOSED):
        # Every input value is scattered through the whole kernel (k, k, out, in / groups).
        return _spatial(input_shape, layer, where) * math.prod(layer.kernel.shape)
    if isinstance(layer, _CONVOLUTIONS):
        # kernel (k, k, in / groups, out): each output position takes all of it.
        return _spatial(output_shape, layer, where) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.Dense):
        leading = input_shape[1:-1]
        if any(d is None for d in leading):
            raise ValueError(f"{where}: Dense layer {layer.name!r} has a dynamic input shape {input_shape}")
        return math.prod(leading) * math.prod(layer.kernel.shape)
    return 0
