"""int8 versions of an exported fp32 graph (onnxruntime.quantization); metadata is carried over.

Three modes, because int8 pays on CPUs but the CNN front end's activations are loud-and-quiet within one clip:
``int8`` (dynamic MatMuls), ``int8-conv`` (also the CNN's convs, one activation range per frame, ``export.conv_int8``)
and ``int8-static`` (static QDQ, calibrated; fast but inaccurate on the backbones tested). Which nodes stay fp32 is
decided from the graph's structure (``static_plan``). Measurements and the recipes that failed: docs/quantization.md.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vocalprobe.export.graph_rewrites import attribute
from vocalprobe.export.onnx_io import get_metadata, load_model, save_model, set_metadata
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import INT8_WEIGHTS, PRIOR_INPUTS, QUANTIZATION, WAVEFORM

if TYPE_CHECKING:
    import onnx

__all__ = ["QuantizationError", "quantize_dynamic_matmul", "quantize_int8_conv", "quantize_static_qdq", "TrainClipReader", "StaticRecipe",
           "StaticPlan", "static_plan", "DEFAULT_STATIC_RECIPE", "STATE_INPUTS"]

#: The graph's accumulator inputs; everything they feed is the head (``static_plan``).
STATE_INPUTS = PRIOR_INPUTS
_CALIBRATIONS = ("MinMax", "Percentile", "Entropy")
_MODES = ("static", "dynamic", "fp32")
_ACTIVATIONS = ("uint8", "uint16", "int16")


class QuantizationError(VocalprobeError):
    """onnxruntime's quantizer could not process the graph, or a recipe is invalid."""


