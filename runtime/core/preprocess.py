"""The paper's clip preprocessing, in numpy: peak normalisation and repeat padding of short clips.

The torch module that is trained and exported does the same inside the graph
(``vocalprobe.training.features``); the tests hold the two equal.
"""

from __future__ import annotations

import numpy as np

#: Clips shorter than this many 16 kHz samples (312.5 ms) are tiled up to it, as the paper's code does.
MIN_SAMPLES = 5_000


def peak_normalize(samples: np.ndarray) -> np.ndarray:
    """Divide by the peak absolute amplitude; an all-zero (silent) clip stays all zeros, never NaN."""
    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return samples / peak if peak > 0 else samples.copy()


def repeat_pad(samples: np.ndarray, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Tile a clip shorter than ``min_samples`` (repeat the waveform, not zeros) and cut it at ``min_samples``."""
    samples = np.asarray(samples, dtype=np.float32)
    n = samples.shape[-1]
    if n == 0:
        raise ValueError("cannot pad an empty clip")
    if n >= min_samples:
        return samples
    reps = -(-min_samples // n)
    return np.tile(samples, reps)[:min_samples]


def preprocess(samples: np.ndarray, min_samples: int = MIN_SAMPLES) -> np.ndarray:
    """Peak-normalise then repeat-pad: what every 16 kHz clip goes through before the backbone."""
    return repeat_pad(peak_normalize(samples), min_samples)
