"""Clips longer than a graph's chunk limit, in bounded memory and with the study's exact semantics (no torch).

A vocalprobe graph is a resumable accumulator (``vocalprobe.runtime.core.graph_contract``): besides the waveform it
takes the optional inputs ``peak`` and ``prior_*`` and returns, besides the probabilities and embedding of everything
accumulated so far, the accumulated statistics ``stats_*``. ``predict_long`` cuts a clip with ``chunk_bounds`` (the
cut the study used), feeds every chunk with the whole clip's peak and the statistics of the chunks before it, and
returns the last call's outputs: the whole clip's probabilities and embedding, with one chunk in memory at a time.

The contract's feedback rule (``prior_input_for``) pairs outputs with inputs, so a fused graph (members prefixed
``m0_``, ``m1_``...) accumulates each member's statistics the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vocalprobe.runtime.core.chunking import chunk_bounds
from vocalprobe.runtime.core.graph_contract import EMBEDDING, PEAK, PROBABILITIES, WAVEFORM, prior_input_for
from vocalprobe.runtime.engine.onnx_model import ModelError

__all__ = ["predict_long", "predict_clip", "state_names", "input_names"]


def input_names(session) -> set[str]:
    """Every input a graph accepts: the required ones and the optional ones (inputs with a default initializer,
    which onnxruntime lists as overridable initializers, not as inputs)."""
    names = {i.name for i in session.get_inputs()}
    overridable = getattr(session, "get_overridable_initializers", None)
    if overridable is not None:
        names |= {i.name for i in overridable()}
    return names


def state_names(session) -> dict[str, str]:
    """``{output name: input name}`` of the statistics a graph carries from call to call."""
    inputs = input_names(session)
    pairs = {}
    for output in session.get_outputs():
        prior = prior_input_for(output.name)
        if prior is not None and prior in inputs:
            pairs[output.name] = prior
    return pairs


def predict_long(session_or_model: Any, samples_16k: np.ndarray, chunk_samples: int
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """One clip ``[samples]`` at the model's rate -> ``(probabilities [classes], embedding [dims] or None)``.

    ``session_or_model``: an ``OnnxModel`` (class and embedding keys from its metadata) or an onnxruntime
    ``InferenceSession`` (the contract's output names). A clip no longer than ``chunk_samples`` is
    one call, identical to feeding it whole.
    """
    session = getattr(session_or_model, "session", session_or_model)
    info = getattr(session_or_model, "info", None)
    class_key = info.class_outputs_key if info is not None else PROBABILITIES
    emb_key = info.embedding_outputs_key if info is not None else EMBEDDING
    outputs = [o.name for o in session.get_outputs()]
    if emb_key not in outputs:
        emb_key = None
    samples = np.ascontiguousarray(samples_16k, dtype=np.float32).reshape(-1)
    if samples.size == 0:
        raise ModelError("cannot score an empty clip")
    if chunk_samples < 1:
        raise ModelError(f"chunk size must be >= 1 sample, got {chunk_samples}")
    bounds = chunk_bounds(samples.size, chunk_samples)
    pairs = state_names(session)
    inputs = input_names(session)
    if len(bounds) > 1 and (not pairs or PEAK not in inputs):
        raise ModelError(f"{getattr(session_or_model, 'name', 'this graph')}: the graph has no peak/prior_*/stats_* "
                         "inputs and outputs, so it cannot score a clip longer than its max_chunk_samples "
                         f"({samples.size} > {chunk_samples} samples); re-export it with `vocalprobe export`")
    wanted = [class_key] + ([emb_key] if emb_key else []) + list(pairs)
    feed: dict[str, np.ndarray] = {}
    if len(bounds) > 1:
        feed[PEAK] = np.full((1, 1), float(np.max(np.abs(samples))), dtype=np.float32)
    result = None
    for start, end in bounds:
        feed[WAVEFORM] = samples[None, start:end]
        result = dict(zip(wanted, session.run(wanted, feed)))
        for output, input_name in pairs.items():
            feed[input_name] = result[output]
    probabilities = result[class_key][0].astype(np.float32, copy=False)
    embedding = result[emb_key][0].astype(np.float32, copy=False) if emb_key else None
    return probabilities, embedding


def predict_clip(model, samples: np.ndarray) -> np.ndarray:
    """Probabilities ``[classes]`` of one whole clip at the model's rate.

    The one place that decides how a clip is fed. A clip longer than the graph's ``max_chunk_samples`` metadata is
    fed chunk by chunk with carried statistics (``predict_long`` above), exactly as the study
    extracted it; an ensemble does that per member and averages.
    """
    limit = model.max_chunk_samples
    if limit is None or samples.shape[-1] <= limit:
        return model.predict(samples[None, :])[0]
    members = model.members
    if members == [model]:  # one graph (a fused graph included), not an ensemble of files
        return predict_long(model, samples, limit)[0]
    return model.combine([predict_long(member, samples, member.max_chunk_samples or samples.shape[-1])[0]
                          for member in members])
