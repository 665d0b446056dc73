"""Arithmetic of a deployed graph: multiply-accumulates (MACs) per audio second of a backbone truncated after layer k.

Counted analytically from the checkpoint's transformers config (a dict, ``config.to_dict()``), so the study report
and ``export --layer frontier:M`` can price every layer without loading weights. What is counted: every matrix
product and convolution (the CNN feature encoder, the feature projection, the positional convolution, per
transformer layer the Q/K/V/output projections ``4·T·d²``, the attention products ``2·T²·d`` and the feed-forward
``2·T·d·ffn``), plus the probe's MLP once per window. Normalisations, activations, softmax and pooling are
elementwise and left out (well under 1%). The attention term grows with the frames per window, so the figure
depends on the window the graph is run on: ``window_seconds`` (default ``DEFAULT_WINDOW_SECONDS``, the benchmark's
window) is always stated beside it.

Families: ``wav2vec2`` / ``hubert`` / ``wavlm`` (WavLM adds its gated relative position bias, ``8·T·d``) and the
``whisper`` encoder (log-mel STFT as a real DFT matmul plus the mel filterbank, conv1 k3, conv2 k3 stride 2, then the
layers at 50 frames/s; the encoder is assumed to see the window itself, not a 30 s padded input, unless
``whisper_input_seconds`` says otherwise). ``tests/training/test_cost.py`` checks the formula against
``torch.utils.flop_counter.FlopCounterMode`` on the real transformers modules.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from vocalprobe.runtime.core.errors import VocalprobeError

SAMPLE_RATE = 16_000
#: The window the attention term is priced at (seconds); the benchmark runs 1 s windows too.
DEFAULT_WINDOW_SECONDS = 1.0
WAVEFORM_FAMILIES = ("wav2vec2", "hubert", "wavlm")
FAMILIES = WAVEFORM_FAMILIES + ("whisper",)
#: Whisper's front end: 25 ms FFT, 10 ms hop (100 mel frames/s), then conv2 halves it to 50 frames/s.
WHISPER_N_FFT = 400
WHISPER_HOP = 160


class CostError(VocalprobeError):
    """A config whose arithmetic vocalprobe cannot count."""


def _conv_out(length: int, kernel: int, stride: int, padding: int = 0) -> int:
    return max(0, (length + 2 * padding - kernel) // stride + 1)


def transformer_layer_macs(frames: int, d: int, ffn: int) -> int:
    """One encoder layer on ``frames`` frames: projections, attention products, feed-forward."""
    return 4 * frames * d * d + 2 * frames * frames * d + 2 * frames * d * ffn


def probe_macs(in_features: int, hidden_sizes: Sequence[int], n_classes: int) -> int:
    """The probe's MLP on one pooled vector (once per window)."""
    sizes = [int(in_features), *map(int, hidden_sizes), int(n_classes)]
    return sum(a * b for a, b in zip(sizes, sizes[1:]))


def _get(config: Mapping[str, Any], key: str) -> Any:
    if key not in config:
        raise CostError(f"the backbone config has no {key!r}; cannot count its arithmetic")
    return config[key]


