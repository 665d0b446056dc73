"""A torch-free wrapper around one exported vocalprobe graph, run with onnxruntime.

The graph follows ``vocalprobe.runtime.core.graph_contract`` (written by ``vocalprobe.export``): raw mono audio at the
model's rate in (the graph peak-normalises and repeat-pads itself), class probabilities and an embedding out;
everything the runtime needs is in the ONNX metadata (``session.get_modelmeta().custom_metadata_map``). Loading
checks that metadata with the contract's one parser, which names every missing key at once, like OpenSoundscape's
``ONNXModel``, and then the graph's signature.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from vocalprobe.runtime.core.cpu_features import int8_pairs_saturate
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import (
    LAYOUT_ANY_LEADING,
    MEMBERS,
    WAVEFORM,
    GraphContractError,
    GraphMetadata,
    INT8_SAFE_WEIGHTS,
    int8_weights,
)

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class ModelError(VocalprobeError):
    """An .onnx file that is missing or unreadable, or a graph that cannot run as asked. (A graph that breaks the
    contract raises ``graph_contract.GraphContractError``.)"""


def _import_onnxruntime():
    from vocalprobe.runtime.core.imports import import_onnxruntime

    try:
        return import_onnxruntime()  # refused after usearch, which would crash the process
    except ModuleNotFoundError as exc:  # the base install has it; say how to fix a broken one
        raise ModelError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)") from exc


def _ort_load_errors(ort) -> tuple[type[BaseException], ...]:
    """The exception types onnxruntime raises for a file it cannot load (they do not share a base class)."""
    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile", "NotFound",
             "NotImplemented", "RuntimeException", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n)) + (RuntimeError, OSError)


def choose_providers(requested: str, available: Sequence[str]) -> list[str]:
    """Execution providers to ask onnxruntime for: ``auto`` takes CUDA when this onnxruntime build has it."""
    if requested not in PROVIDER_CHOICES:
        raise ModelError(f"unknown provider {requested!r}; expected one of {', '.join(PROVIDER_CHOICES)}")
    if requested == "cuda":
        if _CUDA not in available:
            raise ModelError("--provider cuda: this onnxruntime has no CUDA provider (available: "
                             f"{', '.join(available)}). pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
        return [_CUDA, _CPU]
    if requested == "auto" and _CUDA in available:
        return [_CUDA, _CPU]
    return [_CPU]


def session_options(ort, threads: int | None = None):
    """The runtime's onnxruntime session options (benchmarks build their sessions with these too)."""
    options = ort.SessionOptions()
    # errors only: vocalprobe graphs have optional inputs (inputs with a default initializer), which
    # onnxruntime reports with a warning on every load
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxModel:
    """One exported graph. ``predict(batch)`` maps ``[b, samples]`` float32 audio to ``[b, classes]`` probabilities."""

    def __init__(self, path: str | Path, *, provider: str = "auto", threads: int | None = None):
        self.path = Path(path)
        if self.path.is_dir():
            graphs = sorted(q.name for q in self.path.glob("*.onnx"))
            raise ModelError(f"{self.path} is a folder, not a model: pass the exported .onnx file itself"
                             + (f" (this folder holds {', '.join(graphs[:5])}{' ...' if len(graphs) > 5 else ''})"
                                if graphs else " (it holds no .onnx file)"))
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        if threads is not None and threads < 1:
            raise ModelError(f"threads must be >= 1, got {threads}")
        ort = _import_onnxruntime()
        options = session_options(ort, threads)
        requested = choose_providers(provider, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=requested)
        except _ort_load_errors(ort) as exc:
            raise ModelError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        #: What onnxruntime really uses: onnxruntime-gpu keeps CUDA listed as available without a GPU.
        self.providers: list[str] = list(self.session.get_providers())
        if provider == "cuda" and _CUDA not in self.providers:
            raise ModelError(f"{self.path}: --provider cuda was asked for but onnxruntime fell back to "
                             f"{', '.join(self.providers)} (no usable GPU / CUDA libraries)")
        self.info = GraphMetadata.from_map(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self._check_signature()
        if int8_weights(self.info.metadata) not in (None, *INT8_SAFE_WEIGHTS) and int8_pairs_saturate():
            log.warning("%s: this int8 graph has 8-bit weight codes, which overflow on this CPU (x86 without VNNI: "
                        "onnxruntime adds uint8 x int8 products in saturating int16), so its results here differ "
                        "from a VNNI CPU's. Re-export it with this vocalprobe (its int8 codes are exact on every CPU).",
                        self.path.name)

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        problems = []
        if WAVEFORM not in inputs:
            problems.append(f"no input named {WAVEFORM!r} (inputs: {', '.join(inputs)})")
        else:
            # any-leading-axes graphs declare no shape (onnxruntime lists []); older graphs declare [batch, samples]
            rank = 0 if self.info.waveform_layout == LAYOUT_ANY_LEADING else 2
            if inputs[WAVEFORM].type != "tensor(float)" or len(inputs[WAVEFORM].shape) != rank:
                problems.append(f"input {WAVEFORM!r} must be float32 "
                                f"{'of any rank' if rank == 0 else '[batch, samples]'} (waveform_layout "
                                f"{self.info.waveform_layout!r}), got {inputs[WAVEFORM].type} "
                                f"{inputs[WAVEFORM].shape}")
        key = self.info.class_outputs_key
        if key not in outputs:
            problems.append(f"class_outputs_key {key!r} is not an output (outputs: {', '.join(outputs)})")
        else:
            shape = outputs[key].shape
            if len(shape) != 2:
                problems.append(f"output {key!r} must be [batch, classes], got {shape}")
            elif isinstance(shape[1], int) and shape[1] != len(self.info.classes):
                problems.append(f"output {key!r} has {shape[1]} classes but metadata lists "
                                f"{len(self.info.classes)}")
        emb = self.info.embedding_outputs_key
        if emb is not None and emb not in outputs:
            problems.append(f"embedding_outputs_key {emb!r} is not an output (outputs: {', '.join(outputs)})")
        if problems:
            raise GraphContractError(f"{self.path}: does not follow the vocalprobe graph contract: "
                                     f"{'; '.join(problems)}")

    # The interface shared with ``Ensemble``.
    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def sample_duration(self) -> float:
        return self.info.sample_duration

    @property
    def max_chunk_samples(self) -> int | None:
        return self.info.max_chunk_samples

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def members(self) -> list[OnnxModel]:
        """One graph (a fused graph included) is its own only member, as an ``Ensemble`` of one would be."""
        return [self]

    @property
    def weights(self) -> np.ndarray:
        return np.ones(1)

    def describe(self) -> str:
        meta = self.info.metadata
        bits = [f"{self.path.name}"]
        if MEMBERS in meta:
            try:
                members = json.loads(meta[MEMBERS])
                bits.append("fusion of " + " + ".join(f"{m.get('backbone', '?')} L{m.get('layer', '?')}"
                                                      for m in members))
            except (ValueError, TypeError, AttributeError):
                bits.append("fusion graph")
        elif "backbone" in meta:
            bits.append(f"{meta['backbone']} layer {meta.get('layer', '?')}")
        bits.append(f"{len(self.classes)} classes, {self.sample_duration:g} s window, "
                    f"on {', '.join(self.providers)}")
        return ": ".join(bits[:1]) + " (" + "; ".join(bits[1:]) + ")"

    def _run(self, batch: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[0] == 0 or batch.shape[1] == 0:
            raise ModelError(f"{self.path.name}: expected a [batch, samples] array with batch, samples >= 1, "
                             f"got shape {batch.shape}")
        return self.session.run(outputs, {WAVEFORM: batch})

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``[b, classes]`` (float32) for ``b`` windows of raw audio at ``sample_rate``."""
        (probs,) = self._run(batch, [self.info.class_outputs_key])
        if probs.shape != (batch.shape[0], len(self.classes)):
            raise ModelError(f"{self.path.name}: expected probabilities of shape "
                             f"{(batch.shape[0], len(self.classes))}, the graph returned {probs.shape}")
        return probs.astype(np.float32, copy=False)

    def predict_with_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.info.embedding_outputs_key is None:
            raise ModelError(f"{self.path.name}: the metadata names no embedding_outputs_key")
        probs, emb = self._run(batch, [self.info.class_outputs_key, self.info.embedding_outputs_key])
        return probs.astype(np.float32, copy=False), emb.astype(np.float32, copy=False)


def load_model(path: str | Path, *, provider: str = "auto", threads: int | None = None) -> OnnxModel:
    return OnnxModel(path, provider=provider, threads=threads)
