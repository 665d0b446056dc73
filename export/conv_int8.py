"""The CNN's convolutions as int8 matrix products with one activation range per frame (``--quantize int8-conv``).

Why per frame: between its GELUs the wav2vec2/HuBERT/WavLM feature encoder has no normalisation, so its
activations follow the loudness of the audio: quiet frames are 10-100x smaller than the calls in the same clip.
One int8 scale per tensor (static QDQ, or onnxruntime's dynamic ConvInteger) rounds the quiet frames to a few
levels; on the embedded demo that changed 13-15% of the clips' decisions. Giving every frame its own range keeps
quiet frames as precise as loud ones: in the demo's measurements the activation error fell tenfold, and the decisions
changed no more than with int8 MatMuls alone (README "int8").

How, for a Conv1d with kernel k and stride s (group 1, no padding, no dilation) on x ``[B, C, T]``:

* x is read channels-last ``[B, T, C]`` and cut into groups of s consecutive frames (T' = (T - k) // s + 1 output
  frames, m = ceil(k / s) groups per output frame, G = T' + m - 1);
* every group is quantized to uint8 with its own range ``[min(group, 0), max(group, 0)]``, taken from its frames'
  ranges; the uint8 codes (not the fp32 frames) are then padded or trimmed to G*s frames and reshaped, for free,
  to ``[B, G, s*C]``;
* output frame t reads groups t .. t+m-1: tap block i (taps i*s .. min(k, (i+1)*s) - 1) is the int8 product of
  group t+i (its first taps*C values) with that block's int8 weights (one scale per output channel and block,
  chosen by ``export.int8_weights`` so that the product is exact on every CPU,
  ``MatMulIntegerToFloat``), times the group's scale; the zero points' share is taken off by one rank-m product;
* the output goes back to ``[B, O, T']`` with the conv's output name; ``graph_rewrites.cancel_transposes`` then
  removes the transposes that meet across the GELU between two rewritten convs.

Apart from the rounding of weights and activations everything is exact. Per-frame ranges also keep the convolutions'
share of a clip's result independent of the batch it is in (the transformer's dynamic int8 MatMuls still share one
range per batch, as in ``int8``). The graph needs onnxruntime (``com.microsoft`` ops), which is what vocalprobe's
runtime is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from vocalprobe.export.graph_rewrites import MS_DOMAIN, attribute, replace_nodes, use_ms_domain
from vocalprobe.export.int8_weights import pair_safe_codes

if TYPE_CHECKING:
    import onnx

__all__ = ["ConvRewrite", "convs_as_int8_matmuls", "conv_int8_support"]


@dataclass
class ConvRewrite:
    """What ``convs_as_int8_matmuls`` did: rewritten convs, helper MatMuls (the zero-point corrections) that a
    quantizer run afterwards must leave fp32, and the convs left alone with the reason."""

    rewritten: list[str] = field(default_factory=list)
    fp32_matmuls: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def conv_int8_support(node: "onnx.NodeProto", initializers: Mapping[str, "onnx.TensorProto"]) -> str | None:
    """Why ``node`` cannot be rewritten (None: it can)."""
    if node.op_type != "Conv":
        return "not a Conv"
    weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return "its weight is not a constant initializer"
    if len(weight.dims) != 3:
        return f"not a 1-D convolution (weight rank {len(weight.dims)})"
    if attribute(node, "group", 1) != 1:
        return "grouped convolution"
    if any(d != 1 for d in attribute(node, "dilations", [1])):
        return "dilated convolution"
    if any(p != 0 for p in attribute(node, "pads", [0, 0])) or attribute(node, "auto_pad", b"NOTSET") not in (
            b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return "padded convolution"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
        return "its bias is not a constant initializer"
    return None


class _Builder:
    """Appends nodes and constants with names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.constants, self._count = prefix, [], [], 0

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}/{what}_{self._count}"

    def const(self, array, what: str = "const") -> str:
        from onnx import numpy_helper

        name = self._name(what)
        self.constants.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), "ints")

    def op(self, op_type: str, inputs, output: str | None = None, *, domain: str | None = None, **attrs) -> str:
        from onnx import helper

        name = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output or name], name=name, domain=domain,
                                           **attrs))
        return self.nodes[-1].output[0]


