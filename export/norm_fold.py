"""The input conv and its GroupNorm as one channels-last matrix product (an exact rewrite used by ``int8-conv``).

The feature encoder's first layer is a Conv1d from the waveform (1 channel, kernel k, stride s) followed by a
GroupNorm with one group per channel. The exporter writes that as Conv -> Reshape -> InstanceNormalization ->
Reshape -> Mul -> Add on ``[B, C, T]``: six passes over the graph's largest activation, then a transpose to the
channels-last layout the int8 convs want. Because the conv is linear, the norm's statistics follow from the
waveform's own: with X the ``[B, T', k]`` windows of the waveform (centred over time, Xc) and W the ``[k, C]``
weights, the conv's per-channel mean is removed by centring X and its variance is ``diag(Wᵀ cov(X) W)``, a k x k
covariance per clip. So the whole layer is ``Xc @ (W * a) + b``, with ``a = gain / sqrt(var + eps)`` per clip and
channel: one batched matrix product writing ``[B, T', C]`` directly, channels-last. It is the same function
(floating-point rounding aside); the conv's bias cancels in the norm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vocalprobe.export.graph_rewrites import attribute, replace_nodes

if TYPE_CHECKING:
    import onnx

__all__ = ["fold_input_conv_norm"]


def _constant(initializers, name):
    from onnx import numpy_helper

    return numpy_helper.to_array(initializers[name]) if name in initializers else None


def _match(conv, graph, initializers, consumers, producers):
    """The chain's nodes and constants starting at ``conv``, or None when it is not the pattern."""
    weight = _constant(initializers, conv.input[1]) if len(conv.input) > 1 else None
    if weight is None or weight.ndim != 3 or weight.shape[1] != 1 or attribute(conv, "group", 1) != 1:
        return None
    channels, _, kernel = weight.shape
    stride = int(attribute(conv, "strides", [1])[0])
    if (kernel % stride or any(d != 1 for d in attribute(conv, "dilations", [1]))
            or any(p != 0 for p in attribute(conv, "pads", [0, 0]))
            or attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID")):
        return None

    def single(value, op_type):
        users = consumers.get(value, [])
        wanted = [u for u in users if u.op_type == op_type]
        return wanted[0] if len(wanted) == 1 else None

    to_groups = single(conv.output[0], "Reshape")
    shape = _constant(initializers, to_groups.input[1]) if to_groups is not None else None
    if shape is None or list(shape) != [0, channels, -1]:
        return None
    norm = single(to_groups.output[0], "InstanceNormalization")
    if norm is None or len(consumers.get(to_groups.output[0], [])) != 1:
        return None
    scale, bias = _constant(initializers, norm.input[1]), _constant(initializers, norm.input[2])
    back = single(norm.output[0], "Reshape")
    if scale is None or bias is None or back is None or len(consumers.get(norm.output[0], [])) != 1:
        return None
    shape_node = producers.get(back.input[1])
    if shape_node is None or shape_node.op_type != "Shape" or shape_node.input[0] != conv.output[0] or (
            attribute(shape_node, "start", 0) != 0 or attribute(shape_node, "end") is not None):
        return None
    if {id(u) for u in consumers.get(conv.output[0], [])} != {id(to_groups), id(shape_node)}:
        return None
    if len(consumers.get(shape_node.output[0], [])) != 1:
        return None
    nodes = [conv, to_groups, norm, shape_node, back]
    gain, shift, last = scale.astype(np.float64), bias.astype(np.float64), back
    for op_type in ("Mul", "Add"):  # the GroupNorm's affine, written after the reshape back
        users = consumers.get(last.output[0], [])
        if len(users) != 1 or users[0].op_type != op_type:
            break
        node = users[0]
        other = [name for name in node.input if name != last.output[0]]
        value = _constant(initializers, other[0]) if len(other) == 1 else None
        if value is None or value.size != channels or (value.ndim == 2 and value.shape != (channels, 1)):
            break
        value = value.reshape(channels).astype(np.float64)
        if op_type == "Mul":
            gain, shift = gain * value, shift * value
        else:
            shift = shift + value
        nodes.append(node)
        last = node
    return {"nodes": nodes, "weight": weight.reshape(channels, kernel), "stride": stride, "gain": gain,
            "shift": shift, "eps": float(attribute(norm, "epsilon", 1e-5)), "input": conv.input[0],
            "output": last.output[0], "name": conv.name}


def _fold(found) -> tuple[list, list]:
    from vocalprobe.export.conv_int8 import _Builder

    weight, stride = found["weight"], found["stride"]
    channels, kernel = weight.shape
    blocks = kernel // stride
    b = _Builder(f"{found['name']}/normfold")
    samples = b.op("Reshape", [found["input"], b.ints([0, -1])])  # [B, N]
    length = b.op("Shape", [samples], start=1, end=2)
    frames = b.op("Add", [b.op("Div", [b.op("Sub", [length, b.ints([kernel])]), b.ints([stride])]), b.ints([1])])
    used = b.op("Mul", [b.op("Add", [frames, b.ints([blocks - 1])]), b.ints([stride])])
    groups = b.op("Reshape", [b.op("Slice", [samples, b.ints([0]), used, b.ints([1])]), b.ints([0, -1, stride])])
    taps = [groups if blocks == 1 else
            b.op("Slice", [groups, b.ints([i]), b.op("Add", [frames, b.ints([i])]), b.ints([1])])
            for i in range(blocks)]
    windows = taps[0] if blocks == 1 else b.op("Concat", taps, axis=-1)  # [B, T', k]
    centred = b.op("Sub", [windows, b.op("ReduceMean", [windows, b.ints([1])], keepdims=1)])
    count = b.op("Cast", [frames], to=1)  # float
    cov = b.op("Div", [b.op("MatMul", [b.op("Transpose", [centred], perm=[0, 2, 1]), centred]), count])  # [B, k, k]
    w_t = b.const(np.ascontiguousarray(weight.T, dtype=np.float32), "weight")  # [k, C]
    variance = b.op("ReduceSum", [b.op("Mul", [b.op("MatMul", [cov, w_t]), w_t]), b.ints([1])], keepdims=1)
    gain = b.op("Div", [b.const(found["gain"].astype(np.float32), "gain"),
                        b.op("Sqrt", [b.op("Add", [variance, b.const(np.array(found["eps"], np.float32))])])])
    y = b.op("Add", [b.op("MatMul", [centred, b.op("Mul", [w_t, gain])]),  # [B, T', C], channels-last
                     b.const(found["shift"].astype(np.float32), "shift")])
    b.op("Transpose", [y], found["output"], perm=[0, 2, 1])
    return b.nodes, b.constants


def fold_input_conv_norm(model: "onnx.ModelProto") -> list[str]:
    """Rewrite every waveform conv + per-channel GroupNorm chain (see the module docs) in place; returns the
    names of the convs folded. Anything that does not match the pattern exactly is left as it was."""
    graph = model.graph
    alive = list(graph.node)  # held, so that the id() of each node stays its own (graph_rewrites._live_nodes)
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in alive:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in alive for out in node.output}
    replaced, inserted, folded = set(), {}, []
    for conv in [n for n in alive if n.op_type == "Conv"]:
        found = _match(conv, graph, initializers, consumers, producers)
        if found is None:
            continue
        nodes, constants = _fold(found)
        inserted[id(found["nodes"][-1])] = nodes
        graph.initializer.extend(constants)
        replaced.update(id(n) for n in found["nodes"])
        folded.append(conv.name)
    if not folded:
        return folded
    kept = []
    for node in alive:
        kept.extend(inserted.get(id(node), []))
        if id(node) not in replaced:
            kept.append(node)
    replace_nodes(graph, kept)
    return folded
