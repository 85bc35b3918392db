"""Multiply-adds of an exported file, counted from its graph (for file targets of the latency benchmark).

Counts what :func:`kd_keras.models.profile.count_macs` counts in Keras, per image: convolutions (grouped and
depthwise included) and fully connected layers / matrix products with a constant weight. A quantised file counts
the same (int8 convolutions do the same multiply-adds).

- ``.tflite``: ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED`` and ``BATCH_MATMUL`` from the interpreter's
  op and tensor details;
- ``.onnx``: ``Conv``, ``ConvInteger``, ``QLinearConv``, ``Gemm``, ``MatMul``, ``MatMulInteger`` from shape
  inference with a batch of one.

Example:

```python
from kd_keras.export.graph_macs import graph_macs

graph_macs("student_int8.tflite")   # 143,000,000 for fdmobilenet_w1 at 224x224
```
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["graph_macs"]


def _tflite_macs(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(details["index"], [1, *details["shape"][1:]])
    interpreter.allocate_tensors()
    shapes = {t["index"]: tuple(int(d) for d in t["shape"]) for t in interpreter.get_tensor_details()}
    total = 0
    for op in interpreter._get_ops_details():  # the only per-op view the Python API gives
        name, inputs, outputs = op["op_name"], list(op["inputs"]), list(op["outputs"])
        if not outputs or len(inputs) < 2 or inputs[1] < 0:
            continue
        out, weight = shapes.get(outputs[0]), shapes.get(inputs[1])
        if out is None or weight is None:
            continue
        if name == "CONV_2D":  # weight (out_ch, kh, kw, in_ch / groups)
            total += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif name == "DEPTHWISE_CONV_2D":  # weight (1, kh, kw, out_ch)
            total += int(np.prod(out)) * weight[1] * weight[2]
        elif name == "FULLY_CONNECTED":  # weight (units, in)
            total += int(np.prod(out)) * weight[-1]
        elif name == "BATCH_MATMUL":
            total += int(np.prod(out)) * shapes[inputs[0]][-1]
    return total


def _onnx_macs(path: Path) -> int:
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:  # a quantised weight reaches its conv through DequantizeLinear
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                shapes[node.output[0]] = tuple(numpy_helper.to_array(value).shape)
    total = 0
    for node in model.graph.node:
        weight_index = 3 if node.op_type == "QLinearConv" else 1
        if len(node.input) <= weight_index:
            continue
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[weight_index])
        if not out or not weight or 0 in out:
            continue
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):  # weight (out_ch, in_ch / groups, kh, kw)
            total += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
            inner = shapes.get(node.input[0], (0,))[-1]
            total += int(np.prod(out)) * int(inner)
    return total


def graph_macs(path: str | os.PathLike) -> int:
    """Multiply-adds per image of a ``.tflite`` or ``.onnx`` file, from its graph.

    Raises:
        ValueError: not a ``.tflite`` or ``.onnx`` file.
    """
    path = Path(path)
    if path.suffix == ".tflite":
        return _tflite_macs(path)
    if path.suffix == ".onnx":
        return _onnx_macs(path)
    raise ValueError(f"{path}: multiply-adds are counted for .tflite and .onnx files")