def _waveform_stem(config: Mapping[str, Any], samples: int) -> tuple[int, int]:
    """(MACs, frames) of the CNN feature encoder, the feature projection and the positional convolution."""
    dims = list(_get(config, "conv_dim"))
    kernels = list(_get(config, "conv_kernel"))
    strides = list(_get(config, "conv_stride"))
    d = int(_get(config, "hidden_size"))
    macs, length, channels = 0, int(samples), 1
    for c_out, k, s in zip(dims, kernels, strides):
        length = _conv_out(length, k, s)
        macs += length * channels * c_out * k
        channels = c_out
    frames = length
    macs += frames * channels * d  # feature projection
    k_pos = int(_get(config, "num_conv_pos_embeddings"))
    groups = int(_get(config, "num_conv_pos_embedding_groups"))
    macs += _conv_out(frames, k_pos, 1, k_pos // 2) * d * (d // groups) * k_pos  # even kernel: one extra, dropped
    return macs, frames


def _whisper_stem(config: Mapping[str, Any], samples: int, front_end: bool = True) -> tuple[int, int]:
    """(MACs, frames) of the log-mel front end (real DFT as a matmul, mel filterbank) and the two convolutions."""
    n_mels = int(_get(config, "num_mel_bins"))
    d = int(_get(config, "d_model"))
    mel_frames = samples // WHISPER_HOP  # Whisper drops the STFT's last frame: 100 frames per second
    bins = WHISPER_N_FFT // 2 + 1
    macs = mel_frames * (WHISPER_N_FFT * bins * 2 + bins * n_mels) if front_end else 0  # cos, sin; filterbank
    macs += mel_frames * n_mels * d * 3  # conv1: k3, padding 1
    frames = _conv_out(mel_frames, 3, 2, 1)
    macs += frames * d * d * 3  # conv2: k3, stride 2, padding 1
    return macs, frames


def window_macs(config: Mapping[str, Any], layer: int, *, window_seconds: float = DEFAULT_WINDOW_SECONDS,
                probe: tuple[int, Sequence[int], int] | None = None, whisper_input_seconds: float | None = None,
                include_front_end: bool = True) -> int:
    """MACs of one window through the graph truncated after ``layer`` (0 = transformer input).

    ``probe``: (input features, hidden sizes, classes) of the probe on top, or None for the backbone alone.
    ``include_front_end``: Whisper's log-mel STFT (False: the encoder from its mel input, as transformers runs it).
    """
    model_type = str(config.get("model_type", ""))
    if model_type not in FAMILIES:
        raise CostError(f"model_type {model_type!r}: vocalprobe counts the arithmetic of {', '.join(FAMILIES)}")
    if window_seconds <= 0:
        raise CostError(f"the window must be positive, got {window_seconds} s")
    if model_type == "whisper":
        seconds = window_seconds if whisper_input_seconds is None else whisper_input_seconds
        d, ffn, n_layers = (int(_get(config, k)) for k in ("d_model", "encoder_ffn_dim", "encoder_layers"))
        macs, frames = _whisper_stem(config, int(round(seconds * SAMPLE_RATE)), include_front_end)
    else:
        d, ffn, n_layers = (int(_get(config, k)) for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
        macs, frames = _waveform_stem(config, int(round(window_seconds * SAMPLE_RATE)))
    if not 0 <= layer <= n_layers:
        raise CostError(f"layer {layer} out of range 0..{n_layers}")
    per_layer = transformer_layer_macs(frames, d, ffn)
    if model_type == "wavlm":
        per_layer += 8 * frames * d  # gru_rel_pos_linear: head_dim -> 8, per head and frame
    macs += layer * per_layer
    if probe is not None:
        macs += probe_macs(*probe)
    return int(macs)


def macs_per_second(config: Mapping[str, Any], layer: int, *, window_seconds: float = DEFAULT_WINDOW_SECONDS,
                    **kwargs: Any) -> float:
    """MACs per audio second of windows of ``window_seconds`` through the graph truncated after ``layer``."""
    return window_macs(config, layer, window_seconds=window_seconds, **kwargs) / window_seconds


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (cost, score) points: True where no other point is at most as costly and strictly better, or cheaper
    and at least as good (the deployable frontier)."""
    flags = []
    for i, (c, s) in enumerate(points):
        dominated = any((c2 <= c and s2 > s) or (c2 < c and s2 >= s)
                        for j, (c2, s2) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def cheapest_within(layers: Sequence[int], costs: Sequence[float], scores: Sequence[float],
                    margin: float) -> int:
    """The cheapest layer whose score is at least the best score minus ``margin`` (same units); ties on cost go to
    the better score, then the lower layer."""
    if margin < 0:
        raise CostError(f"the margin must be >= 0, got {margin}")
    best = max(scores)
    eligible = [(c, -s, layer) for layer, c, s in zip(layers, costs, scores) if s >= best - margin - 1e-12]
    return min(eligible)[2]
