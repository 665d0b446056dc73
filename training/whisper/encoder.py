"""A Whisper encoder as a layer-wise feature extractor for clips of any length up to 30 s, without the 30 s padding
transformers' ``WhisperEncoder`` insists on.

``WhisperLayers`` wraps a loaded ``WhisperModel``'s encoder: a torch log-mel front end with
``WhisperFeatureExtractor``'s semantics (hann STFT, n_fft 400, hop 160, centred with reflection, as a Conv1d with a
fixed DFT basis; power, the extractor's own mel filter bank, log10 floored at 1e-10, clamped to the clip's max - 8,
(x + 4) / 4, the last STFT frame dropped), then the two convolutions, the positional table sliced to the clip's
frames, and the blocks. The same module is exported to ONNX (``export.families``).
Layer 0 is the transformer input, layer k the output of block k, and the last layer is taken after the final
LayerNorm, as transformers' ``hidden_states``. A 30 s clip reproduces ``WhisperModel``'s hidden states.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vocalprobe.runtime.core.errors import VocalprobeError

SAMPLE_RATE = 16_000
HOP = 160  # samples per mel frame; the encoder's second convolution halves the frame rate (50 frames/s)
N_FFT = 400
MAX_SAMPLES = 30 * SAMPLE_RATE  # the positional table covers 1500 encoder frames


class WhisperInputError(VocalprobeError):
    """A waveform the Whisper encoder cannot take in one pass."""


def dft_basis() -> torch.Tensor:
    """The windowed real DFT as convolution kernels ``[2 * (N_FFT // 2 + 1), 1, N_FFT]`` (cosines, then sines):
    periodic Hann, computed in float64, stored float32."""
    freqs = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)[:, None]
    angle = 2 * torch.pi * freqs * torch.arange(N_FFT, dtype=torch.float64)[None] / N_FFT
    window = torch.hann_window(N_FFT, periodic=True, dtype=torch.float64)
    return (torch.cat([torch.cos(angle), torch.sin(angle)]) * window).float()[:, None, :]


class WhisperLayers(nn.Module):
    def __init__(self, model: nn.Module, max_layer: int | None = None):
        """``max_layer``: the last block kept (default all); the final LayerNorm belongs to the last block only."""
        super().__init__()
        from transformers import WhisperFeatureExtractor

        encoder = getattr(model, "encoder", model)
        total = len(encoder.layers)
        max_layer = total if max_layer is None else int(max_layer)
        self.conv1, self.conv2 = encoder.conv1, encoder.conv2
        self.positions = encoder.embed_positions
        self.blocks = nn.ModuleList(list(encoder.layers)[:max_layer])
        self.final_norm = encoder.layer_norm if max_layer == total and total > 0 else None
        mels = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins).mel_filters  # (freqs, mels)
        self.register_buffer("mel_filters", torch.from_numpy(np.asarray(mels, dtype=np.float32)), persistent=False)
        # the STFT as a Conv1d: torch.stft exports to ONNX's STFT op, whose onnxruntime kernel is ~100x less precise
        # in the log-mel (docs/whisper.md); a Conv1d is float32-exact in both
        self.register_buffer("dft", dft_basis(), persistent=False)

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """``[batch, samples]`` 16 kHz -> ``[batch, mels, samples // 160]``."""
        padded = nn.functional.pad(waveform.float()[:, None], (N_FFT // 2, N_FFT // 2), mode="reflect")
        spectrum = nn.functional.conv1d(padded, self.dft, stride=HOP)  # (b, 2 * freqs, frames + 1)
        real, imag = spectrum.split(N_FFT // 2 + 1, dim=1)
        power = real.square() + imag.square()  # (b, freqs, frames + 1)
        mel = (self.mel_filters.T @ power[..., :-1]).clamp(min=1e-10).log10()
        mel = torch.maximum(mel, mel.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (mel + 4.0) / 4.0

    def hidden_states(self, waveform: torch.Tensor) -> list[torch.Tensor]:
        """``[batch, samples]`` (at most 30 s) -> layers 0..max_layer, each ``[batch, frames, d_model]``."""
        if waveform.shape[-1] > MAX_SAMPLES:
            raise WhisperInputError(f"a Whisper encoder takes at most {MAX_SAMPLES} samples (30 s) at once, got "
                                         f"{waveform.shape[-1]}; cut longer clips into chunks")
        x = nn.functional.gelu(self.conv1(self.log_mel(waveform)))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)  # (b, frames, d_model)
        x = x + self.positions.weight[: x.shape[1]]
        states = [x]
        for block in self.blocks:
            out = block(x, attention_mask=None)
            x = out[0] if isinstance(out, tuple) else out
            states.append(x)
        if self.final_norm is not None:
            states[-1] = self.final_norm(x)
        return states
