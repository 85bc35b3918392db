"""Exact rewrites of a tf2onnx graph that ONNX Runtime runs faster; the arithmetic is unchanged.

tf2onnx converts an NHWC Keras model by wrapping NCHW convolutions in transposes and pushing them apart; two
patterns stop that and cost ONNX Runtime real time (measured with :func:`kd_keras.export.profile.profile_onnx`):

- **Channel shuffle** (ShuffleNet v1/v2): ``Transpose(NCHW->NHWC) -> Reshape(-1, HW, g, C/g) -> Transpose(0, 1, 3,
  2) -> Reshape(-1, H, W, C)``, then usually ``Split`` or ``Transpose`` back to NCHW: three full copies of the
  tensor per unit (45% of ShuffleNetV2's time). It becomes one ``Gather`` on the channel axis in NCHW (the same
  channel permutation, whole planes copied), and the ``Transpose -> Split -> Transpose`` that follows becomes a
  ``Split`` on the channel axis.
- **Input normalisation** ``(image - mean) * (1 / std)`` on the NHWC input, a broadcast over the innermost axis of
  three channels that ONNX Runtime runs per element (~25% of FD-MobileNet's time): moved after the input's
  ``Transpose`` to NCHW, where each channel is one contiguous plane.

Both are exact (a permutation, elementwise ops moved across a transpose): the rewritten file gives the same
logits up to float rounding (the parity gate applies as always).

Example:

```python
from kd_keras.export.onnx_optimize import optimize_onnx

stats = optimize_onnx("student.onnx")   # rewrites the file in place
print(stats)                             # {'channel_shuffle': 16, 'split_transposes': 13, 'input_normalisation': 1}
```
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

__all__ = ["optimize_onnx", "optimize_onnx_model"]

_TO_NHWC = [0, 2, 3, 1]
_TO_NCHW = [0, 3, 1, 2]


def _attr(node, name, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


class _Graph:
    """Producer/consumer maps over an ``onnx.GraphProto``, rebuilt after each rewrite."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def constant(self, name):
        if name in self.constants:
            return self.constants[name]
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and _attr(node, "value") is not None:
            return _numpy_of(node)
        return None

    def only_consumer(self, name, op_type):
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type and name not in self.outputs:
            return users[0]
        return None


def _numpy_of(constant_node):
    from onnx import numpy_helper

    return numpy_helper.to_array(_attr(constant_node, "value"))


