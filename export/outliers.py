"""Which MatMuls of an exported graph read an activation with an outlier channel, measured on real clips.

Dynamic int8 quantizes a MatMul's activation with ONE range per call: when one channel of that activation is
hundreds of times larger than the others (trained Whisper base carries such a channel in its residual stream), the
range is set by that channel and the other channels keep only a few levels. ``outlier_matmuls`` runs the fp32 graph
on clips with every MatMul's activation input exposed, and names the MatMuls whose largest channel (max |x| over
frames) exceeds ``ratio`` times the median channel's; ``quantize_dynamic_matmul(exclude=...)`` keeps them fp32.
Figures: docs/whisper.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["MatMulRange", "matmul_ranges", "outlier_matmuls"]


@dataclass(frozen=True)
class MatMulRange:
    node: str  # the MatMul node's name
    activation: str  # the value it reads (its first input)
    ratio: float  # max over clips of (largest channel's max |x|) / (median channel's max |x|)


def _weight_matmuls(model) -> list:
    """MatMuls whose second input is a 2-D weight (the ones dynamic int8 quantizes)."""
    weights = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    return [node for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


def matmul_ranges(onnx_path: str | Path, clips: Sequence[np.ndarray]) -> list[MatMulRange]:
    """Every weight MatMul of the fp32 graph at ``onnx_path`` with its activation's channel ratio on ``clips``
    (each clip run whole: one call)."""
    import onnx
    import onnxruntime as ort

    from vocalprobe.runtime.core.graph_contract import WAVEFORM

    model = onnx.load(str(onnx_path))
    nodes = _weight_matmuls(model)
    if not nodes:
        return []
    activations = sorted({node.input[0] for node in nodes})
    outputs = {o.name for o in model.graph.output}
    for name in activations:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(activations, 0.0)
    for clip in clips:
        values = session.run(activations, {WAVEFORM: np.asarray(clip, dtype=np.float32)[None]})
        for name, value in zip(activations, values):
            channels = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            worst[name] = max(worst[name], float(channels.max() / max(float(np.median(channels)), 1e-30)))
    return [MatMulRange(node.name, node.input[0], worst[node.input[0]]) for node in nodes]


def outlier_matmuls(onnx_path: str | Path, clips: Sequence[np.ndarray], *, ratio: float = 20.0) -> list[str]:
    """Names of the MatMuls whose activation has a channel above ``ratio`` x the median channel on ``clips``."""
    return [r.node for r in matmul_ranges(onnx_path, clips) if r.ratio > ratio]
