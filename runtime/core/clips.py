"""Loading a manifest row as the models see it: mono float32 at 16 kHz (not yet peak-normalised or padded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vocalprobe.runtime.core.audio import read_audio
from vocalprobe.runtime.core.manifest import Manifest, ManifestRow
from vocalprobe.runtime.core.resample import MODEL_SAMPLE_RATE, resample


def load_clip(path: str | Path, start: float | None = None, end: float | None = None,
              target_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    samples, sample_rate = read_audio(path, start, end)
    return resample(samples, sample_rate, target_rate)


def load_row(manifest: Manifest, row: ManifestRow, target_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    return load_clip(manifest.audio_path(row), row.start, row.end, target_rate)
