"""Call-like test signals shared by the export and quantization tests (not a test module)."""

from __future__ import annotations

import numpy as np

SR = 16_000


def tone_clip(seconds: float, seed: int, *, envelope: bool = True) -> np.ndarray:
    """A frequency-modulated tone with a harmonic and noise at 16 kHz; ``envelope`` fades it in and out."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * SR)))
    t = np.arange(n) / SR
    f0 = rng.uniform(300, 3000)
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(1, 8) * t))) / SR
    x = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.05 * rng.standard_normal(n)
    gain = rng.uniform(0.1, 0.9)
    shape = np.hanning(n + 2)[1:-1] ** 0.3 if envelope else 1.0
    return (gain * x * shape).astype(np.float32)
