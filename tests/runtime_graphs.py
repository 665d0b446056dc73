"""Small real ONNX graphs that follow the vocalprobe export contract, for runtime tests and benchmarks.

``waveform [batch, samples]`` -> peak normalisation -> a bank of band-pass FIR filters (one per class, Conv) ->
log band energies -> MatMul -> ``probabilities`` (Softmax) and ``embedding`` (log energies and mean magnitudes).
A tone in a class's band gives that class a probability near 1; noise gives about 1 / n_classes. Built with
``onnx.helper`` (onnx is a training/test dependency, never a runtime one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_CLASSES = ("low", "mid", "high")
DEFAULT_FREQS = (600.0, 1800.0, 4200.0)
TAPS = 256
STRIDE = 128


def contract_metadata(classes: Sequence[str], sample_duration: float = 1.0, **overrides) -> dict[str, str]:
    meta = {
        "classes": json.dumps(list(classes)),
        "sample_rate": "16000",
        "sample_duration": str(sample_duration),
        "class_outputs_key": "probabilities",
        "embedding_outputs_key": "embedding",
        "backbone": "test/band-energy",
        "layer": "0",
        "dataset": "synthetic",
        "preprocessing": json.dumps({"peak_normalize": True}),
        "val_uar": "0.9",
        "test_uar": "0.9",
        "vocalprobe_version": "0.1.0",
        "manifest_sha256": "0" * 64,
    }
    meta.update({k: str(v) for k, v in overrides.items()})
    return meta


def build_band_graph(path: str | Path, *, classes: Sequence[str] = DEFAULT_CLASSES,
                     freqs: Sequence[float] = DEFAULT_FREQS, sample_rate: int = 16_000, scale: float = 3.0,
                     sample_duration: float = 1.0, metadata: dict[str, str] | None = None,
                     drop_keys: Sequence[str] = ()) -> Path:
    """Write the graph to ``path``; ``metadata`` overrides contract keys, ``drop_keys`` removes some."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = np.arange(TAPS)
    window = np.hanning(TAPS)
    filters = np.stack([window * np.cos(2 * np.pi * f * n / sample_rate) for f in freqs]).astype(np.float32)
    filters /= np.linalg.norm(filters, axis=1, keepdims=True)
    k = len(freqs)
    inits = [
        numpy_helper.from_array(filters[:, None, :], "filters"),
        numpy_helper.from_array(np.array([1e-9], dtype=np.float32), "eps"),
        numpy_helper.from_array(np.array([1e-6], dtype=np.float32), "floor"),
        numpy_helper.from_array((scale * np.eye(k, len(classes))).astype(np.float32), "weights"),
        numpy_helper.from_array(np.zeros(len(classes), dtype=np.float32), "bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Abs", ["waveform"], ["abs"]),
        helper.make_node("ReduceMax", ["abs", "axis1"], ["peak"], keepdims=1),
        helper.make_node("Max", ["peak", "eps"], ["peak_safe"]),
        helper.make_node("Div", ["waveform", "peak_safe"], ["normalised"]),
        helper.make_node("Unsqueeze", ["normalised", "axis1"], ["x3"]),
        helper.make_node("Conv", ["x3", "filters"], ["bands"], strides=[STRIDE]),
        helper.make_node("Mul", ["bands", "bands"], ["power"]),
        helper.make_node("ReduceMean", ["power", "axis2"], ["energy"], keepdims=0),
        helper.make_node("Add", ["energy", "floor"], ["energy_safe"]),
        helper.make_node("Log", ["energy_safe"], ["log_energy"]),
        helper.make_node("Abs", ["bands"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude", "axis2"], ["mean_magnitude"], keepdims=0),
        helper.make_node("Concat", ["log_energy", "mean_magnitude"], ["embedding"], axis=1),
        helper.make_node("MatMul", ["log_energy", "weights"], ["logits0"]),
        helper.make_node("Add", ["logits0", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "vocalprobe_test_band_energy",
        [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(classes)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 2 * k])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = contract_metadata(classes, sample_duration)
    meta.update(metadata or {})
    for key in drop_keys:
        meta.pop(key, None)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tone_track(events: Sequence[tuple[float, float, float]], seconds: float, sample_rate: int, *,
               noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """Noise with tones: ``events`` are (start_s, end_s, frequency_hz)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    x = noise * rng.standard_normal(n)
    t = np.arange(n) / sample_rate
    for start, end, freq in events:
        a, b = int(start * sample_rate), min(n, int(end * sample_rate))
        x[a:b] += 0.5 * np.sin(2 * np.pi * freq * t[a:b])
    return x.astype(np.float32)
