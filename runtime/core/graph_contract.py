"""The vocalprobe graph contract: the names and metadata of every exported graph, and THE parser of that metadata.

Export writes graphs to this contract and the runtime reads them by it, so both import it from here. It is torch-free
and onnx-free: a recorder checks a graph with nothing but this module and onnxruntime.

A graph is a resumable accumulator (``vocalprobe.training.deployable``): input ``waveform`` float32
``[..., samples]``; optional inputs ``peak`` and ``prior_*`` (inputs with a default initializer); outputs
``probabilities``, ``embedding`` and the accumulated statistics ``stats_*``. Everything else the runtime needs is in
the metadata map (``ModelProto.metadata_props``, all values strings), described by ``METADATA_KEYS``.

The waveform's layout (``WAVEFORM_LAYOUT``): OpenSoundscape's ``ONNXModel`` always feeds ``[batch, 1, samples]``,
perch-hoplite's ``TaxonomyModelOnnx`` and vocalprobe feed ``[batch, samples]``, and one ONNX input has one rank. So
the graph declares ``waveform`` with no shape (any rank) and its first node flattens every leading axis into the
batch (``Flatten(axis=-1)``): ``[b, 1, s]`` and ``[b, s]`` both give ``b`` rows, ``[s]`` one. onnx's checker wants a
shape on every graph input, so export checks a copy with ``[batch, samples]`` filled in. Graphs written before this
declare ``[batch, samples]`` (layout ``LAYOUT_BATCH_SAMPLES``, the reading of an absent key) and still run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from vocalprobe.runtime.core.errors import VocalprobeError

__all__ = ["GraphContractError", "GraphMetadata", "MetadataKey", "METADATA_KEYS", "REQUIRED_KEYS", "WAVEFORM",
           "INT8_WEIGHTS", "INT8_SAFE_WEIGHTS", "int8_weights",
           "PEAK", "PRIOR_COUNT", "PRIOR_MEAN", "PRIOR_M2", "OPTIONAL_INPUTS", "PRIOR_INPUTS", "INPUT_NAMES",
           "PROBABILITIES", "EMBEDDING", "STATS_COUNT", "STATS_MEAN", "STATS_M2", "STATS_OUTPUTS", "OUTPUT_NAMES",
           "INPUT_AXES", "STATE_BATCH_AXIS", "prior_input_for", "optional_input_defaults", "MAX_WINDOW_SECONDS",
           "MAX_SAMPLE_RATE", "MAX_GRAPH_SAMPLES", "CLASSES", "SAMPLE_RATE", "SAMPLE_DURATION", "CLASS_OUTPUTS_KEY",
           "EMBEDDING_OUTPUTS_KEY", "MAX_CHUNK_SAMPLES", "VAL_UAR", "TEST_UAR", "QUANTIZATION", "MEMBERS", "VERSION",
           "CLASS_THRESHOLDS", "ATTACHED_HEAD", "WAVEFORM_LAYOUT", "LAYOUT_ANY_LEADING", "LAYOUT_BATCH_SAMPLES",
           "WAVEFORM_LAYOUTS", "PERCH_HOPLITE_CONFIG", "perch_hoplite_config", "NEGATIVE_CLASSES",
           "negative_classes", "class_thresholds"]


class GraphContractError(VocalprobeError):
    """A graph, or its metadata, that does not follow the vocalprobe graph contract."""


# ----------------------------------------------------------------------------------------------------------------
# names

WAVEFORM = "waveform"  # float32 [..., samples] (see WAVEFORM_LAYOUT), raw mono audio at the graph's sample rate
PEAK = "peak"  # [batch or 1, 1]: amplitude to divide by; 0 = the input's own peak (a whole clip)
PRIOR_COUNT = "prior_count"  # [batch or 1, 1]: frames already accumulated
PRIOR_MEAN = "prior_mean"  # [batch or 1, D]
PRIOR_M2 = "prior_m2"  # [batch or 1, D]: sum of squared deviations from prior_mean
#: Inputs with defaults (``optional_input_defaults``), in forward order after ``waveform``.
OPTIONAL_INPUTS = (PEAK, PRIOR_COUNT, PRIOR_MEAN, PRIOR_M2)
#: The accumulator's inputs: everything they feed is the probe's head.
PRIOR_INPUTS = (PRIOR_COUNT, PRIOR_MEAN, PRIOR_M2)
#: Graph inputs, in forward order. Only ``waveform`` is required.
INPUT_NAMES = (WAVEFORM, *OPTIONAL_INPUTS)

PROBABILITIES = "probabilities"  # [batch, classes], rows sum to 1
EMBEDDING = "embedding"  # [batch, 2D]: mean and population std of every frame accumulated so far
STATS_COUNT = "stats_count"
STATS_MEAN = "stats_mean"
STATS_M2 = "stats_m2"
STATS_OUTPUTS = (STATS_COUNT, STATS_MEAN, STATS_M2)
#: Graph outputs, in forward order.
OUTPUT_NAMES = (PROBABILITIES, EMBEDDING, *STATS_OUTPUTS)

_STATS_PREFIX, _PRIOR_PREFIX = "stats_", "prior_"
#: The axis the optional inputs share: 1 (broadcast over the batch) or the waveform's batch.
STATE_BATCH_AXIS = "state_batch"
#: Named dynamic axes of the graph's inputs.
INPUT_AXES = {WAVEFORM: {0: "batch", 1: "samples"}, **{name: {0: STATE_BATCH_AXIS} for name in OPTIONAL_INPUTS}}


def prior_input_for(output_name: str) -> str | None:
    """The feedback rule: output ``<prefix>stats_<x>`` goes back into input ``<prefix>prior_<x>`` (None: no state).
    The prefix lets a fused graph (members ``m0_``, ``m1_``...) carry each member's statistics the same way."""
    prefix, sep, rest = output_name.rpartition(_STATS_PREFIX)
    return f"{prefix}{_PRIOR_PREFIX}{rest}" if sep else None


