"""A probe head trained on archived vectors (``vocalprobe probe fit``), applied with numpy: no torch, no backbone.

The head folder holds ``probe.safetensors`` (+ ``probe.json``: the training side's probe checkpoint), ``head.json``
(a ``HeadRecord``: classes, per-class thresholds, held-out scores, the archive's graph) and ``thresholds.csv``
(``class,threshold``).
safetensors is a JSON header and raw little-endian arrays, read here with numpy alone (no pickle, no extra package).
The forward is ``training.probe.MLPProbe``'s: z-score, [Linear, LayerNorm, ReLU] blocks, a final Linear, softmax.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.records import from_record, to_record

HEAD_JSON, THRESHOLDS_CSV = "head.json", "thresholds.csv"
#: The training side's probe checkpoint in the head folder: PROBE_STEM + ``.safetensors`` (the weights) and ``.json``.
PROBE_STEM = "probe"
WEIGHTS = PROBE_STEM + ".safetensors"
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
class HeadRecord:
    """``head.json``: what ``probe fit`` made the head from and how it scored; written by ``to_json`` (sorted keys,
    so equal records are equal files) and read back, checked, by ``from_json``."""

    kind: str  # "mlp" | "linear"
    classes: tuple[str, ...]  # the probe's outputs, in order (``BACKGROUND`` last when trained)
    hidden_sizes: tuple[int, ...]
    thresholds: dict[str, float]  # per class: the lowest score reaching precision_target on the held-out windows
    precision_target: float
    precision_reached: dict[str, bool]
    graph_sha256: str  # the graph whose embeddings the head was trained on
    embedding_dim: int
    seed: int
    counts: dict[str, int]  # labelled windows per class
    split: dict[str, int]  # windows in train, val and test
    test_uar: float
    test_uar_ci95: tuple[float, float]
    val_uar: float
    database: str  # the archive folder it was trained from
    format: int = HEAD_FORMAT

    def to_json(self) -> str:
        return json.dumps(to_record(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str | Path = HEAD_JSON) -> "HeadRecord":
        """The record in ``text`` (``source`` names it in errors); a damaged or foreign file is refused."""
        again = "write the head again with `vocalprobe probe fit`"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HeadError(f"{source}: not valid JSON ({exc}); {again}") from None
        if not isinstance(data, dict):
            raise HeadError(f"{source}: not a head record (a JSON object expected); {again}")
        if isinstance(data.get("format"), int) and data["format"] > HEAD_FORMAT:
            raise HeadError(f"{source}: head format {data['format']} is newer than this vocalprobe; upgrade it")
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [f.name for f in fields if f.name not in data]
        wrong = [f"{f.name} ({json.dumps(data[f.name])[:40]})" for f in dataclasses.fields(cls)
                 if f.name in data and not _fits(data[f.name], hints[f.name])]
        if missing or wrong:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"wrong type: {', '.join(wrong)}"] if wrong else [])
            raise HeadError(f"{source}: a damaged head record ({'; '.join(problems)}); {again}")
        record = from_record(cls, data, ignore_unknown=True)
        unscored = [c for c in record.classes if c not in record.thresholds]
        if len(record.classes) < 2 or unscored:
            raise HeadError(f"{source}: a damaged head record (classes {list(record.classes)}, no threshold for "
                            f"{', '.join(unscored) or '-'}); {again}")
        return record


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the shape a ``HeadRecord`` field's annotation asks for."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(value) == len(items) and all(map(_fits, value, items))
    if origin is dict:
        return isinstance(value, dict) and all(_fits(v, args[1]) for v in value.values())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass(frozen=True)
class Head:
    record: HeadRecord
    mean: np.ndarray  # (n_features,)
    std: np.ndarray
    layers: tuple[tuple[str, tuple[np.ndarray, ...]], ...]  # ("linear", (W, b)) | ("layernorm", (g, b)) | ("relu", ())

    @property
    def classes(self) -> tuple[str, ...]:
        return self.record.classes

    @property
    def thresholds(self) -> dict[str, float]:
        return self.record.thresholds

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
    record = HeadRecord.from_json((folder / HEAD_JSON).read_text(encoding="utf-8"), folder / HEAD_JSON)
    tensors, _ = read_safetensors(folder / WEIGHTS)
    try:
        layers = head_layers(tensors, len(record.hidden_sizes))
        mean, std = tensors["mean"].astype(np.float32), tensors["std"].astype(np.float32)
    except KeyError as exc:
        raise HeadError(f"{folder / WEIGHTS}: lacks tensor {exc} of the probe in {HEAD_JSON}") from None
    if mean.shape != (record.embedding_dim,) or layers[-1][1][0].shape[0] != len(record.classes):
        raise HeadError(f"{folder}: {WEIGHTS} does not hold the probe {HEAD_JSON} describes ({mean.shape[0]} "
                        f"features and {layers[-1][1][0].shape[0]} classes, not {record.embedding_dim} and "
                        f"{len(record.classes)}); write the head again with `vocalprobe probe fit`")
    return Head(record, mean, std, layers)


def window_scores(head: Head, batches: Iterator[tuple[list, np.ndarray]]) -> Iterator[tuple[list, np.ndarray]]:
    """``(windows, probabilities)`` for every batch of ``(windows, vectors)``."""
    for rows, vecs in batches:
        yield rows, head.predict_proba(vecs)
