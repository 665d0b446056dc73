"""The one place windows become model batches, and a batch becomes predictions.

``window_batches`` cuts a stream of model-rate blocks into ``batch`` full windows at a time, and a shorter final
window (policy ``shorter``) alone, after the full ones. Every engine (this process, the worker pool, Ray) batches
through it, so every window meets the model with the same batch-mates, and equal batches give equal predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from vocalprobe.runtime.engine.windows import Window, Windower, WindowPlan, WindowSpecError

#: What ``predict`` can be asked for: each window's class probabilities, and with them its embedding.
PROBABILITIES = ("probabilities",)
WITH_EMBEDDING = ("probabilities", "embedding")


class Model(Protocol):
    """``OnnxModel`` (one graph: ``members == [itself]``, ``weights == [1.0]``) or ``Ensemble`` (``info`` None)."""

    classes: tuple[str, ...]
    sample_rate: int
    max_chunk_samples: int | None
    members: list
    weights: np.ndarray
    name: str

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    """A batch of consecutive windows of one recording and what the model said of each."""

    windows: list[Window]
    probabilities: np.ndarray  # [windows, classes]
    embeddings: np.ndarray | None = None  # [windows, dim], when asked for

    def __len__(self) -> int:
        return len(self.windows)


def check_fits(model: Model, plan: WindowPlan, batch: int) -> None:
    """Refuse a batch size or window the graph cannot take, before anything is read."""
    if batch < 1:
        raise WindowSpecError(f"--batch must be >= 1, got {batch}")
    if model.max_chunk_samples is not None and plan.window > model.max_chunk_samples:
        raise WindowSpecError(f"a window of {plan.window} samples is longer than this graph accepts "
                              f"(max_chunk_samples = {model.max_chunk_samples}); use a shorter --window")


def window_batches(blocks: Iterable[np.ndarray], plan: WindowPlan, batch: int, *,
                   finish: bool = True) -> Iterator[tuple[list[Window], np.ndarray]]:
    """``(windows, samples [n, window])`` of the stream, in order. ``finish=False``: no final incomplete window (a
    chunk of a recording that does not reach its end)."""
    windower = Windower(plan)
    pending: list[tuple[Window, np.ndarray]] = []

    def flush() -> tuple[list[Window], np.ndarray]:
        out = ([w for w, _ in pending], np.stack([s for _, s in pending]))
        pending.clear()
        return out

    for block in blocks:
        for win, samples in windower.push(block):
            pending.append((win, samples))
            if len(pending) == batch:
                yield flush()
    for win, samples in (windower.finish() if finish else ()):
        if len(samples) == plan.window:
            pending.append((win, samples))
        else:  # policy "shorter": its own batch, after the full windows
            if pending:
                yield flush()
            yield [win], samples[None, :]
    if pending:
        yield flush()


def run_model(model, samples: np.ndarray, outputs: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities, embeddings or None) of one batch, from one session run."""
    if "embedding" in outputs:
        return model.predict_with_embedding(samples)
    return model.predict(samples), None


class AudioClock:
    """Seconds of audio that went through ``count`` (and, per block, to ``on_audio``: a progress bar)."""

    def __init__(self, sample_rate: int, on_audio: Callable[[float], None] | None = None):
        self.sample_rate, self.on_audio, self.seconds = sample_rate, on_audio, 0.0

    def add(self, samples: int) -> None:
        seconds = samples / self.sample_rate
        self.seconds += seconds
        if self.on_audio is not None:
            self.on_audio(seconds)

    def count(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            self.add(len(block))
            yield block


def window_probabilities(blocks: Iterable[np.ndarray], model: Model, plan: WindowPlan,
                         batch: int = 8) -> Iterator[tuple[Window, np.ndarray]]:
    """``(window, probabilities [classes])`` of every window of one stream, in this process."""
    check_fits(model, plan, batch)
    for windows, samples in window_batches(blocks, plan, batch):
        yield from zip(windows, model.predict(samples))


def window_embeddings(blocks: Iterable[np.ndarray], model, plan: WindowPlan,
                      batch: int = 8) -> Iterator[tuple[Window, np.ndarray]]:
    """``(window, embedding)`` of every window of one stream, in this process (the windows and batches of
    ``stream``, so a query is embedded exactly as the archive was)."""
    check_fits(model, plan, batch)
    for windows, samples in window_batches(blocks, plan, batch):
        yield from zip(windows, model.predict_with_embedding(samples)[1])