def optional_input_defaults(dim: int) -> dict[str, np.ndarray]:
    """Default values of the optional inputs (batch dimension 1, broadcast over any batch): own peak, nothing seen."""
    return {PEAK: np.zeros((1, 1), np.float32), PRIOR_COUNT: np.zeros((1, 1), np.float32),
            PRIOR_MEAN: np.zeros((1, dim), np.float32), PRIOR_M2: np.zeros((1, dim), np.float32)}


# ----------------------------------------------------------------------------------------------------------------
# metadata keys

#: Bounds that refuse absurd metadata at load instead of failing later with a MemoryError. One hour is far beyond any
#: call or clip a probe is trained on, and one window of it still fits in memory (16 kHz: 230 MB of float32).
MAX_WINDOW_SECONDS = 3600.0
#: 1 MHz: above every recorder (ultrasonic bat detectors sample at 384-500 kHz).
MAX_SAMPLE_RATE = 1_000_000
#: The exported graph's ``samples`` axis is an int32 dimension.
MAX_GRAPH_SAMPLES = 2**31 - 2


@dataclass(frozen=True)
class MetadataKey:
    """One key of the metadata map: how its string value is read, whether the runtime needs it, and what a reader
    assumes when it is absent (``default``; None: unknown)."""

    name: str
    kind: str
    required: bool = False
    default: str | None = None
    meaning: str = ""


