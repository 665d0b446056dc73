"""The producer: ``predict`` walks the sources in order and yields one ``Recording`` per source, whose
``predictions()`` are the lazy batches of its windows with their probabilities (and embeddings), or raise the
``AudioError`` that made it unreadable. ``stream`` and ``embed`` consume it; where the model runs (this process, a
worker pool, Ray) is the ``Scale``'s business and changes no number: every engine batches through
``batches.window_batches``.

A consumer may leave a recording's predictions unread (``embed`` skips a recording the archive holds): the engine
drops them when the next recording is asked for. Close the iterator (``contextlib.closing``) to stop the workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from vocalprobe.runtime.engine.batches import (
    PROBABILITIES,
    AudioClock,
    Model,
    Prediction,
    check_fits,
    run_model,
    window_batches,
)
from vocalprobe.runtime.engine.onnx_model import ModelError
from vocalprobe.runtime.engine.scale import ONE_PROCESS, ModelSpec, Scale, ScaleError
from vocalprobe.runtime.engine.windows import WindowPlan


class Source(Protocol):
    """What the engine reads: ``FileSource`` (``path`` set) or ``StdinSource`` (``glitches``: its NaN stretches)."""

    name: str
    path: Path | None
    glitches: list[tuple[float, float]] | None
    partial: bool  # a truncated WAV is read for the part it holds (the run notes it)

    def source_rate(self) -> int: ...

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]: ...


class Recording(Protocol):
    """One source's part of a run: ``predictions`` once, then ``audio_seconds`` of audio it held."""

    source: Source
    audio_seconds: float

    def predictions(self, on_audio: Callable[[float], None] | None = None) -> Iterator[Prediction]: ...


class LocalRecording:
    """A recording predicted in this process as its blocks are read: memory is window x batch, whatever its
    length."""

    def __init__(self, source: Source, model: Model, plan: WindowPlan, batch: int, outputs: tuple[str, ...]):
        self.source, self.model, self.plan, self.batch, self.outputs = source, model, plan, batch, outputs
        self._clock = AudioClock(model.sample_rate)

    @property
    def audio_seconds(self) -> float:
        return self._clock.seconds

    def predictions(self, on_audio: Callable[[float], None] | None = None) -> Iterator[Prediction]:
        self._clock.on_audio = on_audio
        blocks = self._clock.count(self.source.blocks(self.model.sample_rate))
        for windows, samples in window_batches(blocks, self.plan, self.batch):
            yield Prediction(windows, *run_model(self.model, samples, self.outputs))


def check_outputs(model, outputs: tuple[str, ...]) -> None:
    unknown = set(outputs) - {"probabilities", "embedding"}
    if unknown or "probabilities" not in outputs:
        raise ValueError(f"outputs must be ('probabilities',) or ('probabilities', 'embedding'), got {outputs}")
    if "embedding" in outputs:
        if model.info is None or model.info.embedding_outputs_key is None:  # an Ensemble's info is None
            raise ModelError(f"{model.name}: the graph has no embedding output (no embedding_outputs_key)")


def predict(sources: Iterable[Source], model: Model, plan: WindowPlan, batch: int, scale: Scale = ONE_PROCESS,
            outputs: tuple[str, ...] = PROBABILITIES, *, spec: ModelSpec | None = None,
            log: Callable[[str], None] | None = None) -> Iterator[Recording]:
    """One ``Recording`` per source, in order. ``model``: the loaded model (this process predicts with it, or reads
    its classes and rate); ``spec``: how workers and Ray actors load the same one (needed unless one process)."""
    check_fits(model, plan, batch)
    check_outputs(model, outputs)
    if not scale.one_process and spec is None:
        raise ScaleError("internal: --workers and --engine ray need the model's ModelSpec")
    if scale.engine == "ray":
        from vocalprobe.runtime.engine.ray_engine import predict_with_ray

        yield from predict_with_ray(list(sources), model, plan, batch, outputs, spec, scale, log=log)
    elif scale.workers > 1:
        from vocalprobe.runtime.engine.pool import predict_with_workers

        yield from predict_with_workers(list(sources), model, plan, batch, outputs, spec, scale.workers, log=log)
    else:
        for source in sources:
            yield LocalRecording(source, model, plan, batch, outputs)
