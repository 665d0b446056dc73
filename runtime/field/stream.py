"""The streaming core: blocks of audio -> fixed-length windows -> batched model -> detections -> events.

Memory is bounded by ``window + block`` samples for the window buffer plus ``batch x window`` for the model input,
whatever the length of the recording. ``run_stream`` drives many sources with resume, outputs and error listing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError
from vocalprobe.runtime.field.events import Detection, EventMerger, window_hits
from vocalprobe.runtime.field.windows import Window, WindowPlan, WindowSpecError, Windower
from vocalprobe.runtime.field.writers import (
    CSV_SUFFIX,
    RAVEN_SUFFIX,
    JsonlWriter,
    combine_csv,
    parse_recorder_timestamp,
    write_csv,
    write_errors,
    write_raven,
)


class Model(Protocol):
    classes: tuple[str, ...]
    sample_rate: int
    max_chunk_samples: int | None

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


def window_probabilities(blocks: Iterable[np.ndarray], model: Model, plan: WindowPlan,
                         batch: int = 8) -> Iterator[tuple[Window, np.ndarray]]:
    """Probabilities ``[classes]`` of every window of the stream, in order, running ``batch`` windows at a time."""
    if batch < 1:
        raise WindowSpecError(f"--batch must be >= 1, got {batch}")
    if model.max_chunk_samples is not None and plan.window > model.max_chunk_samples:
        raise WindowSpecError(f"a window of {plan.window} samples is longer than this graph accepts "
                              f"(max_chunk_samples = {model.max_chunk_samples}); use a shorter --window")
    windower = Windower(plan)
    inputs = np.empty((batch, plan.window), dtype=np.float32)
    pending: list[Window] = []

    def run() -> Iterator[tuple[Window, np.ndarray]]:
        probs = model.predict(inputs[:len(pending)])
        yield from zip(list(pending), probs)
        pending.clear()

    for block in blocks:
        for win, samples in windower.push(block):
            inputs[len(pending)] = samples
            pending.append(win)
            if len(pending) == batch:
                yield from run()
    for win, samples in windower.finish():
        if len(samples) == plan.window:
            inputs[len(pending)] = samples
            pending.append(win)
        else:  # policy "shorter": its own batch, after the full windows
            if pending:
                yield from run()
            yield win, model.predict(samples[None, :])[0]
    if pending:
        yield from run()


@dataclass(frozen=True)
class DetectConfig:
    plan: WindowPlan
    batch: int = 8
    min_conf: float = 0.5
    top_k: int | None = None
    merge: bool = False
    ignore: frozenset[str] = frozenset()  # classes never reported, e.g. "background"

    def __post_init__(self):
        if not 0.0 <= self.min_conf <= 1.0:
            raise WindowSpecError(f"--min-conf must be within 0..1, got {self.min_conf}")
        if self.top_k is not None and self.top_k < 1:
            raise WindowSpecError(f"--top-k must be >= 1, got {self.top_k}")


def output_settings(model: Model, config: DetectConfig, formats: Sequence[str]) -> dict:
    """Everything that shapes a run's outputs (not batch, threads or provider): what a resumed run must match."""
    from vocalprobe.runtime.core.digests import file_sha256

    members = getattr(model, "members", [model])
    return {"models": [file_sha256(m.path) for m in members],
            "weights": [float(w) for w in getattr(model, "weights", [1.0])],
            "window": config.plan.window, "hop": config.plan.hop, "final_window": config.plan.final_window,
            "min_conf": config.min_conf, "top_k": config.top_k, "merge": config.merge, "formats": list(formats),
            "ignore": sorted(config.ignore)}


@dataclass
class SourceResult:
    name: str
    detections: list[Detection]
    n_windows: int
    audio_seconds: float


def detect_stream(blocks: Iterable[np.ndarray], name: str, model: Model, config: DetectConfig, *,
                  on_event: Callable[[Detection], None] | None = None,
                  on_audio: Callable[[float], None] | None = None) -> SourceResult:
    """Run one stream of model-rate blocks; ``on_event`` sees each event once final, ``on_audio`` each block's seconds."""
    merger = EventMerger(name, model.sample_rate, config.merge)
    detections: list[Detection] = []
    seconds = 0.0

    def counted() -> Iterator[np.ndarray]:
        nonlocal seconds
        for block in blocks:
            seconds += len(block) / model.sample_rate
            if on_audio is not None:
                on_audio(len(block) / model.sample_rate)
            yield block

    def emit(events: list[Detection]) -> None:
        detections.extend(events)
        if on_event is not None:
            for event in events:
                on_event(event)

    n_windows = 0
    for window, probs in window_probabilities(counted(), model, config.plan, config.batch):
        n_windows += 1
        emit(merger.push(window, window_hits(probs, model.classes, config.min_conf, config.top_k, config.ignore)))
    emit(merger.finish())
    detections.sort(key=lambda d: (d.start_s, d.label))
    return SourceResult(name, detections, n_windows, seconds)


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done by an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # in this run
    failed_all: list[tuple[str, str]] = field(default_factory=list)  # this run and earlier ones (errors.csv)
    detections: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