CLASSES = "classes"
SAMPLE_RATE = "sample_rate"
SAMPLE_DURATION = "sample_duration"
CLASS_OUTPUTS_KEY = "class_outputs_key"
EMBEDDING_OUTPUTS_KEY = "embedding_outputs_key"
MAX_CHUNK_SAMPLES = "max_chunk_samples"
VAL_UAR, TEST_UAR = "val_uar", "test_uar"
QUANTIZATION = "quantization"
INT8_WEIGHTS = "int8_weights"
#: int8 weight codes whose products are exact on every CPU (export.int8_weights; ``reduce_range``)
INT8_SAFE_WEIGHTS = ("pair-safe", "7-bit")
MEMBERS = "members"
VERSION = "vocalprobe_version"
WAVEFORM_LAYOUT = "waveform_layout"
#: Every leading axis of ``waveform`` is a batch axis (the graph flattens them): what export writes.
LAYOUT_ANY_LEADING = "...,samples"
#: ``waveform`` is exactly ``[batch, samples]``: graphs written before the layout key existed.
LAYOUT_BATCH_SAMPLES = "batch,samples"
WAVEFORM_LAYOUTS = (LAYOUT_ANY_LEADING, LAYOUT_BATCH_SAMPLES)
PERCH_HOPLITE_CONFIG = "perch_hoplite_config"
CLASS_THRESHOLDS = "class_thresholds"
ATTACHED_HEAD = "attached_head"

METADATA_KEYS: tuple[MetadataKey, ...] = (
    # what the runtime reads (OpenSoundscape's ONNXModel reads the first four too)
    MetadataKey(CLASSES, "JSON list of unique names", True, meaning="output column order"),
    MetadataKey(SAMPLE_RATE, f"int, 1..{MAX_SAMPLE_RATE}", True, meaning="Hz of the waveform input"),
    MetadataKey(SAMPLE_DURATION, f"float seconds, (0, {MAX_WINDOW_SECONDS:g}]", True,
                meaning="the default analysis window (export: the median Train clip)"),
    MetadataKey(CLASS_OUTPUTS_KEY, "output name", True, meaning=f"export writes {PROBABILITIES!r}"),
    MetadataKey(EMBEDDING_OUTPUTS_KEY, "output name", meaning=f"export writes {EMBEDDING!r}; absent: no embedding"),
    MetadataKey(MAX_CHUNK_SAMPLES, f"int, 1..{MAX_GRAPH_SAMPLES}",
                meaning="longer clips are fed chunk by chunk with carried statistics; absent: whole clips"),
    MetadataKey(WAVEFORM_LAYOUT, " | ".join(WAVEFORM_LAYOUTS), default=LAYOUT_BATCH_SAMPLES,
                meaning="the axes of the waveform input; absent: an older [batch, samples] graph"),
    MetadataKey(VAL_UAR, "fraction 0..1", meaning="the study's PyTorch score on Val"),
    MetadataKey(TEST_UAR, "fraction 0..1", meaning="the study's PyTorch score on Test"),
    # descriptive: written by export, shown to users, never needed to run the graph
    MetadataKey(QUANTIZATION, "none, or a mode of export/quant_modes.py (fusion: comma-joined)", default="none"),
    MetadataKey("quantization_recipe", "text"),
    MetadataKey(INT8_WEIGHTS, "pair-safe | 7-bit | 8-bit", meaning="the int8 weight codes: pair-safe and 7-bit are "
                "exact on x86 CPUs without VNNI, 8-bit is not (runtime.core.cpu_features); absent on a quantized "
                "graph: 8-bit (written before the key)"),
    MetadataKey("backbone", "label (fusion: 'fusion')"),
    MetadataKey("backbone_name", "model id or path"),
    MetadataKey("backbone_id", "text"),
    MetadataKey("backbone_revision", "text"),
    MetadataKey("backbone_fingerprint", "sha256"),
    MetadataKey("family", "transformers model_type"),
    MetadataKey("layer", "int"),
    MetadataKey("layer_choice", "best | manual | frontier:M (the cheapest layer within M Val UAR points of the best)"),
    MetadataKey("num_layers_total", "int"),
    MetadataKey("seed", "int"),
    MetadataKey("dataset", "text"),
    MetadataKey("preprocessing", "JSON object"),
    MetadataKey("truncation", "text"),
    MetadataKey("manifest_sha256", "sha256"),
    MetadataKey("graph_inputs", "JSON list", meaning="INPUT_NAMES"),
    MetadataKey("graph_outputs", "JSON list", meaning="OUTPUT_NAMES"),
    MetadataKey(MEMBERS, "JSON list of {file, backbone, layer, dataset, quantization, weight}", meaning="fusion only"),
    MetadataKey("fusion_of", "text", meaning="fusion only"),
    MetadataKey(CLASS_THRESHOLDS, "JSON object class -> probability", meaning="per-class thresholds chosen for a "
                "target precision (`vocalprobe export attach`)"),
    MetadataKey(ATTACHED_HEAD, "JSON object", meaning="a probe trained on archived vectors replaced the graph's head: "
                "its kind, held-out scores and the graph it was attached to"),
    MetadataKey(PERCH_HOPLITE_CONFIG, "JSON object", meaning="the fields of perch-hoplite's TaxonomyModelOnnx that "
                "run this graph (add model_path); see perch_hoplite_config"),
    MetadataKey(VERSION, "text", meaning="the vocalprobe that wrote the graph"),
)
#: Class names that mean "no call here" (compared lower-case): a detector needs one, or every window above the
#: threshold becomes a detection; ``stream`` leaves them out of its tables unless asked (``--report-background``).
NEGATIVE_CLASSES = ("background", "noise", "negative", "other", "none")


