"""int8 versions of an exported fp32 graph (onnxruntime.quantization); metadata is carried over.

The modes (``export.quant_modes``), because int8 pays on CPUs but the CNN front end's activations are loud-and-quiet
within one clip: ``int8`` (dynamic MatMuls) and ``int8-conv`` (also the CNN's convs, one activation range per frame,
``export.conv_int8``). Which nodes stay fp32 is decided from the graph's structure (``graph_parts``). Measurements
and the recipes that failed (static QDQ, now ``benchmarks/static_qdq.py``): docs/quantization.md.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vocalprobe.export.graph_rewrites import attribute
from vocalprobe.export.onnx_io import get_metadata, load_model, save_model, set_metadata
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import INT8_WEIGHTS, PRIOR_INPUTS, QUANTIZATION

if TYPE_CHECKING:
    import onnx

__all__ = ["QuantizationError", "quantize_dynamic_matmul", "quantize_int8_conv", "GraphParts", "graph_parts",
           "STATE_INPUTS"]

#: The graph's accumulator inputs; everything they feed is the head (``graph_parts``).
STATE_INPUTS = PRIOR_INPUTS


class QuantizationError(VocalprobeError):
    """onnxruntime's quantizer could not process the graph."""


@dataclass
class GraphParts:
    """The nodes of an exported graph the int8 modes treat apart, by role (``graph_parts``)."""

    input_convs: list[str] = field(default_factory=list)
    cnn_convs: list[str] = field(default_factory=list)  # the CNN's convs in graph order, the input conv first
    positional_convs: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)


def _downstream(graph, sources: set[str]) -> list:
    """Nodes fed (directly or not) by the values ``sources``, in graph (topological) order."""
    reached, nodes = set(sources), []
    for node in graph.node:
        if any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    return nodes


def graph_parts(model: "onnx.ModelProto") -> GraphParts:
    """The nodes of ``model`` the int8 modes keep in fp32, found from the graph's structure, not from node names;
    names must be unique and set.

    * the *input conv* (no other Conv feeds it): 8 bits of the peak-normalised waveform would leave quiet calls a
      few levels, and the GroupNorm after it amplifies the error;
    * the *positional conv* (``group > 1``);
    * the *head*: every node the state inputs feed (statistics merge, z-scoring, MLP, softmax). onnxruntime's dynamic
      quantizer would otherwise rewrite the MLP's Gemm as MatMul + Add and quantize it.
    """
    graph = model.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    conv_outputs = {o for n in convs for o in n.output}
    fed_by_conv = {id(n) for n in _downstream(graph, conv_outputs)}
    parts = GraphParts()
    parts.input_convs = [n.name for n in convs if id(n) not in fed_by_conv]
    parts.positional_convs = [n.name for n in convs if attribute(n, "group", 1) > 1]
    parts.cnn_convs = [n.name for n in convs if n.name not in parts.positional_convs]
    inputs = {i.name for i in graph.input}
    parts.head = [n.name for n in _downstream(graph, {name for name in STATE_INPUTS if name in inputs})]
    if "" in {*parts.input_convs, *parts.positional_convs, *parts.head}:
        raise QuantizationError("the graph has unnamed nodes; graph_parts needs node names")
    return parts


def _carry_metadata(source: Path, target: Path, kind: str, extra: dict[str, str] | None = None) -> None:
    meta = get_metadata(load_model(source, weights=False))
    model = load_model(target)
    set_metadata(model, {**meta, QUANTIZATION: kind, INT8_WEIGHTS: "pair-safe", **(extra or {})})
    save_model(model, target)


@contextlib.contextmanager
def _quiet_onnxruntime():
    """The quantizer's own sessions warn that our optional state inputs are initializers (they are overridable
    on purpose, see training.deployable); keep those lines out of the user's terminal, restore the default after."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def _preprocess(source: Path, work: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(source), str(out), skip_symbolic_shape=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise QuantizationError(f"{source}: onnxruntime's quantization pre-processing failed ({exc})") from exc
    return out


class _DropAlreadyQuantizedWarning(logging.Filter):
    """onnxruntime warns on the root logger when a graph has Q/DQ nodes already; the static research recipes
    (``benchmarks/static_qdq.py``: static Conv, then these dynamic MatMuls) do that on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()