@dataclass(frozen=True)
class StaticRecipe:
    """How ``quantize_static_qdq`` quantizes a graph.

    ``conv`` / ``matmul``: "static" (QDQ, calibrated activations), "dynamic" (MatMul only: int8 weights, activations
    quantized at run time) or "fp32". ``fp32_input_conv`` / ``fp32_positional_conv`` / ``fp32_head``: keep those nodes
    in fp32 (module docs). ``calibration``: MinMax, Percentile (``percentile``) or Entropy. ``per_channel``: per
    output-channel weight scales. ``reduce_range``: 7-bit weights (on by default: CPUs without VNNI add
    uint8 x int8 products in saturating int16, which 8-bit weights overflow; ``export.int8_weights``).
    ``activation_symmetric``: symmetric activation ranges. ``matmul_const_b_only``: statically quantize only
    MatMuls with a constant (weight) operand, not attention's activation x activation products.
    ``conv_output_quantized``: False leaves Conv outputs in fp32 (one rounding less per layer, but onnxruntime then
    cannot fuse the Conv into QLinearConv). ``cnn_layers``: which of the CNN's conv layers are static (0 = the input
    conv, then 1, 2, ... in graph order; the positional conv is not one of them); the others stay fp32. None = all
    (the input conv still subject to ``fp32_input_conv``). ``activations``: "uint8", or "uint16" / "int16" for
    16-bit activations with int8 weights (A16W8; onnxruntime's CPU provider has no 16-bit Conv kernel, so those
    Convs run as fp32 between Q/DQ pairs: accuracy experiments only).
    """

    conv: str = "static"
    matmul: str = "dynamic"
    fp32_input_conv: bool = True
    fp32_positional_conv: bool = False
    fp32_head: bool = True
    calibration: str = "MinMax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = True
    activation_symmetric: bool = False
    matmul_const_b_only: bool = False
    conv_output_quantized: bool = True
    cnn_layers: tuple[int, ...] | None = None
    activations: str = "uint8"

    def __post_init__(self):
        if self.cnn_layers is not None:
            layers = tuple(self.cnn_layers)
            if any(not isinstance(i, int) or i < 0 for i in layers) or len(set(layers)) != len(layers):
                raise QuantizationError(f"recipe cnn_layers must be distinct indices >= 0, got {self.cnn_layers!r}")
            if 0 in layers and self.fp32_input_conv:
                raise QuantizationError("recipe cnn_layers includes 0 (the input conv) but fp32_input_conv is set")
            object.__setattr__(self, "cnn_layers", tuple(sorted(layers)))
        if self.activations not in _ACTIVATIONS:
            raise QuantizationError(f"recipe activations must be one of {', '.join(_ACTIVATIONS)}, "
                                    f"got {self.activations!r}")
        if self.conv not in ("static", "fp32"):
            raise QuantizationError(f"recipe conv must be 'static' or 'fp32', got {self.conv!r}")
        if self.matmul not in _MODES:
            raise QuantizationError(f"recipe matmul must be one of {', '.join(_MODES)}, got {self.matmul!r}")
        if self.calibration not in _CALIBRATIONS:
            raise QuantizationError(f"recipe calibration must be one of {', '.join(_CALIBRATIONS)}, "
                                    f"got {self.calibration!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise QuantizationError(f"recipe percentile must be in (50, 100], got {self.percentile}")

    def with_(self, **changes) -> "StaticRecipe":
        return replace(self, **changes)

    def describe(self) -> str:
        kept = [name for name, keep in (("input conv", self.fp32_input_conv),
                                        ("positional conv", self.fp32_positional_conv), ("head", self.fp32_head)) if keep]
        calib = self.calibration + (f" {self.percentile:g}" if self.calibration == "Percentile" else "")
        return (f"Conv {self.conv}, MatMul {self.matmul}; fp32: {', '.join(kept) or 'nothing'}; {calib} calibration"
                + (", per-channel weights" if self.per_channel else "") + (", reduce_range" if self.reduce_range else "")
                + (", symmetric activations" if self.activation_symmetric else "")
                + (", MatMul with constant B only" if self.matmul_const_b_only else "")
                + ("" if self.conv_output_quantized else ", fp32 Conv outputs")
                + ("" if self.cnn_layers is None else
                   f", static CNN convs {','.join(map(str, self.cnn_layers)) or 'none'} only")
                + ("" if self.activations == "uint8" else f", {self.activations} activations"))


#: ``--quantize int8-static``: Conv static QDQ except the input conv, MatMul dynamic, head fp32 (measurements and the
#: choice: the README's "int8" section and benchmarks/bench_export.py).
DEFAULT_STATIC_RECIPE = StaticRecipe()


@dataclass
class StaticPlan:
    """Node names a recipe keeps in fp32, by reason (``static_plan``)."""

    input_convs: list[str] = field(default_factory=list)
    cnn_convs: list[str] = field(default_factory=list)  # the CNN's convs in graph order, the input conv first
    unselected_convs: list[str] = field(default_factory=list)  # CNN convs outside ``recipe.cnn_layers``
    positional_convs: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # the union the recipe asks for, in graph order


def _downstream(graph, sources: set[str]) -> list:
    """Nodes fed (directly or not) by the values ``sources``, in graph (topological) order."""
    reached, nodes = set(sources), []
    for node in graph.node:
        if any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    return nodes


def static_plan(model: "onnx.ModelProto", recipe: StaticRecipe = DEFAULT_STATIC_RECIPE) -> StaticPlan:
    """Which nodes of ``model`` ``recipe`` keeps in fp32, found from the graph's structure, not from node names;
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
    plan = StaticPlan()
    plan.input_convs = [n.name for n in convs if id(n) not in fed_by_conv]
    plan.positional_convs = [n.name for n in convs if attribute(n, "group", 1) > 1]
    plan.cnn_convs = [n.name for n in convs if n.name not in plan.positional_convs]
    if recipe.cnn_layers is not None:
        if recipe.cnn_layers and recipe.cnn_layers[-1] >= len(plan.cnn_convs):
            raise QuantizationError(f"recipe cnn_layers {recipe.cnn_layers} but the graph's CNN has "
                                    f"{len(plan.cnn_convs)} conv layers (0..{len(plan.cnn_convs) - 1})")
        plan.unselected_convs = [name for i, name in enumerate(plan.cnn_convs)
                                 if i not in recipe.cnn_layers and name not in plan.input_convs]
    inputs = {i.name for i in graph.input}
    plan.head = [n.name for n in _downstream(graph, {name for name in STATE_INPUTS if name in inputs})]
    chosen = set()
    for keep, names in ((recipe.fp32_input_conv, plan.input_convs),
                        (recipe.fp32_positional_conv, plan.positional_convs), (recipe.fp32_head, plan.head),
                        (True, plan.unselected_convs)):
        if keep:
            chosen.update(names)
    if "" in chosen:
        raise QuantizationError("the graph has unnamed nodes; static_plan needs node names")
    plan.excluded = [n.name for n in graph.node if n.name in chosen]
    return plan


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
    """onnxruntime warns on the root logger when a graph has Q/DQ nodes already; the hybrid recipe does that on
    purpose (static Conv, then dynamic MatMul)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()


def _dynamic_matmul(source: Path, out: Path, *, nodes_to_exclude=()) -> None:
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
                         per_channel=True, nodes_to_exclude=excluded)
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
    if convs_as_block_dft(model, static_plan(model).positional_convs):
        clear_value_info(model)
        onnx.save(model, str(path))