def negative_classes(classes: "tuple[str, ...] | list[str]") -> tuple[str, ...]:
    """The classes of ``classes`` that ``NEGATIVE_CLASSES`` names (a model's background/negative class)."""
    return tuple(c for c in classes if c.strip().lower() in NEGATIVE_CLASSES)


def class_thresholds(metadata: Mapping[str, str], classes: "tuple[str, ...] | list[str]") -> dict[str, float]:
    """The graph's own per-class thresholds (``class_thresholds``, written by `export attach`), restricted to its
    classes and to 0..1; {} when it has none or they cannot be read (a graph without them runs as before)."""
    try:
        table = json.loads(metadata.get(CLASS_THRESHOLDS) or "{}")
    except json.JSONDecodeError:
        return {}
    if not isinstance(table, dict):
        return {}
    out = {}
    for name, value in table.items():
        if name in classes and isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0:
            out[name] = float(value)
    return out


#: Keys the runtime cannot work without.
REQUIRED_KEYS = tuple(k.name for k in METADATA_KEYS if k.required)

_FIX = "Export it with `vocalprobe export`, which writes this metadata"


# ----------------------------------------------------------------------------------------------------------------
# the parser


def _value_problems(*, classes: tuple[str, ...] | None, sample_rate: int | None, sample_duration: float | None,
                    class_outputs_key: str | None, embedding_outputs_key: str | None,
                    max_chunk_samples: int | None, val_uar: float | None, test_uar: float | None,
                    waveform_layout: str | None) -> list[str]:
    """What is wrong with already-typed values (None: absent or not readable, checked elsewhere)."""
    problems = []
    if waveform_layout is not None and waveform_layout not in WAVEFORM_LAYOUTS:
        problems.append(f"'{WAVEFORM_LAYOUT}' must be one of {', '.join(map(repr, WAVEFORM_LAYOUTS))}, got "
                        f"{waveform_layout!r}")
    if classes is not None:
        if not classes or not all(isinstance(c, str) and c for c in classes):
            problems.append(f"'{CLASSES}' must be a non-empty list of class names, got {list(classes)}")
        elif len(set(classes)) != len(classes):
            problems.append(f"'{CLASSES}' must be unique names, got duplicates in {list(classes)}")
    if sample_rate is not None and not 1 <= sample_rate <= MAX_SAMPLE_RATE:
        problems.append(f"'{SAMPLE_RATE}' must be 1..{MAX_SAMPLE_RATE} Hz, got {sample_rate}")
    if sample_duration is not None:
        if not (math.isfinite(sample_duration) and 0 < sample_duration <= MAX_WINDOW_SECONDS):
            problems.append(f"'{SAMPLE_DURATION}' must be a window of (0, {MAX_WINDOW_SECONDS:g}] seconds, got "
                            f"{sample_duration!r}")
        elif sample_rate is not None and 1 <= sample_rate and sample_duration * sample_rate < 1:
            problems.append(f"'{SAMPLE_DURATION}' {sample_duration!r} s is shorter than one sample at "
                            f"{sample_rate} Hz")
    for key, value in ((CLASS_OUTPUTS_KEY, class_outputs_key), (EMBEDDING_OUTPUTS_KEY, embedding_outputs_key)):
        if value is not None and not (isinstance(value, str) and value.strip()):
            problems.append(f"'{key}' must name an output, got {value!r}")
    if max_chunk_samples is not None and not 1 <= max_chunk_samples <= MAX_GRAPH_SAMPLES:
        problems.append(f"'{MAX_CHUNK_SAMPLES}' must be 1..{MAX_GRAPH_SAMPLES} samples, got {max_chunk_samples}")
    for key, value in ((VAL_UAR, val_uar), (TEST_UAR, test_uar)):
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            problems.append(f"'{key}' must be a fraction in 0..1, got {value!r}")
    return problems