def _rewrite(node: "onnx.NodeProto", weight: np.ndarray, bias: str | None) -> tuple[_Builder, str]:
    from onnx import TensorProto

    out_channels, in_channels, kernel = weight.shape
    stride = int(attribute(node, "strides", [1])[0])
    blocks = math.ceil(kernel / stride)
    b = _Builder(f"{node.name}/int8conv")
    frames = b.op("Transpose", [node.input[0]], perm=[0, 2, 1])  # [B, T, C]
    shape = b.op("Shape", [frames])
    length = b.op("Shape", [frames], start=1, end=2)
    out_frames = b.op("Add", [b.op("Div", [b.op("Sub", [length, b.ints([kernel])]), b.ints([stride])]), b.ints([1])])
    groups = b.op("Add", [out_frames, b.ints([blocks - 1])])
    pad = b.op("Sub", [b.op("Mul", [groups, b.ints([stride])]), length])  # negative: trims the unused tail

    # A group's range from its frames' ranges (padding with 0 changes nothing: the range always holds 0), so the
    # fp32 frames are read twice and quantized once, and only their uint8 codes are padded into groups.
    last = b.ints([-1])
    zero = b.const(np.array(0.0, np.float32))
    frame_pads = b.op("Concat", [b.ints([0, 0, 0]), pad], axis=0)

    def group_range(reduce: str, clamp: str) -> str:
        per_frame = b.op(reduce, [frames, last], keepdims=0)  # [B, T]
        grouped = b.op("Reshape", [b.op("Pad", [per_frame, frame_pads]), b.ints([0, -1, stride])])  # [B, G, s]
        return b.op(clamp, [b.op(reduce, [grouped, last], keepdims=0), zero])  # [B, G]

    low, high = group_range("ReduceMin", "Min"), group_range("ReduceMax", "Max")
    scale = b.op("Max", [b.op("Div", [b.op("Sub", [high, low]), b.const(np.array(255.0, np.float32))]),
                         b.const(np.array(1e-30, np.float32))])
    zero_point = b.op("Round", [b.op("Div", [b.op("Neg", [low]), scale])])  # in [0, 255]
    offset = b.op("Unsqueeze", [b.op("Mul", [zero_point, scale]), last])  # [B, G, 1]: code 0 stands for -offset
    # every frame takes its group's scale and zero point (frames past the last group: the last group's; unread)
    frame_group = b.op("Min", [b.op("Div", [b.op("Range", [b.const(np.array(0, np.int64)),
                                                            b.op("Squeeze", [length]),
                                                            b.const(np.array(1, np.int64))]), b.ints([stride])]),
                               b.op("Sub", [groups, b.ints([1])])])  # [T]
    flat = b.ints([-1])
    frame_scale = b.op("Reshape", [b.op("Gather", [scale, frame_group], axis=1), flat])
    frame_zero = b.op("Reshape", [b.op("Cast", [b.op("Gather", [zero_point, frame_group], axis=1)],
                                       to=TensorProto.UINT8), flat])
    codes = b.op("QuantizeLinear", [b.op("Reshape", [frames, b.ints([-1, in_channels])]), frame_scale, frame_zero],
                 axis=0)
    code_pads = b.op("Concat", [b.ints([0, 0, 0, 0]), pad, b.ints([0])], axis=0)
    codes = b.op("Reshape", [b.op("Pad", [b.op("Reshape", [codes, shape]), code_pads]),
                             b.ints([0, -1, stride * in_channels])])  # [B, G, sC] uint8
    scale = b.op("Unsqueeze", [scale, last])  # [B, G, 1]

    taps_first = weight.transpose(2, 1, 0)  # [k, C, O]
    one = b.const(np.array(1.0, np.float32))
    terms, offsets, column_sums = [], [], []
    for i in range(blocks):
        taps = min(kernel, (i + 1) * stride) - i * stride
        start = b.ints([i])
        end = b.op("Add", [start, out_frames])
        rows = codes
        if blocks > 1 or taps < stride:
            rows = b.op("Slice", [codes, b.op("Concat", [start, b.ints([0])], axis=0),
                                  b.op("Concat", [end, b.ints([taps * in_channels])], axis=0), b.ints([1, 2])])
        w_int8, w_scale = pair_safe_codes(taps_first[i * stride:i * stride + taps].reshape(taps * in_channels,
                                                                                           out_channels))
        product = b.op("MatMulIntegerToFloat", [rows, b.const(w_int8, "weight"), one, b.const(w_scale, "weight_scale")],
                       domain=MS_DOMAIN)
        row_scale = scale if blocks == 1 else b.op("Slice", [scale, start, end, b.ints([1])])
        terms.append(b.op("Mul", [product, row_scale]))
        offsets.append(offset if blocks == 1 else b.op("Slice", [offset, start, end, b.ints([1])]))
        column_sums.append((w_int8.astype(np.float32) * w_scale).sum(axis=0))
    y = terms[0]
    for term in terms[1:]:
        y = b.op("Add", [y, term])
    stacked = offsets[0] if blocks == 1 else b.op("Concat", offsets, axis=-1)  # [B, T', m]
    correction = b.op("MatMul", [stacked, b.const(np.stack(column_sums).astype(np.float32), "column_sums")])
    y = b.op("Sub", [y, correction])
    if bias:
        y = b.op("Add", [y, bias])
    b.op("Transpose", [y], node.output[0], perm=[0, 2, 1])
    return b, correction


def convs_as_int8_matmuls(model: "onnx.ModelProto", names: Iterable[str]) -> ConvRewrite:
    """Rewrite the Conv nodes named in ``names`` (in place); see the module docs. Unsupported ones are kept."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    wanted, result, nodes, constants = set(names), ConvRewrite(), [], []
    for node in graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        reason = conv_int8_support(node, initializers)
        if reason:
            result.skipped[node.name] = reason
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        builder, correction = _rewrite(node, weight, bias)
        nodes.extend(builder.nodes)
        constants.extend(builder.constants)
        result.fp32_matmuls.append(correction)  # a builder node's output carries the node's name
        result.rewritten.append(node.name)
    if not result.rewritten:
        return result
    replace_nodes(graph, nodes, constants)
    use_ms_domain(model)
    return result