def quantize_dynamic_matmul(source: str | Path, target: str | Path) -> Path:
    """Dynamic int8 (weights int8, activations quantized at run time) of every MatMul; Conv stays fp32 (the
    positional conv as exact block DFT products)."""
    source, target = Path(source), Path(target)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp, _quiet_onnxruntime():
        pre = _preprocess(source, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        _dynamic_matmul(pre, out)
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
        _dynamic_matmul(pre, dynamic, nodes_to_exclude=static_plan(onnx.load(str(pre))).head)
        model = onnx.load(str(dynamic))
        plan = static_plan(model)
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


class TrainClipReader:
    """Calibration data: up to ``max_clips`` Train clips of a manifest, one ``{WAVEFORM: [1, samples]}`` each.

    Clips longer than ``max_samples`` are cut to their first ``max_samples`` (the graph sees at most one chunk at a
    time). Unreadable clips are skipped and counted in ``skipped``.
    """

    def __init__(self, manifest, *, max_clips: int = 32, max_samples: int | None = None, split: str = "train"):
        if max_clips < 1:
            raise QuantizationError(f"calibration needs at least 1 clip, got {max_clips}")
        self.manifest = manifest
        rows = manifest.split(split).rows
        step = max(1, len(rows) // max_clips)  # spread over the split (manifests are often sorted by class)
        self.rows = rows[::step][:max_clips]
        self.max_samples = max_samples
        self.skipped = 0
        self._iter = None

    def _clips(self):
        from vocalprobe.runtime.core.clips import load_row

        for row in self.rows:
            try:
                samples = load_row(self.manifest, row)
            except VocalprobeError:
                self.skipped += 1
                continue
            if self.max_samples is not None:
                samples = samples[: self.max_samples]
            yield {WAVEFORM: np.ascontiguousarray(samples[None], dtype=np.float32)}

    def get_next(self):
        if self._iter is None:
            self._iter = self._clips()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


class _EqualLengthWindows:
    """The calibration inputs cut into windows of the shortest one's length (at most ``per_clip`` per clip):
    onnxruntime's histogram calibrators (Percentile, Entropy) stack all activations and need equal shapes."""

    def __init__(self, reader, per_clip: int = 4):
        waves = []
        while (item := reader.get_next()) is not None:
            waves.append(np.asarray(item[WAVEFORM], dtype=np.float32))
        if not waves:
            raise QuantizationError("no calibration clip could be read")
        n = min(w.shape[-1] for w in waves)
        self.items = [{WAVEFORM: np.ascontiguousarray(w[..., i * n:(i + 1) * n])}
                      for w in waves for i in range(min(per_clip, w.shape[-1] // n))]
        self._iter = iter(self.items)

    def get_next(self):
        return next(self._iter, None)


def quantize_static_qdq(source: str | Path, target: str | Path, reader,
                        recipe: StaticRecipe = DEFAULT_STATIC_RECIPE) -> Path:
    """Static int8 QDQ of ``source`` following ``recipe`` (int8 weights, uint8 activations), calibrated on
    ``reader`` (an object with ``get_next() -> {WAVEFORM: [1, samples]} | None``)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    source, target = Path(source), Path(target)
    if recipe.calibration != "MinMax":
        reader = _EqualLengthWindows(reader)

    class _Reader(CalibrationDataReader):  # onnxruntime checks the base class
        def get_next(self):
            return reader.get_next()

    activation_type = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16,
                       "int16": QuantType.QInt16}[recipe.activations]
    op_types = (["Conv"] if recipe.conv == "static" else []) + (["MatMul"] if recipe.matmul == "static" else [])
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp, _quiet_onnxruntime():
        pre = _preprocess(source, Path(tmp))
        plan = static_plan(onnx.load(str(pre)), recipe)
        out = Path(tmp) / "int8-static.onnx"
        if op_types:
            extra = {"CalibTensorRangeSymmetric": False, "ActivationSymmetric": recipe.activation_symmetric,
                     "MatMulConstBOnly": recipe.matmul_const_b_only}
            if not recipe.conv_output_quantized:
                extra["OpTypesToExcludeOutputQuantization"] = ["Conv"]
            if recipe.calibration == "Percentile":
                extra["CalibPercentile"] = recipe.percentile
            try:
                quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=op_types, activation_type=activation_type,
                                weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                                reduce_range=recipe.reduce_range, nodes_to_exclude=plan.excluded,
                                calibrate_method=getattr(CalibrationMethod, recipe.calibration), extra_options=extra)
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise QuantizationError(f"{source}: static quantization failed ({exc})") from exc
        else:
            onnx.save(onnx.load(str(pre)), str(out))
        if recipe.matmul == "dynamic":
            dynamic = Path(tmp) / "int8-mixed.onnx"
            _dynamic_matmul(out, dynamic, nodes_to_exclude=static_plan(onnx.load(str(out)), recipe).excluded)
            out = dynamic
        _carry_metadata(source, out, "int8-static", {"quantization_recipe": recipe.describe(),
                                                      INT8_WEIGHTS: "7-bit" if recipe.reduce_range else "8-bit"})
        out.replace(target)
    return target