def _replace_input(graph, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _rewrite_channel_shuffles(model) -> int:
    """``Transpose(0,2,3,1) -> Reshape -> Transpose(0,1,3,2) -> Reshape`` -> ``Gather(axis=1)`` + ``Transpose``."""
    from onnx import helper, numpy_helper

    graph, count = model.graph, 0
    while True:
        view = _Graph(graph)
        found = None
        for t1 in graph.node:
            if t1.op_type != "Transpose" or list(_attr(t1, "perm", [])) != _TO_NHWC:
                continue
            r1 = view.only_consumer(t1.output[0], "Reshape")
            t2 = r1 and view.only_consumer(r1.output[0], "Transpose")
            r2 = t2 and view.only_consumer(t2.output[0], "Reshape")
            if not r2 or list(_attr(t2, "perm", [])) != [0, 1, 3, 2]:
                continue
            shape1, shape2 = view.constant(r1.input[1]), view.constant(r2.input[1])
            if shape1 is None or shape2 is None or len(shape1) != 4 or len(shape2) != 4:
                continue
            groups, per_group = int(shape1[2]), int(shape1[3])
            if int(shape2[3]) != groups * per_group or int(shape1[1]) != int(shape2[1]) * int(shape2[2]):
                continue
            found = (t1, r1, t2, r2, groups, per_group)
            break
        if found is None:
            return count
        t1, r1, t2, r2, groups, per_group = found
        # Output channel k = g*per_group + j's new place is j*groups + g: out[j*groups + g] = in[g*per_group + j].
        perm = np.arange(groups * per_group).reshape(groups, per_group).T.reshape(-1).astype(np.int64)
        index_name = f"{r2.name}_shuffle_indices"
        graph.initializer.append(numpy_helper.from_array(perm, index_name))
        gathered = f"{r2.name}_gathered_nchw"
        gather = helper.make_node("Gather", [t1.input[0], index_name], [gathered], axis=1, name=f"{r2.name}_gather")
        back = helper.make_node("Transpose", [gathered], [r2.output[0]], perm=_TO_NHWC, name=f"{r2.name}_to_nhwc")
        position = list(graph.node).index(t1)
        for node in (t1, r1, t2, r2):
            graph.node.remove(node)
        graph.node.insert(position, back)
        graph.node.insert(position, gather)
        count += 1


def _rewrite_transpose_pairs(model) -> int:
    """``Transpose(P) -> [Split(axis) ->] Transpose(P^-1)`` on every path -> nothing, or a ``Split`` on the
    original axis; a transpose whose every consumer is its inverse disappears."""
    from onnx import helper

    graph, count = model.graph, 0
    changed = True
    while changed:
        changed = False
        view = _Graph(graph)
        for t1 in list(graph.node):
            if t1.op_type != "Transpose" or t1.output[0] in view.outputs:
                continue
            perm = list(_attr(t1, "perm", []))
            inverse = list(np.argsort(perm))
            users = view.consumers.get(t1.output[0], [])
            if users and all(u.op_type == "Transpose" and list(_attr(u, "perm", [])) == inverse for u in users):
                for user in users:
                    _replace_input(graph, user.output[0], t1.input[0])
                    graph.node.remove(user)
                graph.node.remove(t1)
                count, changed = count + 1, True
                break
            split = view.only_consumer(t1.output[0], "Split")
            if split is None or any(o in view.outputs for o in split.output):
                continue
            after = [view.consumers.get(o, []) for o in split.output]
            if not all(users and all(u.op_type == "Transpose" and list(_attr(u, "perm", [])) == inverse
                                     for u in users) for users in after):
                continue
            axis = int(_attr(split, "axis", 0)) % len(perm)
            inputs = [t1.input[0], *split.input[1:]]
            new_outputs = [f"{o}_untransposed" for o in split.output]
            extra = {"num_outputs": _attr(split, "num_outputs")} if _attr(split, "num_outputs") else {}
            new_split = helper.make_node("Split", inputs, new_outputs, axis=perm[axis], name=f"{split.name}_nchw",
                                         **extra)
            for new_output, users in zip(new_outputs, after, strict=True):
                for user in users:
                    _replace_input(graph, user.output[0], new_output)
                    graph.node.remove(user)
            position = list(graph.node).index(t1)
            graph.node.remove(t1)
            graph.node.remove(split)
            graph.node.insert(position, new_split)
            count, changed = count + 1, True
            break
    return count


def _rewrite_input_normalisation(model) -> int:
    """``image -> Sub(c) -> Mul(s) -> Transpose(0,3,1,2)`` -> ``Transpose -> Sub(c') -> Mul(s')`` (NCHW consts)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    view = _Graph(graph)
    count = 0
    for graph_input in graph.input:
        sub = view.only_consumer(graph_input.name, "Sub")
        mul = sub and view.only_consumer(sub.output[0], "Mul")
        transpose = mul and view.only_consumer(mul.output[0], "Transpose")
        if not transpose or sub.input[0] != graph_input.name or list(_attr(transpose, "perm", [])) != _TO_NCHW:
            continue
        offset, scale = view.constant(sub.input[1]), view.constant(mul.input[1])
        if offset is None or scale is None or offset.ndim > 1 or scale.ndim > 1 or mul.input[0] != sub.output[0]:
            continue
        nchw = f"{graph_input.name}_nchw"
        offset_name, scale_name = f"{sub.name}_offset_nchw", f"{mul.name}_scale_nchw"
        graph.initializer.extend([numpy_helper.from_array(offset.reshape(1, -1, 1, 1), offset_name),
                                  numpy_helper.from_array(scale.reshape(1, -1, 1, 1), scale_name)])
        centred = f"{sub.name}_nchw_out"
        nodes = [helper.make_node("Transpose", [graph_input.name], [nchw], perm=_TO_NCHW, name=f"{transpose.name}_in"),
                 helper.make_node("Sub", [nchw, offset_name], [centred], name=f"{sub.name}_nchw"),
                 helper.make_node("Mul", [centred, scale_name], [transpose.output[0]], name=f"{mul.name}_nchw")]
        position = list(graph.node).index(sub)
        for node in (sub, mul, transpose):
            graph.node.remove(node)
        for node in reversed(nodes):
            graph.node.insert(position, node)
        count += 1
    return count


def _drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)


def optimize_onnx_model(model) -> dict[str, int]:
    """Apply every rewrite to an ``onnx.ModelProto`` in place; returns how often each one applied.

    Example:
        >>> import onnx
        >>> stats = optimize_onnx_model(onnx.load("shufflenetv2_w1.onnx"))  # {'channel_shuffle': 16, ...}
    """
    import onnx

    stats = {"channel_shuffle": _rewrite_channel_shuffles(model)}
    stats["transposes_removed"] = _rewrite_transpose_pairs(model)
    stats["input_normalisation"] = _rewrite_input_normalisation(model)
    _drop_unused_initializers(model)
    onnx.checker.check_model(model)
    return stats


def optimize_onnx(path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> dict[str, int]:
    """Rewrite an ``.onnx`` file (in place, or to ``out_path``) with :func:`optimize_onnx_model`.

    Returns:
        How often each rewrite applied (all zero: the file is written unchanged).
    """
    import onnx

    model = onnx.load(str(path))
    stats = optimize_onnx_model(model)
    onnx.save(model, str(out_path or path))
    return stats
