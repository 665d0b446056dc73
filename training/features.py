"""The one definition of a clip's features: 16 kHz waveform -> per-layer mean and standard deviation over time.

``LayerFeatures`` is a torch module built from a loaded backbone. Its forward does, for a batch of equal-length
clips ``[batch, samples]``:

1. preprocessing, identical to ``vocalprobe.runtime.core.preprocess``: peak normalisation per clip, then clips shorter
   than ``MIN_SAMPLES`` are tiled (repeated) up to it;
2. the backbone's CNN, feature projection and transformer layers, run ONCE for all requested layers. Layer 0 is
   the transformer's input (``hidden_states[0]`` of transformers), layer k the output of transformer layer k
   (``hidden_states[k]``). One exception, by choice: for stable-layer-norm ("large"-style) checkpoints transformers
   applies the final encoder LayerNorm to its LAST hidden state only; we leave it out at every layer, so all layers
   are raw block outputs and a truncated export equals the full model's features. The paper's base models are not
   stable-layer-norm, so for them every layer is ``hidden_states[k]`` exactly. Whisper encoders (model_type
   ``whisper``) run through ``training.whisper.encoder.WhisperLayers`` instead (log-mel front end, no 30 s
   padding; their last layer is taken after the final LayerNorm, as transformers' ``hidden_states``);
3. for every requested layer the mean and the POPULATION standard deviation over frames, concatenated:
   ``[batch, n_layers, 2 * D]`` with the mean in ``[..., :D]`` and the std in ``[..., D:]``.

Layers after ``max_layer`` are not part of the module at all (nor is a stable-layer-norm model's final encoder
LayerNorm), so exporting a truncated module really drops them. The forward has no data-dependent Python control
flow: the repeat padding is a symbolic tile-and-slice, so it traces with a dynamic batch and time axis.

Long clips are cut into chunks OUTSIDE the module (``chunk_bounds``), each chunk gives per-layer frame statistics
(``LayerFeatures.frame_stats``: frame count, mean, sum of squared deviations) and ``combine_stats`` merges them
exactly (Chan et al.'s parallel formula, float64) into the features of the whole clip; ``pool_stats`` turns
statistics into the mean/std vector. A clip of one chunk gives ``forward`` exactly.

Batching: only clips of EXACTLY equal length (after preprocessing) share a batch. Zero-padding changes every frame of
the wav2vec2-family models (GroupNorm over the whole padded signal, attention sees the padding), so a clip's features
would depend on its batch neighbours. Measurements: README and docs/features.md.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from vocalprobe.runtime.core.chunking import chunk_bounds  # torch-free, shared with the runtime; re-exported here
from vocalprobe.runtime.core.preprocess import MIN_SAMPLES

__all__ = ["LayerFeatures", "FrameStats", "chunk_bounds", "clip_features", "combine_stats", "pool_stats",
           "num_frames", "conv_frames", "select_layers"]


class FrameStats(NamedTuple):
    """Per-layer frame statistics of a batch: ``count`` frames, ``mean`` and ``m2`` (sum of squared deviations)."""

    count: int  # frames per clip (equal for the whole batch)
    mean: torch.Tensor  # [batch, n_layers, D] float32
    m2: torch.Tensor  # [batch, n_layers, D] float32


def select_layers(num_layers: int, layers: Sequence[int] | None = None) -> tuple[int, ...]:
    """Validate layer indices (0 = transformer input, 1..num_layers); ``None`` means all of them."""
    if layers is None:
        return tuple(range(num_layers + 1))
    chosen = tuple(int(layer) for layer in layers)
    if not chosen:
        raise ValueError("no layers requested")
    bad = [layer for layer in chosen if not 0 <= layer <= num_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: this backbone has layers 0..{num_layers} "
                         "(0 = transformer input, then one per transformer layer)")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"duplicate layers in {list(chosen)}")
    return chosen


class LayerFeatures(nn.Module):
    """Waveform ``[batch, samples]`` at 16 kHz -> pooled features ``[batch, n_layers, 2 * D]`` (see module docs).

    ``model``: a transformers HubertModel / Wav2Vec2Model / WavLMModel (``Backbone.model``). Its submodules are
    shared, not copied. ``layers``: the layer indices to output (default: 0..max_layer). ``max_layer``: the last
    transformer layer kept (default: the largest requested layer); layers above it are left out of the module.
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[int] | None = None, max_layer: int | None = None,
                 min_samples: int = MIN_SAMPLES):
        super().__init__()
        config = model.config
        self.family = str(config.model_type)
        if self.family not in ("hubert", "wav2vec2", "wavlm", "whisper"):
            raise ValueError(f"unsupported model_type {self.family!r}")
        total = int(config.num_hidden_layers)
        if max_layer is None:
            max_layer = max(select_layers(total, layers))
        if not 0 <= int(max_layer) <= total:
            raise ValueError(f"max_layer {max_layer} out of range 0..{total}")
        self.max_layer = int(max_layer)
        self.layers = select_layers(self.max_layer, layers)
        self.dim = int(config.hidden_size)
        self.min_samples = int(min_samples)
        if self.family == "whisper":  # log-mel front end and its own layer convention (training/whisper/encoder.py)
            from vocalprobe.training.whisper.encoder import WhisperLayers

            self.whisper = WhisperLayers(model, self.max_layer)
            self.eval()
            return
        self.whisper = None
        self.stable_layer_norm = bool(config.do_stable_layer_norm)
        self.feature_extractor = model.feature_extractor
        self.feature_projection = model.feature_projection
        self.pos_conv_embed = model.encoder.pos_conv_embed
        # Non-stable ("base") encoders normalise the transformer input; stable ones normalise after the last layer
        # instead, which hidden_states[k] never includes, so that LayerNorm is not part of this module.
        self.input_layer_norm = None if self.stable_layer_norm else model.encoder.layer_norm
        self.blocks = nn.ModuleList(list(model.encoder.layers)[: self.max_layer])
        self.eval()

    @property
    def num_outputs(self) -> int:
        return len(self.layers)

    @property
    def feature_dim(self) -> int:
        return 2 * self.dim

    # -- preprocessing ------------------------------------------------------------------------------------------
    @staticmethod
    def peak_normalize(waveform: torch.Tensor) -> torch.Tensor:
        """Divide each clip by its peak absolute amplitude; silent clips stay zeros (as runtime.preprocess)."""
        peak = waveform.abs().amax(dim=-1, keepdim=True)
        return waveform / torch.where(peak > 0, peak, torch.ones_like(peak))

    def repeat_pad(self, waveform: torch.Tensor) -> torch.Tensor:
        """Tile clips shorter than ``min_samples`` up to it; longer clips pass through (tiled once: an identity)."""
        length = waveform.shape[-1]
        target = torch.sym_max(length, self.min_samples)
        repeats = (target + length - 1) // length  # 1 for clips already long enough
        return waveform.repeat(1, repeats)[:, :target]

    def preprocess(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.repeat_pad(self.peak_normalize(waveform))

    # -- backbone -----------------------------------------------------------------------------------------------
    def hidden_states(self, waveform: torch.Tensor) -> list[torch.Tensor]:
        """Hidden states ``[batch, frames, D]`` of layers 0..max_layer for an already preprocessed batch."""
        if self.whisper is not None:
            return self.whisper.hidden_states(waveform)
        features = self.feature_extractor(waveform).transpose(1, 2)  # (b, frames, conv channels)
        projected = self.feature_projection(features)
        hidden = projected[0] if isinstance(projected, tuple) else projected  # (b, frames, D)
        hidden = hidden + self.pos_conv_embed(hidden)
        if self.input_layer_norm is not None:
            hidden = self.input_layer_norm(hidden)
        states = [hidden]
        position_bias = None
        for index, block in enumerate(self.blocks):
            if self.family == "wavlm":
                hidden, position_bias = block(hidden, attention_mask=None, position_bias=position_bias, index=index)
            else:
                hidden = block(hidden, attention_mask=None)
            states.append(hidden)
        return states

    def frame_stats(self, waveform: torch.Tensor) -> FrameStats:
        """Per-layer frame count, mean and sum of squared deviations for a PREPROCESSED batch (float32)."""
        states = self.hidden_states(waveform)
        selected = torch.stack([states[layer] for layer in self.layers], dim=1).float()  # (b, layers, frames, D)
        mean = selected.mean(dim=2)  # (b, layers, D)
        m2 = (selected - mean.unsqueeze(2)).square().sum(dim=2)  # (b, layers, D)
        return FrameStats(selected.shape[2], mean, m2)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[batch, samples]`` raw 16 kHz clips of equal length -> ``[batch, n_layers, 2 * D]`` float32."""
        stats = self.frame_stats(self.preprocess(waveform))
        std = (stats.m2 / stats.count).sqrt()  # population std
        return torch.cat([stats.mean, std], dim=-1)


# -- chunking and pooling (pure functions) -----------------------------------------------------------------------
def combine_stats(counts: Sequence[int], means: Sequence[np.ndarray], m2s: Sequence[np.ndarray]
                  ) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge per-chunk (count, mean, m2) into the statistics of all frames together, in float64."""
    if not counts:
        raise ValueError("no statistics to combine")
    n = np.asarray(counts, dtype=np.float64)
    total = float(n.sum())
    stacked_means = np.stack([np.asarray(m, dtype=np.float64) for m in means])  # (chunks, ...)
    weights = n.reshape((-1,) + (1,) * (stacked_means.ndim - 1))
    mean = (weights * stacked_means).sum(axis=0) / total
    m2 = sum(np.asarray(m, dtype=np.float64) for m in m2s) + (weights * (stacked_means - mean) ** 2).sum(axis=0)
    return int(total), mean, m2


def pool_stats(count: int, mean: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Statistics -> features: mean and population std concatenated on the last axis, float32."""
    if count <= 0:
        raise ValueError("no frames to pool")
    return np.concatenate([mean, np.sqrt(np.maximum(m2, 0.0) / count)], axis=-1).astype(np.float32)


def clip_features(module: LayerFeatures, samples: np.ndarray, chunk_samples: int,
                  device: torch.device | str | None = None) -> np.ndarray:
    """Features ``[n_layers, 2D]`` of ONE clip of any length: the definition extraction and export parity share.

    The whole clip is peak-normalised, cut by ``chunk_bounds`` (one chunk if it fits), each chunk repeat-padded
    if short and run through the module once, and the chunks' frame statistics merged in float64. Call it under
    ``torch.inference_mode()`` (and autocast, for reduced precision). ``device``: where the chunks run (default:
    where the samples are, the cpu).
    """
    x = module.peak_normalize(torch.as_tensor(np.ascontiguousarray(samples, dtype=np.float32))[None])
    counts, means, m2s = [], [], []
    for start, end in chunk_bounds(x.shape[-1], chunk_samples):
        stats = module.frame_stats(module.repeat_pad(x[:, start:end].to(device or x.device)))
        counts.append(stats.count)
        means.append(stats.mean[0].double().cpu().numpy())
        m2s.append(stats.m2[0].double().cpu().numpy())
    return pool_stats(*combine_stats(counts, means, m2s))


def num_frames(n_samples: int, config) -> int:
    """Frames the backbone CNN makes from ``n_samples`` samples (0 below its receptive field, 400 for base models)."""
    return conv_frames(n_samples, zip(config.conv_kernel, config.conv_stride))


def conv_frames(n_samples: int, convs: Iterable[tuple[int, int]]) -> int:
    """Frames a chain of unpadded convolutions ``(kernel, stride)`` makes from ``n_samples`` samples."""
    frames = int(n_samples)
    for kernel, stride in convs:
        frames = max(0, (frames - kernel) // stride + 1)
    return frames
