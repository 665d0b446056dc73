"""`vocalprobe export attach`: a graph's backbone and layer with a probe head trained on its archived vectors on top.

The new graph keeps every input and output of the graph contract: its nodes up to ``embedding`` (and the ``stats_*``
state) stay as they are, the nodes that only fed the old ``probabilities`` are dropped, and the head (z-score,
[MatMul, LayerNormalization, Relu] blocks, MatMul, Softmax) reads ``embedding``. So ``stream`` and ``validate`` run it
unchanged, its probabilities are ``probe apply``'s up to the float16 storage of the archived vectors, and the head's
classes and per-class thresholds are in the metadata (``class_thresholds``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vocalprobe.export.onnx_io import OnnxFileError, get_metadata, load_model, save_model, set_metadata
from vocalprobe.runtime.archive.head import BACKGROUND, Head, load_head
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import (ATTACHED_HEAD, CLASS_THRESHOLDS, CLASSES, TEST_UAR, VAL_UAR,
                                                    GraphMetadata)

__all__ = ["AttachError", "attach_head"]

#: LayerNormalization is an ONNX op from opset 17.
MIN_OPSET = 17
_PREFIX = "attached_head_"


class AttachError(VocalprobeError):
    """A graph and head that cannot be joined."""


def _subgraph_inputs(node) -> set[str]:
    """Names a node reads, including those its subgraphs (If/Loop bodies) read from the outer graph."""
    from onnx import AttributeProto

    names = set(node.input)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                names |= _subgraph_inputs(inner)
    return names


def _prune(graph, keep_outputs: set[str]) -> None:
    """Drop the nodes and initializers no kept output depends on (nodes are in topological order)."""
    needed = set(keep_outputs)
    kept = []
    for node in reversed(graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= _subgraph_inputs(node)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _head_nodes(head: Head, embedding: str, probabilities: str) -> tuple[list, list]:
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(head.mean, _PREFIX + "mean"), numpy_helper.from_array(head.std, _PREFIX + "std")]
    nodes = [helper.make_node("Sub", [embedding, _PREFIX + "mean"], [_PREFIX + "centred"]),
             helper.make_node("Div", [_PREFIX + "centred", _PREFIX + "std"], [_PREFIX + "h0"])]
    current = _PREFIX + "h0"
    for i, (kind, params) in enumerate(head.layers, start=1):
        out = f"{_PREFIX}h{i}"
        if kind == "linear":
            w, b = f"{_PREFIX}w{i}", f"{_PREFIX}b{i}"
            weight = np.ascontiguousarray(params[0].T)  # MatMul takes [in, out]; the probe's Linear holds [out, in]
            inits += [numpy_helper.from_array(weight, w), numpy_helper.from_array(params[1], b)]
            nodes += [helper.make_node("MatMul", [current, w], [out + "_mm"]),
                      helper.make_node("Add", [out + "_mm", b], [out])]
        elif kind == "layernorm":
            g, b = f"{_PREFIX}g{i}", f"{_PREFIX}beta{i}"
            inits += [numpy_helper.from_array(params[0], g), numpy_helper.from_array(params[1], b)]
            nodes.append(helper.make_node("LayerNormalization", [current, g, b], [out], axis=-1, epsilon=1e-5))
        else:
            nodes.append(helper.make_node("Relu", [current], [out]))
        current = out
    nodes.append(helper.make_node("Softmax", [current], [probabilities], axis=-1))
    return nodes, inits


def attach_head(graph_path: str | Path, head_dir: str | Path, out_path: str | Path) -> Path:
    from onnx import TensorProto, helper

    graph_path, out_path = Path(graph_path), Path(out_path)
    if out_path.suffix != ".onnx":
        raise AttachError(f"--out must end in .onnx, got {out_path}")
    if out_path.exists() and out_path.resolve() == graph_path.resolve():
        raise AttachError(f"--out {out_path} is the input graph; choose another --out")
    head = load_head(head_dir)
    try:
        model = load_model(graph_path)
    except OnnxFileError as exc:
        raise AttachError(str(exc)) from None
    sha = file_sha256(graph_path)
    if head.record.graph_sha256 != sha:
        raise AttachError(f"{head_dir} was trained on the vectors of another graph (sha256 "
                          f"{head.record.graph_sha256[:12]}... != {graph_path.name}'s {sha[:12]}...)")
    meta = get_metadata(model)
    info = GraphMetadata.from_map(meta, str(graph_path))
    if info.embedding_outputs_key is None:
        raise AttachError(f"{graph_path}: the graph has no embedding output to attach a head to")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise AttachError(f"{graph_path}: opset {opset}; attaching needs opset >= {MIN_OPSET} (LayerNormalization)")
    graph = model.graph
    probabilities, embedding = info.class_outputs_key, info.embedding_outputs_key
    kept = [o for o in graph.output if o.name != probabilities]
    _prune(graph, {o.name for o in kept})
    nodes, inits = _head_nodes(head, embedding, probabilities)
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    position = [o.name for o in graph.output].index(probabilities)
    outputs = list(graph.output)
    outputs[position] = helper.make_tensor_value_info(probabilities, TensorProto.FLOAT, ["batch", len(head.classes)])
    del graph.output[:]
    graph.output.extend(outputs)
    del graph.value_info[:]  # shapes of the old head; onnxruntime infers the new ones
    new_meta = {k: v for k, v in meta.items() if k not in (VAL_UAR, TEST_UAR)}  # the old probe's scores
    new_meta[CLASSES] = json.dumps(list(head.classes))
    new_meta[CLASS_THRESHOLDS] = json.dumps({c: head.thresholds[c] for c in head.classes if c != BACKGROUND})
    new_meta[ATTACHED_HEAD] = json.dumps({
        "kind": head.record.kind, "base_graph": graph_path.name, "base_graph_sha256": sha,
        "database": head.record.database, "test_uar": head.record.test_uar, "test_uar_ci95": head.record.test_uar_ci95,
        "precision_target": head.record.precision_target, "counts": head.record.counts}, sort_keys=True)
    GraphMetadata.from_map(new_meta, "the metadata to write")
    set_metadata(model, new_meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, out_path)
