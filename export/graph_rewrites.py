"""Small, exact ONNX graph rewrites used by the quantizers (``export.quantize``, ``export.conv_int8``).

* ``fuse_gelu``: the exporter writes GELU as ``x * 0.5 * (1 + erf(x / sqrt 2))``, five elementwise passes; this folds
  each one into onnxruntime's ``com.microsoft`` ``Gelu`` kernel (same function, one pass: ~10% of the run time of a
  CNN-heavy graph). onnxruntime's own fusion does not match the exporter's operand order.
* ``cancel_transposes``: ``Transpose(0, 2, 1)`` -> elementwise ops -> ``Transpose(0, 2, 1)`` is the identity on the
  region in between when every other operand is a scalar; both transposes are dropped (the region then works on the
  transposed layout). ``conv_int8`` emits channels-last convolutions, so its output transposes meet the next layer's
  input transposes across the GELU.
* ``clear_value_info``: rewritten graphs change intermediate shapes; stale shape annotations make onnxruntime warn
  and mis-plan buffers, so they are dropped (onnxruntime infers them again).

The rewrites change the graph only where a pattern is complete and self-contained; anything else is left as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["fuse_gelu", "cancel_transposes", "clear_value_info", "scalar_values", "attribute", "MS_DOMAIN",
           "use_ms_domain"]

MS_DOMAIN = "com.microsoft"
_SQRT2 = float(np.sqrt(2.0))
#: ops that act on each element independently (with scalar operands they do not care about the layout)
_ELEMENTWISE = {"Abs", "Add", "Div", "Erf", "Gelu", "Identity", "Mul", "Neg", "Relu", "Sigmoid", "Sqrt", "Sub", "Tanh"}


def attribute(node: "onnx.NodeProto", name: str, default=None):
    """The value of ``node``'s attribute ``name`` (ints, floats, strings as bytes...), or ``default``."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def use_ms_domain(model: "onnx.ModelProto") -> None:
    """Declare onnxruntime's contrib-op domain on ``model`` (idempotent)."""
    from onnx import helper

    if not any(entry.domain == MS_DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def scalar_values(graph: "onnx.GraphProto") -> dict[str, float]:
    """Values of the graph's one-element constants (initializers and ``Constant`` nodes), by tensor name."""
    from onnx import helper, numpy_helper

    values = {}
    for init in graph.initializer:
        if int(np.prod(init.dims)) == 1:
            values[init.name] = float(numpy_helper.to_array(init).reshape(()))
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            array = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
            if array.size == 1:
                values[node.output[0]] = float(array.reshape(()))
    return values


def _live_nodes(graph) -> list:
    """The graph's nodes, held: protobuf hands out a new Python wrapper per access unless one is alive, so the
    ``id()`` sets below are only stable while the caller keeps this list."""
    return list(graph.node)


def _consumers(graph, removed: set[int] = frozenset()) -> dict[str, list]:
    """``{value name: nodes reading it}``, leaving out nodes whose id is in ``removed``."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        if id(node) not in removed:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
    return consumers


def _replace_nodes(graph, removed: set[int], inserted: dict[int, list]) -> None:
    """Drop nodes whose id is in ``removed``; put ``inserted[id(node)]`` right before ``node``."""
    nodes = []
    for node in graph.node:
        nodes.extend(inserted.get(id(node), []))
        if id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def replace_nodes(graph: "onnx.GraphProto", nodes: list, constants: list = ()) -> None:
    """Give ``graph`` the node list ``nodes`` (topologically ordered) and the new ``constants``, and drop the
    initializers no node reads any more (what a rewrite replaced)."""
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    used = {name for node in graph.node for name in node.input} | {i.name for i in graph.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def fuse_gelu(model: "onnx.ModelProto") -> int:
    """Replace every complete ``x * 0.5 * (1 + erf(x / sqrt 2))`` chain (any operand order) by ``Gelu(x)``.

    Returns the number of chains fused. A chain is fused only when its intermediate values feed nothing else.
    """
    from onnx import helper

    graph = model.graph
    alive = _live_nodes(graph)
    scalars = scalar_values(graph)
    consumers = _consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}

    def other_operand(node, name):
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None

    def only_consumer(name):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    removed, inserted, fused = set(), {}, 0
    for erf in [n for n in alive if n.op_type == "Erf"]:
        scale = producers.get(erf.input[0])
        if scale is None or len(scale.input) != 2 or scale.input[1] not in scalars:
            continue
        divisor = {"Div": scalars[scale.input[1]], "Mul": 1.0 / (scalars[scale.input[1]] or np.inf)}.get(scale.op_type)
        if divisor is None or abs(divisor - _SQRT2) > 1e-5:
            continue
        x = scale.input[0]
        add = only_consumer(erf.output[0])
        if add is None or add.op_type != "Add" or scalars.get(other_operand(add, erf.output[0])) != 1.0:
            continue
        chain, current, seen_half, seen_x = [scale, erf, add], add.output[0], False, False
        while not (seen_half and seen_x):
            mul = only_consumer(current)
            if mul is None or mul.op_type != "Mul":
                break
            operand = other_operand(mul, current)
            if operand == x and not seen_x:
                seen_x = True
            elif operand in scalars and abs(scalars[operand] - 0.5) < 1e-7 and not seen_half:
                seen_half = True
            else:
                break
            chain.append(mul)
            current = mul.output[0]
        if not (seen_half and seen_x) or only_consumer(scale.output[0]) is not erf:
            continue
        last = chain[-1]
        inserted[id(last)] = [helper.make_node("Gelu", [x], [last.output[0]], name=f"{last.name}/gelu",
                                               domain=MS_DOMAIN)]
        removed.update(id(node) for node in chain)
        fused += 1
    if fused:
        _replace_nodes(graph, removed, inserted)
        use_ms_domain(model)
    return fused


def _is_swap(node) -> bool:
    return node.op_type == "Transpose" and list(attribute(node, "perm", [])) == [0, 2, 1]


def cancel_transposes(model: "onnx.ModelProto") -> int:
    """Drop ``Transpose(0,2,1)`` pairs around scalar-operand elementwise regions; returns the pairs' count."""
    graph = model.graph
    scalars = set(scalar_values(graph))
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    cancelled = 0
    alive = _live_nodes(graph)
    for first in alive:
        if not _is_swap(first) or id(first) in removed:
            continue
        region, ends, frontier, seen, closed = [], [], [first.output[0]], set(), True
        while frontier and closed:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            if value in graph_outputs or not consumers.get(value):
                closed = False
                break
            for user in consumers[value]:
                if _is_swap(user) and id(user) not in removed:
                    if user not in ends:
                        ends.append(user)
                elif user.op_type in _ELEMENTWISE and len(user.output) == 1:
                    if user not in region:
                        region.append(user)
                        frontier.append(user.output[0])
                else:
                    closed = False
                    break
        inside = {first.output[0]} | {node.output[0] for node in region}
        if (not closed or not ends or any(end.output[0] in graph_outputs for end in ends)
                or any(name not in inside and name not in scalars for node in region for name in node.input)):
            continue
        source = first.input[0]
        for node in region:
            node.input[:] = [source if name == first.output[0] else name for name in node.input]
        for end in ends:
            target = source if end.input[0] == first.output[0] else end.input[0]
            for user in consumers.get(end.output[0], []):
                user.input[:] = [target if name == end.output[0] else name for name in user.input]
            removed.add(id(end))
        removed.add(id(first))
        cancelled += 1
        consumers = _consumers(graph, removed)
    if removed:
        _replace_nodes(graph, removed, {})
    return cancelled


def clear_value_info(model: "onnx.ModelProto") -> None:
    """Forget intermediate shape annotations (onnxruntime infers them at load)."""
    del model.graph.value_info[:]
