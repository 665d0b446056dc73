"""The one definition of waveform -> probabilities for a trained probe, shared by the study's checks and export.

``ProbePipeline`` chains everything a deployed model does: the study's preprocessing (peak normalisation, repeat
padding of short clips), the backbone truncated after layer L (``LayerFeatures(max_layer=L, layers=[L])``: later
layers are not part of the module), mean + population-std pooling over frames, the probe's z-scoring and MLP, and a
softmax. ``vocalprobe.export`` exports exactly this module to ONNX.

Long clips: a *resumable accumulator* (the graph contract, ``vocalprobe.runtime.core.graph_contract``). Besides
``waveform`` ``[b, samples]`` the forward takes

* ``peak`` ``[b or 1, 1]``: the amplitude to divide by; ``0`` means "this input's own peak" (a whole clip);
* ``prior_count`` ``[b or 1, 1]``, ``prior_mean`` / ``prior_m2`` ``[b or 1, D]``: frame statistics of the chunks
  already seen (zeros: nothing seen yet),

merges this input's frame statistics with the prior (Chan et al.'s parallel update), and returns the probabilities
and embedding of *everything accumulated so far* plus the accumulated statistics. A clip longer than the chunk limit
is cut with ``chunk_bounds`` (the same cut as training), every chunk is divided by the whole clip's peak, and the
statistics are carried from chunk to chunk: the last call gives the whole clip's result in memory bounded by one
chunk. ``predict_long`` does that loop in torch; ``vocalprobe.runtime.engine.long_clips.predict_long`` does it with
onnxruntime. ``study_features`` is the study's definition of a clip's features (float64 merge of per-chunk statistics)
that both are held against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from vocalprobe.runtime.core.chunking import chunk_bounds
from vocalprobe.runtime.core.graph_contract import INPUT_NAMES, OUTPUT_NAMES, PEAK
from vocalprobe.runtime.core.graph_contract import optional_input_defaults as default_state
from vocalprobe.runtime.core.preprocess import MIN_SAMPLES
from vocalprobe.training.features import LayerFeatures, clip_features
from vocalprobe.training.probe import MLPProbe

__all__ = ["ProbePipeline", "PipelineOutput", "INPUT_NAMES", "OUTPUT_NAMES", "predict_long",
           "study_features", "default_state"]


class PipelineOutput(NamedTuple):
    probabilities: torch.Tensor  # (b, n_classes), rows sum to 1
    embedding: torch.Tensor  # (b, 2D): mean and population std of every frame accumulated so far
    stats_count: torch.Tensor  # (b, 1) frames accumulated
    stats_mean: torch.Tensor  # (b, D)
    stats_m2: torch.Tensor  # (b, D) sum of squared deviations from stats_mean


class ProbePipeline(nn.Module):
    """Raw 16 kHz waveform -> class probabilities of one probe on one backbone layer (see the module docs).

    ``model``: a transformers HubertModel / Wav2Vec2Model / WavLMModel (shared, not copied). ``probe``: the trained
    ``MLPProbe`` (its z-score buffers included). ``layer``: 0 = transformer input, k = output of transformer layer k.
    """

    def __init__(self, model: nn.Module, probe: MLPProbe, layer: int, *, min_samples: int = MIN_SAMPLES):
        super().__init__()
        self.features = LayerFeatures(model, layers=[int(layer)], max_layer=int(layer), min_samples=min_samples)
        if probe.n_features != self.features.feature_dim:
            raise ValueError(f"the probe expects {probe.n_features} features but layer {layer} of this backbone "
                             f"gives {self.features.feature_dim} (2 x hidden size {self.features.dim})")
        self.layer = int(layer)
        self.probe = probe
        self.eval()

    @property
    def dim(self) -> int:
        return self.features.dim

    @property
    def n_classes(self) -> int:
        return self.probe.n_classes

    def forward(self, waveform: torch.Tensor, peak: torch.Tensor, prior_count: torch.Tensor,
                prior_mean: torch.Tensor, prior_m2: torch.Tensor) -> PipelineOutput:
        own_peak = waveform.abs().amax(dim=-1, keepdim=True)  # (b, 1)
        scale = torch.where(peak > 0, peak, own_peak)  # (b, 1): the caller's (whole-clip) peak wins
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # silence stays zeros, never NaN
        x = self.features.repeat_pad(waveform / scale)  # (b, max(samples, min_samples))
        hidden = self.features.hidden_states(x)[self.layer].float()  # (b, frames, D)
        count = torch.ones_like(hidden[:, :, :1]).sum(dim=1)  # (b, 1): frames, as a tensor (dynamic in the graph)
        mean = hidden.mean(dim=1)  # (b, D)
        m2 = (hidden - mean.unsqueeze(1)).square().sum(dim=1)  # (b, D)
        # Chan et al.: merge (prior_count, prior_mean, prior_m2) with (count, mean, m2); exact when the prior is empty
        total = prior_count + count  # (b, 1)
        delta = mean - prior_mean  # (b, D)
        merged_mean = prior_mean + delta * (count / total)
        merged_m2 = prior_m2 + m2 + delta.square() * (prior_count * count / total)
        embedding = torch.cat([merged_mean, (merged_m2 / total).clamp_min(0.0).sqrt()], dim=-1)  # (b, 2D)
        probabilities = torch.softmax(self.probe(embedding), dim=-1)  # (b, n_classes)
        return PipelineOutput(probabilities, embedding, total, merged_mean, merged_m2)

    def default_state(self, batch: int = 1) -> dict[str, torch.Tensor]:
        """The optional inputs' defaults: own peak, nothing accumulated."""
        return {k: torch.from_numpy(v).expand(batch, -1).contiguous()
                for k, v in default_state(self.dim).items()}

    @torch.no_grad()
    def predict(self, waveform: torch.Tensor) -> PipelineOutput:
        """Whole clips of equal length ``[b, samples]`` (each its own peak, nothing accumulated)."""
        return self(waveform, **self.default_state(waveform.shape[0]))


@torch.no_grad()
def predict_long(pipeline: ProbePipeline, samples: np.ndarray, chunk_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """One clip ``[samples]`` of any length -> ``(probabilities [classes], embedding [2D])``, chunk by chunk."""
    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    state = pipeline.default_state(1)
    state[PEAK] = torch.full((1, 1), peak)
    out = None
    for start, end in chunk_bounds(samples.shape[-1], chunk_samples):
        out = pipeline(torch.from_numpy(samples[None, start:end]), **state)
        state.update(prior_count=out.stats_count, prior_mean=out.stats_mean, prior_m2=out.stats_m2)
    return out.probabilities[0].numpy(), out.embedding[0].numpy()


@torch.no_grad()
def study_features(features: LayerFeatures, samples: np.ndarray, chunk_samples: int) -> np.ndarray:
    """The study's features of one clip ``[n_layers, 2D]`` (``training.features.clip_features``: the whole clip's
    peak, chunks cut by ``chunk_bounds``, per-chunk statistics merged in float64)."""
    with torch.inference_mode():
        return clip_features(features, samples, chunk_samples)
