"""A probe head trained on archived vectors (``vocalprobe probe fit``), applied with numpy: no torch, no backbone.

The head folder holds ``probe.safetensors`` (+ ``probe.json``: the training side's probe checkpoint), ``head.json``
(classes, per-class thresholds, held-out scores, the archive's graph) and ``thresholds.csv`` (``class,threshold``).
safetensors is a JSON header and raw little-endian arrays, read here with numpy alone (no pickle, no extra package).
The forward is ``training.probe.MLPProbe``'s: z-score, [Linear, LayerNorm, ReLU] blocks, a final Linear, softmax.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from vocalprobe.runtime.core.errors import VocalprobeError

HEAD_JSON, WEIGHTS, THRESHOLDS_CSV = "head.json", "probe.safetensors", "thresholds.csv"
HEAD_FORMAT = 1
#: torch.nn.LayerNorm's default epsilon, as MLPProbe uses it.
LAYER_NORM_EPS = 1e-5
#: The class a window with only negative annotations trains (it is never reported).
BACKGROUND = "background"
_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4"}


class HeadError(VocalprobeError):
    """A head folder that is missing, unreadable or does not fit the archive."""


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the header metadata of a ``.safetensors`` file."""
    path = Path(path)
    try:
        data = path.read_bytes()
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
    except (OSError, struct.error, ValueError) as exc:
        raise HeadError(f"{path}: not a readable safetensors file ({exc})") from None
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + size:]
    tensors = {}
    for name, spec in header.items():
        if spec["dtype"] not in _DTYPES:
            raise HeadError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
        start, end = spec["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype=_DTYPES[spec["dtype"]]).reshape(spec["shape"]).copy()
    return tensors, meta


@dataclass(frozen=True)
class Head:
    classes: tuple[str, ...]
    thresholds: dict[str, float]
    mean: np.ndarray  # (n_features,)
    std: np.ndarray
    layers: tuple[tuple[str, tuple[np.ndarray, ...]], ...]  # ("linear", (W, b)) | ("layernorm", (g, b)) | ("relu", ())
    info: dict

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def reported(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c != BACKGROUND)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``(n, n_features)`` vectors -> ``(n, classes)`` probabilities (float32, rows sum to 1)."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise HeadError(f"the head expects vectors of {self.n_features} features, got shape {x.shape}")
        h = (x - self.mean) / self.std
        for kind, params in self.layers:
            if kind == "linear":
                h = h @ params[0].T + params[1]
            elif kind == "layernorm":
                mu = h.mean(axis=1, keepdims=True)
                var = ((h - mu) ** 2).mean(axis=1, keepdims=True)
                h = (h - mu) / np.sqrt(var + LAYER_NORM_EPS) * params[0] + params[1]
            else:
                h = np.maximum(h, 0.0)
        h = h - h.max(axis=1, keepdims=True)
        e = np.exp(h)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def head_layers(tensors: dict[str, np.ndarray], hidden: int) -> tuple:
    """MLPProbe's state dict as an ordered list of layers."""
    layers = []
    for i in range(hidden):
        layers += [("linear", (tensors[f"blocks.{3 * i}.weight"], tensors[f"blocks.{3 * i}.bias"])),
                   ("layernorm", (tensors[f"blocks.{3 * i + 1}.weight"], tensors[f"blocks.{3 * i + 1}.bias"])),
                   ("relu", ())]
    layers.append(("linear", (tensors["head.weight"], tensors["head.bias"])))
    return tuple((k, tuple(np.asarray(p, np.float32) for p in ps)) for k, ps in layers)


def load_head(folder: str | Path) -> Head:
    folder = Path(folder)
    if not (folder / HEAD_JSON).is_file() or not (folder / WEIGHTS).is_file():
        raise HeadError(f"{folder}: not a probe head folder ({HEAD_JSON} and {WEIGHTS} expected; write one with "
                        "`vocalprobe probe fit`)")
    info = json.loads((folder / HEAD_JSON).read_text(encoding="utf-8"))
    if int(info.get("format", 0)) > HEAD_FORMAT:
        raise HeadError(f"{folder}: head format {info['format']} is newer than this vocalprobe; upgrade it")
    tensors, _ = read_safetensors(folder / WEIGHTS)
    try:
        layers = head_layers(tensors, len(info["hidden_sizes"]))
        mean, std = tensors["mean"].astype(np.float32), tensors["std"].astype(np.float32)
    except KeyError as exc:
        raise HeadError(f"{folder / WEIGHTS}: lacks tensor {exc} of the probe in {HEAD_JSON}") from None
    return Head(tuple(info["classes"]), {k: float(v) for k, v in info["thresholds"].items()}, mean, std, layers,
                info)


def window_scores(head: Head, batches: Iterator[tuple[list, np.ndarray]]) -> Iterator[tuple[list, np.ndarray]]:
    """``(windows, probabilities)`` for every batch of ``(windows, vectors)``."""
    for rows, vecs in batches:
        yield rows, head.predict_proba(vecs)
