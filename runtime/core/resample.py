"""Resampling to the models' 16 kHz with soxr (high quality), for whole clips and for streams of blocks.

Both paths use the same soxr filter, so a stream of blocks gives the whole-clip result up to float rounding
(``tests/test_resample.py`` shows it), whatever the block size.
"""

from __future__ import annotations

import numpy as np
import soxr

MODEL_SAMPLE_RATE = 16_000
QUALITY = "HQ"


def resample(samples: np.ndarray, sample_rate: int, target_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Resample a whole mono clip; returns float32. A clip already at ``target_rate`` is returned as is."""
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate == target_rate:
        return samples
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    return soxr.resample(samples, sample_rate, target_rate, quality=QUALITY).astype(np.float32, copy=False)


class StreamResampler:
    """Resample a stream block by block with bounded memory; call ``flush()`` once at the end of the stream."""

    def __init__(self, sample_rate: int, target_rate: int = MODEL_SAMPLE_RATE):
        self.sample_rate = sample_rate
        self.target_rate = target_rate
        self._stream = (None if sample_rate == target_rate
                        else soxr.ResampleStream(sample_rate, target_rate, 1, dtype="float32", quality=QUALITY))

    def process(self, block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if self._stream is None:
            return block
        return self._stream.resample_chunk(block, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
