"""`vocalprobe bench`: can this device keep up in real time? Speed, per-window latency and peak memory of exported
graphs on synthetic audio, and the overhead the streaming pipeline (reading, resampling, windowing, writing) adds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from vocalprobe.runtime.core.audio import seconds_to_samples
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.engine.sources import FileSource
from vocalprobe.runtime.field.stream import DetectConfig, run_sources
from vocalprobe.runtime.engine.windows import WindowPlan


def synthetic_audio(seconds: float, sample_rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """Noise with frequency sweeps: content the graph must really compute on (not silence)."""
    rng = np.random.default_rng(seed)
    n = seconds_to_samples(seconds, sample_rate)
    t = np.arange(n) / sample_rate
    sweep = np.sin(2 * np.pi * (500 + 3000 * (t % 2.0)) * t)
    return (0.1 * rng.standard_normal(n) + 0.3 * sweep).astype(np.float32)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (None where the platform cannot tell)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class TimedModel:
    """Wraps a model and adds up the seconds spent in ``predict``."""

    def __init__(self, model):
        self.model = model
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        out = self.model.predict(batch)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return out


@dataclass(frozen=True)
class ModelBench:
    name: str
    window_s: float
    batch: int
    audio_seconds: float
    wall_seconds: float
    latency_ms_median: float  # one window, batch 1
    latency_ms_p95: float
    peak_rss_mb: float | None

    @property
    def x_realtime(self) -> float:
        return self.audio_seconds / self.wall_seconds


def bench_model(model, *, window_s: float, batch: int = 8, seconds: float = 60.0,
                latency_runs: int = 20) -> ModelBench:
    """The graph alone: ``seconds`` of audio cut into windows, ``batch`` at a time (after one warm-up batch)."""
    sr = model.sample_rate
    window = seconds_to_samples(window_s, sr)
    n_windows = max(1, int(seconds // window_s))
    audio = synthetic_audio(n_windows * window_s + window_s, sr)
    windows = np.stack([audio[i * window:(i + 1) * window] for i in range(n_windows)])
    model.predict(windows[:batch])  # warm-up: onnxruntime plans the shape on the first run
    started = time.perf_counter()
    for i in range(0, n_windows, batch):
        model.predict(windows[i:i + batch])
    wall = time.perf_counter() - started
    latencies = []
    for i in range(min(latency_runs, n_windows)):
        t0 = time.perf_counter()
        model.predict(windows[i:i + 1])
        latencies.append((time.perf_counter() - t0) * 1000)
    return ModelBench(model.name, window_s, batch, n_windows * window_s, wall, float(np.median(latencies)),
                      float(np.percentile(latencies, 95)), peak_rss_mb())


@dataclass(frozen=True)
class StreamBench:
    name: str
    audio_seconds: float
    wall_seconds: float  # the whole pipeline: read, resample, window, model, detections, writers
    model_seconds: float  # time inside the model's predict

    @property
    def x_realtime(self) -> float:
        return self.audio_seconds / self.wall_seconds

    @property
    def model_x_realtime(self) -> float:
        """The model's own speed inside the pipeline (``overhead`` is ``model_x_realtime / x_realtime - 1``)."""
        return self.audio_seconds / self.model_seconds

    @property
    def overhead(self) -> float:
        """Pipeline time outside the model, as a fraction of the model time."""
        return (self.wall_seconds - self.model_seconds) / self.model_seconds


def stream_files(model, paths, *, window_s: float, batch: int = 8, work_dir: str | Path | None = None,
                 warm_up: bool = True) -> StreamBench:
    """Stream the audio files ``paths`` through ``run_sources`` (as `vocalprobe stream` does), writing Raven, CSV
    and JSONL into a temporary folder; the wall time covers reading, resampling, windows, model and writers."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        timed = TimedModel(model)
        config = DetectConfig(WindowPlan.from_seconds(window_s, None, model.sample_rate), batch=batch, min_conf=0.5)
        if warm_up:  # onnxruntime plans the shape on the first run; not timed
            timed.predict(np.zeros((batch, config.plan.window), dtype=np.float32))
            timed.seconds = 0.0
        outputs = Outputs(Path(tmp) / "out", ("raven", "csv", "jsonl"), model.sample_rate / 2)
        summary = run_sources([FileSource(Path(p), Path(p).name) for p in paths], timed, config, outputs)
        return StreamBench(model.name, summary.audio_seconds, summary.wall_seconds, timed.seconds)


def bench_stream(model, *, window_s: float, batch: int = 8, seconds: float = 60.0, file_rate: int = 48_000,
                 work_dir: str | Path | None = None) -> StreamBench:
    """Stream a synthetic ``file_rate`` 16-bit WAV (written before the clock starts) through ``run_sources``."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = Path(tmp) / "20240101_000000.WAV"
        sf.write(path, synthetic_audio(seconds, file_rate, seed=1), file_rate, subtype="PCM_16")
        return stream_files(model, [path], window_s=window_s, batch=batch, work_dir=tmp)
