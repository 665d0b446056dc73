"""Resampling (whole clip vs stream of blocks) and the paper's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from vocalprobe.runtime.core.preprocess import MIN_SAMPLES, peak_normalize, preprocess, repeat_pad
from vocalprobe.runtime.core.resample import StreamResampler, resample


@pytest.mark.parametrize("sr", [22_050, 44_100, 48_000, 96_000, 8_000])
@pytest.mark.parametrize("block", [1000, 4096, 44_100])
def test_stream_resampling_matches_whole_clip(sr, block):
    x = np.random.default_rng(sr).uniform(-1, 1, 3 * sr).astype(np.float32)
    whole = resample(x, sr)
    stream = StreamResampler(sr)
    parts = [stream.process(x[i:i + block]) for i in range(0, len(x), block)] + [stream.flush()]
    streamed = np.concatenate(parts)
    assert len(streamed) == len(whole)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_resample_identity_and_length():
    x = np.ones(16_000, np.float32)
    assert resample(x, 16_000) is x
    assert len(resample(np.zeros(44_100, np.float32), 44_100)) == 16_000


def test_peak_normalize_and_silence():
    x = np.array([0.1, -0.5, 0.25], np.float32)
    np.testing.assert_allclose(peak_normalize(x), [0.2, -1.0, 0.5])
    silent = peak_normalize(np.zeros(100, np.float32))
    assert np.all(silent == 0) and not np.isnan(silent).any()


def test_repeat_pad_tiles_not_zeros():
    x = np.arange(1, 1201, dtype=np.float32)
    y = repeat_pad(x)
    assert len(y) == MIN_SAMPLES
    np.testing.assert_array_equal(y[:1200], x)
    np.testing.assert_array_equal(y[1200:2400], x)
    assert y[-1] == x[(MIN_SAMPLES - 1) % 1200]
    long = np.ones(6000, np.float32)
    assert repeat_pad(long) is long
    with pytest.raises(ValueError):
        repeat_pad(np.zeros(0, np.float32))


def test_preprocess_is_normalise_then_pad():
    x = np.array([0.0, 0.5, -0.25], np.float32)
    y = preprocess(x)
    assert len(y) == MIN_SAMPLES and y.max() == 1.0 and y.min() == -0.5
