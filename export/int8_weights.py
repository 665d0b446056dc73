"""int8 weight codes whose products are exact on every CPU, at (nearly) full 8-bit precision.

x86 CPUs without VNNI (AVX2, AVX-512 before VNNI) multiply onnxruntime's uint8 activations by int8 weights with
``vpmaddubsw``: it adds the products of two neighbouring K entries, ``a[2j] * w[2j] + a[2j+1] * w[2j+1]``, into a
SATURATING int16. With activation codes up to 255 that sum overflows once ``|w[2j] + w[2j+1]| > 128``, which
ordinary 8-bit codes (up to 127 each) reach easily; the result then differs from a VNNI CPU's or an ARM board's
(docs/quantization.md has the measurement). onnxruntime's own fix, ``reduce_range``, halves every code (7 bits).
Here the scale is chosen so that every aligned pair's sum stays within 127 before rounding (128 after), besides
each code within 127: only the columns whose largest same-sign neighbours would overflow lose precision, and the
codes are the same on every CPU, so a graph answers alike wherever it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

__all__ = ["pair_safe_codes", "requantize_dynamic_matmuls", "PAIR_LIMIT"]

#: the largest ``|code[2j] + code[2j+1]|`` for which 255 times it fits an int16 (255 * 128 = 32,640)
PAIR_LIMIT = 128


def pair_safe_codes(weights: np.ndarray, *, per_column: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``weights [K, N]`` (K: the product's reduction axis) -> ``(int8 codes [K, N], scale)``, symmetric; scale
    ``[N]`` per column, or a scalar array with ``per_column=False``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be [K, N], got shape {w.shape}")
    paired = w if w.shape[0] % 2 == 0 else np.vstack([w, np.zeros((1, w.shape[1]))])
    reach = np.maximum(np.abs(w).max(axis=0), np.abs(paired[0::2] + paired[1::2]).max(axis=0))  # [N]
    if not per_column:
        reach = np.asarray(reach.max())
    scale = (np.maximum(reach, 1e-30) / 127.0).astype(np.float32)
    codes = np.clip(np.round(w / scale.astype(np.float64)), -127, 127).astype(np.int8)
    return codes, scale


def requantize_dynamic_matmuls(model: "onnx.ModelProto", fp32_weights: dict[str, np.ndarray]) -> int:
    """Replace the weight codes and scales onnxruntime's ``quantize_dynamic`` wrote (symmetric, per tensor or per
    column) with pair-safe ones of the same granularity, computed from the fp32 weights (``fp32_weights``:
    initializer name -> array, of the graph before quantization). The quantizer writes
    ``MatMulInteger(x_q, <w>_quantized, x_zp, <w>_zero_point)`` with the scale in ``<w>_scale`` (onnxruntime fuses
    the pattern into ``DynamicQuantizeMatMul`` when it loads the graph); a Gemm's weight it first transposes into
    ``<w>_Transposed``. Returns how many weights were re-coded; one that cannot be traced back is left as the
    quantizer wrote it."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    recoded: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("MatMulInteger", "DynamicQuantizeMatMul") or len(node.input) < 2:
            continue
        codes_name = node.input[1]
        base = codes_name.removesuffix("_quantized")
        scale_name, zero_name = f"{base}_scale", f"{base}_zero_point"
        source = fp32_weights.get(base)
        if source is None and base.endswith("_Transposed") and base.removesuffix("_Transposed") in fp32_weights:
            source = fp32_weights[base.removesuffix("_Transposed")].T  # a Gemm's (transB) weight, as written
        if codes_name in recoded or source is None or codes_name == base or not {codes_name, scale_name} <= set(
                initializers):
            continue
        old_codes = numpy_helper.to_array(initializers[codes_name])
        old_scale = numpy_helper.to_array(initializers[scale_name])
        if old_codes.dtype != np.int8 or old_codes.shape != source.shape or old_scale.size not in (1, source.shape[1]):
            continue
        if zero_name in initializers and np.any(numpy_helper.to_array(initializers[zero_name]) != 0):
            continue  # asymmetric weights: not what quantize_dynamic writes for QInt8
        codes, scale = pair_safe_codes(source, per_column=old_scale.size > 1)
        initializers[codes_name].CopyFrom(numpy_helper.from_array(codes, codes_name))
        initializers[scale_name].CopyFrom(numpy_helper.from_array(scale.reshape(old_scale.shape), scale_name))
        recoded.add(codes_name)
    return len(recoded)