#: Keys holding a JSON object that repeats the waveform's rate (what the features were trained at, what
#: perch-hoplite resamples to): a graph where one disagrees with ``sample_rate`` would run at a rate its own
#: metadata says is wrong.
_RATE_ECHOES = ("preprocessing", PERCH_HOPLITE_CONFIG)


def _agreement_problems(metadata: Mapping[str, str], sample_rate: int | None) -> list[str]:
    """Where the stored map contradicts itself (the echoes of ``sample_rate``)."""
    problems = []
    for key in _RATE_ECHOES:
        try:
            echo = json.loads(metadata[key]) if key in metadata else None
        except (TypeError, json.JSONDecodeError):
            echo = None  # descriptive text: nothing to compare
        said = echo.get(SAMPLE_RATE) if isinstance(echo, dict) else None
        if said is not None and sample_rate is not None and said != sample_rate:
            problems.append(f"'{SAMPLE_RATE}' is {sample_rate} Hz but '{key}' says {said!r}: the graph's metadata "
                            "contradicts itself (edited by hand, or two graphs' metadata joined)")
    return problems


def _read_classes(text: str, problems: list[str]) -> tuple[str, ...] | None:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    if not (isinstance(parsed, list) and parsed and all(isinstance(c, str) and c for c in parsed)):
        problems.append(f"'{CLASSES}' must be a JSON list of class names, got {text[:80]!r}")
        return None
    return tuple(parsed)