def _dynamic_matmul(source: Path, out: Path, *, nodes_to_exclude=(), per_channel: bool = True) -> None:
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vocalprobe.export.int8_weights import requantize_dynamic_matmuls

    # the dynamic quantizer first rewrites every Gemm as MatMul + Add (named ``<gemm>_MatMul``): exclude those too
    excluded = [name for node in nodes_to_exclude for name in (node, f"{node}_MatMul")]
    root, quiet = logging.getLogger(), _DropAlreadyQuantizedWarning()
    root.addFilter(quiet)
    try:
        # per-channel: one weight scale per output column (onnxruntime fuses it into DynamicQuantizeMatMul too)
        quantize_dynamic(str(source), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=per_channel, nodes_to_exclude=excluded)
    finally:
        root.removeFilter(quiet)
    # codes whose uint8 x int8 products are exact on every CPU (export.int8_weights says why)
    fp32 = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(source)).graph.initializer
            if len(init.dims) == 2}
    model = onnx.load(str(out))
    if requantize_dynamic_matmuls(model, fp32):
        onnx.save(model, str(out))


def _positional_conv_as_dft(path: Path) -> None:
    """The exact block-DFT form of the positional conv (``export.spectral_conv``), after the quantizer (its
    products stay fp32)."""
    import onnx

    from vocalprobe.export.graph_rewrites import clear_value_info
    from vocalprobe.export.spectral_conv import convs_as_block_dft

    model = onnx.load(str(path))
    if convs_as_block_dft(model, graph_parts(model).positional_convs):
        clear_value_info(model)
        onnx.save(model, str(path))


def quantize_dynamic_matmul(source: str | Path, target: str | Path, *, per_channel: bool = True,
                            exclude: tuple[str, ...] = ()) -> Path:
    """Dynamic int8 (weights int8, activations quantized at run time) of every MatMul; Conv stays fp32 (the
    positional conv as exact block DFT products). ``per_channel``: one weight scale per output column (the mode's
    choice) or one per tensor; ``exclude``: MatMul names kept fp32 (e.g. ``export.outliers.outlier_matmuls``)."""
    source, target = Path(source), Path(target)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp, _quiet_onnxruntime():
        pre = _preprocess(source, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        _dynamic_matmul(pre, out, nodes_to_exclude=tuple(exclude), per_channel=per_channel)
        _positional_conv_as_dft(out)
        _carry_metadata(source, out, "int8")
        out.replace(target)
    return target


def quantize_int8_conv(source: str | Path, target: str | Path) -> Path:
    """``--quantize int8-conv``: ``int8`` plus the CNN's convolutions (all but the input conv) as int8 products
    with one activation range per frame (``export.conv_int8``); GELU chains fused, the input conv's GroupNorm folded
    into it (``export.norm_fold``) and the positional conv done as block DFT products (``export.spectral_conv``),
    both exact rewrites. No calibration data needed."""
    import onnx

    from vocalprobe.export.conv_int8 import convs_as_int8_matmuls
    from vocalprobe.export.graph_rewrites import cancel_transposes, clear_value_info, fuse_gelu
    from vocalprobe.export.norm_fold import fold_input_conv_norm
    from vocalprobe.export.spectral_conv import convs_as_block_dft

    source, target = Path(source), Path(target)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp, _quiet_onnxruntime():
        pre = _preprocess(source, Path(tmp))
        dynamic = Path(tmp) / "int8.onnx"
        _dynamic_matmul(pre, dynamic, nodes_to_exclude=graph_parts(onnx.load(str(pre))).head)
        model = onnx.load(str(dynamic))
        plan = graph_parts(model)
        fuse_gelu(model)
        rewrite = convs_as_int8_matmuls(model, [name for name in plan.cnn_convs if name not in plan.input_convs])
        if not rewrite.rewritten:
            raise QuantizationError(f"{source}: no convolution of the feature encoder could be rewritten "
                                    f"({'; '.join(f'{k}: {v}' for k, v in rewrite.skipped.items()) or 'none found'})")
        folded = fold_input_conv_norm(model)
        spectral = convs_as_block_dft(model, plan.positional_convs)
        cancel_transposes(model)
        clear_value_info(model)
        out = Path(tmp) / "int8-conv.onnx"
        onnx.save(model, str(out))
        recipe = (f"{len(rewrite.rewritten)} CNN convs int8 with per-frame activation ranges"
                  + (f" ({len(rewrite.skipped)} kept fp32)" if rewrite.skipped else "")
                  + "; MatMuls dynamic int8; fp32: input conv" + (" (GroupNorm folded)" if folded else "")
                  + ", positional conv" + (" (as block DFT products)" if spectral else "") + ", head")
        _carry_metadata(source, out, "int8-conv", {"quantization_recipe": recipe})
        out.replace(target)
    return target
