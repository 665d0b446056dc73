"""Static int8 QDQ recipes: the research behind the removed ``--quantize int8-static`` (bench_export.py's
``int8-static`` and ``static-*`` variants).

Static QDQ with one activation range per tensor was the fastest int8 at small layers, but it changed 17-25% of the
demo's decisions (the parity guard refused two of three graphs), and no calibration method, range, symmetry, partial
recipe or 16-bit activations fixed that at int8 speed; ``int8-conv`` (one range per frame) did. So the product keeps
``int8`` and ``int8-conv`` (``export.quant_modes``) and the recipes live here, where the benchmark re-measures them.
Figures: docs/quantization.md.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vocalprobe.export import quantize as q
from vocalprobe.runtime.core.graph_contract import INT8_WEIGHTS, WAVEFORM

if TYPE_CHECKING:
    import onnx

__all__ = ["StaticRecipe", "DEFAULT_STATIC_RECIPE", "StaticPlan", "static_plan", "quantize_static_qdq"]

_CALIBRATIONS = ("MinMax", "Percentile", "Entropy")
_MODES = ("static", "dynamic", "fp32")
_ACTIVATIONS = ("uint8", "uint16", "int16")


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
                raise q.QuantizationError(f"recipe cnn_layers must be distinct indices >= 0, got {self.cnn_layers!r}")
            if 0 in layers and self.fp32_input_conv:
                raise q.QuantizationError("recipe cnn_layers includes 0 (the input conv) but fp32_input_conv is set")
            object.__setattr__(self, "cnn_layers", tuple(sorted(layers)))
        if self.activations not in _ACTIVATIONS:
            raise q.QuantizationError(f"recipe activations must be one of {', '.join(_ACTIVATIONS)}, "
                                    f"got {self.activations!r}")
        if self.conv not in ("static", "fp32"):
            raise q.QuantizationError(f"recipe conv must be 'static' or 'fp32', got {self.conv!r}")
        if self.matmul not in _MODES:
            raise q.QuantizationError(f"recipe matmul must be one of {', '.join(_MODES)}, got {self.matmul!r}")
        if self.calibration not in _CALIBRATIONS:
            raise q.QuantizationError(f"recipe calibration must be one of {', '.join(_CALIBRATIONS)}, "
                                    f"got {self.calibration!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise q.QuantizationError(f"recipe percentile must be in (50, 100], got {self.percentile}")

    def with_(self, **changes) -> "StaticRecipe":
        return replace(self, **changes)

    def describe(self) -> str:
        parts = (("input conv", self.fp32_input_conv), ("positional conv", self.fp32_positional_conv),
                 ("head", self.fp32_head))
        kept = [name for name, keep in parts if keep]
        calib = self.calibration + (f" {self.percentile:g}" if self.calibration == "Percentile" else "")
        return (f"Conv {self.conv}, MatMul {self.matmul}; fp32: {', '.join(kept) or 'nothing'}; {calib} calibration"
                + (", per-channel weights" if self.per_channel else "")
                + (", reduce_range" if self.reduce_range else "")
                + (", symmetric activations" if self.activation_symmetric else "")
                + (", MatMul with constant B only" if self.matmul_const_b_only else "")
                + ("" if self.conv_output_quantized else ", fp32 Conv outputs")
                + ("" if self.cnn_layers is None else
                   f", static CNN convs {','.join(map(str, self.cnn_layers)) or 'none'} only")
                + ("" if self.activations == "uint8" else f", {self.activations} activations"))


#: What was ``--quantize int8-static``: Conv static QDQ except the input conv, MatMul dynamic, head fp32.
DEFAULT_STATIC_RECIPE = StaticRecipe()


@dataclass
class StaticPlan:
    """Node names a recipe keeps in fp32, by reason (``static_plan``): ``export.quantize.graph_parts``, and the
    CNN convs outside ``recipe.cnn_layers``."""

    parts: q.GraphParts
    unselected_convs: list[str] = field(default_factory=list)  # CNN convs outside ``recipe.cnn_layers``
    excluded: list[str] = field(default_factory=list)  # the union the recipe asks for, in graph order

    @property
    def cnn_convs(self) -> list[str]:
        return self.parts.cnn_convs


def static_plan(model: "onnx.ModelProto", recipe: StaticRecipe = DEFAULT_STATIC_RECIPE) -> StaticPlan:
    """Which nodes of ``model`` ``recipe`` keeps in fp32 (``export.quantize.graph_parts`` says why each part)."""
    parts = q.graph_parts(model)
    plan = StaticPlan(parts)
    if recipe.cnn_layers is not None:
        if recipe.cnn_layers and recipe.cnn_layers[-1] >= len(parts.cnn_convs):
            raise q.QuantizationError(f"recipe cnn_layers {recipe.cnn_layers} but the graph's CNN has "
                                      f"{len(parts.cnn_convs)} conv layers (0..{len(parts.cnn_convs) - 1})")
        plan.unselected_convs = [name for i, name in enumerate(parts.cnn_convs)
                                 if i not in recipe.cnn_layers and name not in parts.input_convs]
    chosen = set()
    for keep, names in ((recipe.fp32_input_conv, parts.input_convs),
                        (recipe.fp32_positional_conv, parts.positional_convs), (recipe.fp32_head, parts.head),
                        (True, plan.unselected_convs)):
        if keep:
            chosen.update(names)
    plan.excluded = [n.name for n in model.graph.node if n.name in chosen]
    return plan


class _EqualLengthWindows:
    """The calibration inputs cut into windows of the shortest one's length (at most ``per_clip`` per clip):
    onnxruntime's histogram calibrators (Percentile, Entropy) stack all activations and need equal shapes."""

    def __init__(self, reader, per_clip: int = 4):
        waves = []
        while (item := reader.get_next()) is not None:
            waves.append(np.asarray(item[WAVEFORM], dtype=np.float32))
        if not waves:
            raise q.QuantizationError("no calibration clip could be read")
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
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as tmp, q._quiet_onnxruntime():
        pre = q._preprocess(source, Path(tmp))
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
                raise q.QuantizationError(f"{source}: static quantization failed ({exc})") from exc
        else:
            onnx.save(onnx.load(str(pre)), str(out))
        if recipe.matmul == "dynamic":
            dynamic = Path(tmp) / "int8-mixed.onnx"
            q._dynamic_matmul(out, dynamic, nodes_to_exclude=static_plan(onnx.load(str(out)), recipe).excluded)
            out = dynamic
        q._carry_metadata(source, out, "int8-static", {"quantization_recipe": recipe.describe(),
                                                      INT8_WEIGHTS: "7-bit" if recipe.reduce_range else "8-bit"})
        out.replace(target)
    return target