def _read_number(metadata: Mapping[str, str], key: str, kind: type, problems: list[str]) -> Any:
    if key not in metadata:
        return None
    try:
        return kind(metadata[key])
    except (TypeError, ValueError):
        problems.append(f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {metadata[key]!r}")
        return None


@dataclass(frozen=True)
class GraphMetadata:
    """The checked metadata of one graph. Construct it with ``from_map`` (a stored map) or directly (what export
    writes, see ``to_map``); either way an invalid value raises one ``GraphContractError`` naming every problem."""

    classes: tuple[str, ...]
    sample_rate: int
    sample_duration: float  # seconds: the default analysis window
    class_outputs_key: str = PROBABILITIES
    embedding_outputs_key: str | None = EMBEDDING
    max_chunk_samples: int | None = None
    val_uar: float | None = None
    test_uar: float | None = None
    waveform_layout: str = LAYOUT_ANY_LEADING  # a stored map without the key reads LAYOUT_BATCH_SAMPLES
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)  # the whole map, as stored

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        problems = _value_problems(**{k: getattr(self, k) for k in _CHECKED})
        if problems:
            raise GraphContractError(f"graph metadata: {'; '.join(problems)}")

    @classmethod
    def from_map(cls, metadata: Mapping[str, str], source: str = "graph") -> "GraphMetadata":
        """Parse and check a stored map; one error lists every missing or malformed key of ``source``."""
        problems = []
        missing = [k for k in REQUIRED_KEYS if k not in metadata]
        if missing:
            problems.append(f"missing metadata key(s) {', '.join(missing)}")
        values = {
            "classes": _read_classes(metadata[CLASSES], problems) if CLASSES in metadata else None,
            "sample_rate": _read_number(metadata, SAMPLE_RATE, int, problems),
            "sample_duration": _read_number(metadata, SAMPLE_DURATION, float, problems),
            "class_outputs_key": metadata.get(CLASS_OUTPUTS_KEY),
            "embedding_outputs_key": metadata.get(EMBEDDING_OUTPUTS_KEY),
            "max_chunk_samples": _read_number(metadata, MAX_CHUNK_SAMPLES, int, problems),
            "val_uar": _read_number(metadata, VAL_UAR, float, problems),
            "test_uar": _read_number(metadata, TEST_UAR, float, problems),
            "waveform_layout": metadata.get(WAVEFORM_LAYOUT, LAYOUT_BATCH_SAMPLES),
        }
        problems += _value_problems(**values)
        problems += _agreement_problems(metadata, values["sample_rate"])
        if problems:
            raise GraphContractError(f"{source}: not a vocalprobe graph: {'; '.join(problems)}. {_FIX}")
        return cls(**values, metadata=dict(metadata))

    def to_map(self) -> dict[str, str]:
        """The contract's keys as stored strings, in the order export writes them."""
        meta = {CLASSES: json.dumps(list(self.classes)), SAMPLE_RATE: str(int(self.sample_rate)),
                SAMPLE_DURATION: f"{float(self.sample_duration):.6g}", CLASS_OUTPUTS_KEY: self.class_outputs_key}
        if self.embedding_outputs_key is not None:
            meta[EMBEDDING_OUTPUTS_KEY] = self.embedding_outputs_key
        if self.max_chunk_samples is not None:
            meta[MAX_CHUNK_SAMPLES] = str(int(self.max_chunk_samples))
        for key, value in ((VAL_UAR, self.val_uar), (TEST_UAR, self.test_uar)):
            if value is not None:
                meta[key] = repr(float(value))
        meta[WAVEFORM_LAYOUT] = self.waveform_layout
        meta[PERCH_HOPLITE_CONFIG] = json.dumps(perch_hoplite_config(self), sort_keys=True)
        return meta


def int8_weights(metadata: Mapping[str, str]) -> str | None:
    """A graph's int8 weight codes (``INT8_WEIGHTS``): None for an fp32 graph, "8-bit" for a quantized one written
    before the key."""
    modes = {m.strip() for m in metadata.get(QUANTIZATION, "none").split(",")} - {"", "none"}
    if not modes:
        return None
    return metadata.get(INT8_WEIGHTS, "8-bit")


_CHECKED = ("classes", "sample_rate", "sample_duration", "class_outputs_key", "embedding_outputs_key",
            "max_chunk_samples", "val_uar", "test_uar", "waveform_layout")


def perch_hoplite_config(info: GraphMetadata, *, hop_s: float | None = None) -> dict[str, Any]:
    """The fields of perch-hoplite's ``TaxonomyModelOnnx`` (``perch_hoplite.zoo.models_onnx``) that run this graph:
    its input and outputs, its window (hop: the window, like ``stream``), and no peak normalisation of hoplite's
    own (``target_peak=None``: the graph normalises each window itself). Add ``model_path``."""
    outputs = {"logits": info.class_outputs_key}
    if info.embedding_outputs_key is not None:
        outputs["embedding"] = info.embedding_outputs_key
    return {"sample_rate": int(info.sample_rate), "window_size_s": float(info.sample_duration),
            "hop_size_s": float(info.sample_duration if hop_s is None else hop_s), "target_peak": None,
            "input_name": WAVEFORM, "output_map": outputs}