class Outputs:
    """Where one run writes: per-file tables mirroring the input tree, a live JSONL, errors.csv, detections.csv."""

    def __init__(self, out_dir: str | Path, formats: Sequence[str], high_freq_hz: float):
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.high_freq_hz = high_freq_hz
        self.jsonl: JsonlWriter | None = None

    def open(self, finished_names: set[str] | None) -> None:
        """``finished_names``: files whose live events are kept (None: keep everything, append)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if "jsonl" in self.formats:
            self.jsonl = JsonlWriter(self.out_dir / "detections.jsonl", finished_names)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()

    def table_path(self, name: str, suffix: str) -> Path:
        rel = Path(name)
        return self.out_dir / rel.parent / (rel.stem + suffix)

    def event(self, detection: Detection) -> None:
        if self.jsonl is not None:
            self.jsonl.write(detection, parse_recorder_timestamp(detection.file))

    def write_tables(self, result: SourceResult) -> list[str]:
        written = []
        if "raven" in self.formats:
            path = self.table_path(result.name, RAVEN_SUFFIX)
            write_raven(result.detections, path, begin_file=Path(result.name).name, high_freq_hz=self.high_freq_hz)
            written.append(str(path.relative_to(self.out_dir)))
        if "csv" in self.formats:
            path = self.table_path(result.name, CSV_SUFFIX)
            write_csv(result.detections, path, recording_start=parse_recorder_timestamp(result.name))
            written.append(str(path.relative_to(self.out_dir)))
        return written

    def write_errors(self, failed: Sequence[tuple[str, str]]) -> Path:
        path = self.out_dir / "errors.csv"
        write_errors(failed, path)
        return path

    def combine(self, csv_tables: Sequence[str]) -> Path | None:
        if "csv" not in self.formats:
            return None
        path = self.out_dir / "detections.csv"
        combine_csv([self.out_dir / t for t in csv_tables], path)
        return path


class Progress(Protocol):
    def audio(self, seconds: float) -> None: ...

    def file_done(self) -> None: ...


def run_sources(sources: Iterable, model: Model, config: DetectConfig, outputs: Outputs, state=None, *,
                progress: Progress | None = None, log: Callable[[str], None] | None = None) -> RunSummary:
    """Stream every source, writing its tables when it is done; unreadable sources are listed and skipped.

    ``state`` (a ``RunState``) makes the run resumable: sources it records as done are skipped.
    """
    summary = RunSummary()
    started = time.perf_counter()
    outputs.open(state.done_names() if state is not None else None)
    try:
        for source in sources:
            path = getattr(source, "path", None)
            if state is not None and path is not None and state.is_done(path):
                summary.skipped.append(source.name)
                continue
            try:
                result = detect_stream(source.blocks(model.sample_rate), source.name, model, config,
                                       on_event=outputs.event,
                                       on_audio=progress.audio if progress is not None else None)
            except AudioError as exc:
                summary.failed.append((source.name, exc.problem))
                if state is not None and path is not None:
                    state.mark_failed(path, source.name, exc.problem)
                if log is not None:
                    log(f"skipped {source.name}: {exc.problem}")
                continue
            written = outputs.write_tables(result)
            if state is not None and path is not None:
                state.mark_done(path, source.name, len(result.detections), written)
            summary.done.append(source.name)
            summary.detections += len(result.detections)
            summary.audio_seconds += result.audio_seconds
            if progress is not None:
                progress.file_done()
    finally:
        outputs.close()
        summary.wall_seconds = time.perf_counter() - started
    summary.failed_all = ([(r["name"], r["problem"]) for r in state.failed.values()] if state is not None
                          else list(summary.failed))
    if summary.failed_all:
        outputs.write_errors(summary.failed_all)
    elif (outputs.out_dir / "errors.csv").exists():
        (outputs.out_dir / "errors.csv").unlink()
    if state is not None:
        tables = [t for r in state.done.values() for t in r["outputs"] if t.endswith(CSV_SUFFIX)]
    else:
        tables = [str(outputs.table_path(n, CSV_SUFFIX).relative_to(outputs.out_dir)) for n in summary.done]
    outputs.combine(sorted(tables))
    return summary
