"""The streaming core: blocks of audio -> fixed-length windows -> batched model -> detections -> events.

Memory is bounded by ``window + block`` samples for the window buffer plus ``batch x window`` for the model input,
whatever the length of the recording. ``run_sources`` drives many sources with resume (through the folder's journal,
``run_state.py``), outputs and error listing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError
from vocalprobe.runtime.field.events import Detection, EventMerger, window_hits
from vocalprobe.runtime.field.out_lock import OutputLock
from vocalprobe.runtime.field.run_state import DONE, JSONL_OUTPUT, Fingerprint, RunState
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


def run_fingerprint(model: Model) -> dict:
    """What changes the numbers of a run besides the window plan: the graphs, fusion weights, rate and resampler."""
    from vocalprobe.runtime.core.digests import file_sha256
    from vocalprobe.runtime.core.resample import QUALITY

    members = getattr(model, "members", [model])
    return {"models": [file_sha256(m.path) for m in members],
            "weights": [float(w) for w in getattr(model, "weights", [1.0])],
            "sample_rate": model.sample_rate, "resampler": f"soxr {QUALITY}"}


def run_settings(model: Model, config: DetectConfig) -> dict:
    """The run's fingerprint (a resumed run must match it): not batch, threads or provider, nor output options."""
    return {**run_fingerprint(model), "window": config.plan.window, "hop": config.plan.hop,
            "final_window": config.plan.final_window}


def output_options(config: DetectConfig, formats: Sequence[str]) -> dict:
    """What shapes the outputs but not the numbers: may change between runs into one folder."""
    return {"min_conf": config.min_conf, "top_k": config.top_k, "merge": config.merge, "formats": list(formats),
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
    failed: list[tuple[str, str]] = field(default_factory=list)  # in this run
    failed_all: list[tuple[str, str]] = field(default_factory=list)  # this run and earlier ones (errors.csv)
    detections: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


class Outputs:
    """Where one run writes: per-file tables mirroring the input tree, a JSONL, errors.csv, detections.csv.

    The folder is locked (``OutputLock``) from ``open`` (or ``with outputs:``) to ``close``: one run at a time.
    """

    def __init__(self, out_dir: str | Path, formats: Sequence[str], high_freq_hz: float):
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.high_freq_hz = high_freq_hz
        self.lock = OutputLock(self.out_dir)
        self._locked_by_open = False
        self.jsonl: JsonlWriter | None = None

    def __enter__(self) -> "Outputs":
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        self.lock.release()

    def open(self, jsonl_committed: int | None = None) -> None:
        """Lock the folder (unless ``with outputs:`` holds it) and open the JSONL; ``jsonl_committed``: the size
        the journal vouches for."""
        if not self.lock.held:
            self.lock.acquire()
            self._locked_by_open = True
        if "jsonl" in self.formats and self.jsonl is None:
            self.jsonl = JsonlWriter(self.out_dir / JSONL_OUTPUT, jsonl_committed)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self._locked_by_open:
            self.lock.release()
            self._locked_by_open = False

    def table_path(self, name: str, suffix: str) -> Path:
        rel = Path(name)
        return self.out_dir / rel.parent / (rel.stem + suffix)

    def begin(self) -> None:
        """A recording starts: its JSONL rows are held until ``commit``."""
        if self.jsonl is not None:
            self.jsonl.begin()

    def event(self, detection: Detection) -> None:
        if self.jsonl is not None:
            self.jsonl.write(detection, parse_recorder_timestamp(detection.file))

    def commit(self, retract: str | None = None) -> int | None:
        """Append the recording's held rows; the committed JSONL size (None without a JSONL)."""
        return self.jsonl.commit(retract) if self.jsonl is not None else None

    def discard(self) -> None:
        if self.jsonl is not None:
            self.jsonl.discard()

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
        if self.jsonl is not None:
            written.append(JSONL_OUTPUT)
        return written

    def remove(self, written: Sequence[str]) -> None:
        """Delete the tables an earlier analysis of a file wrote (the file has failed since)."""
        for rel in written:
            if rel != JSONL_OUTPUT:
                (self.out_dir / rel).unlink(missing_ok=True)

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


class Source(Protocol):
    name: str

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]: ...


def run_sources(sources: Iterable[Source], model: Model, config: DetectConfig, outputs: Outputs,
                state: RunState | None = None, *, progress: Progress | None = None,
                log: Callable[[str], None] | None = None) -> RunSummary:
    """Stream every source given, writing its outputs once it is finished; unreadable sources are listed and skipped.

    With ``state`` (the folder's journal) each file's outcome is recorded, so pass ``state.todo(sources)`` to leave
    out what an earlier run finished. A file's rows reach the JSONL exactly once: held until the file is finished,
    dropped if it fails, and preceded by a retraction when an earlier version of the file had rows.
    """
    summary = RunSummary()
    started = time.perf_counter()
    outputs.open(state.jsonl_committed if state is not None else None)
    try:
        for source in sources:
            path = getattr(source, "path", None)
            journalled = state is not None and path is not None
            before = state.lookup(path) if journalled else None
            fingerprint = None
            if journalled:
                try:
                    fingerprint = Fingerprint.of(path)  # the version analysed: a later change is analysed again
                except FileNotFoundError:
                    fingerprint = None
            retract = source.name if before is not None and before.wrote_jsonl else None
            if path is not None:
                outputs.begin()
            try:
                result = detect_stream(source.blocks(model.sample_rate), source.name, model, config,
                                       on_event=outputs.event,
                                       on_audio=progress.audio if progress is not None else None)
            except AudioError as exc:
                outputs.discard()
                summary.failed.append((source.name, exc.problem))
                if journalled:
                    jsonl_end = outputs.commit(retract) if retract is not None else None
                    if before is not None and before.status == DONE:
                        outputs.remove(before.outputs)
                    state.mark_failed(path, source.name, exc.problem, fingerprint=fingerprint, jsonl_end=jsonl_end)
                if log is not None:
                    log(f"skipped {source.name}: {exc.problem}")
                continue
            written = outputs.write_tables(result)
            if retract is not None and outputs.jsonl is None:
                written.append(JSONL_OUTPUT)  # its earlier rows are still there, to retract when a JSONL is written
            jsonl_end = outputs.commit(retract) if path is not None else None
            if journalled:
                state.mark_done(path, source.name, len(result.detections), written, fingerprint=fingerprint,
                                jsonl_end=jsonl_end)
            summary.done.append(source.name)
            summary.detections += len(result.detections)
            summary.audio_seconds += result.audio_seconds
            if progress is not None:
                progress.file_done()
        summary.wall_seconds = time.perf_counter() - started
        summary.failed_all = state.failures() if state is not None else list(summary.failed)
        if summary.failed_all:
            outputs.write_errors(summary.failed_all)
        elif (outputs.out_dir / "errors.csv").exists():
            (outputs.out_dir / "errors.csv").unlink()
        if state is not None:
            tables = state.outputs_ending(CSV_SUFFIX)
        else:
            tables = [str(outputs.table_path(n, CSV_SUFFIX).relative_to(outputs.out_dir)) for n in summary.done]
        outputs.combine(sorted(tables))
    finally:
        outputs.close()
        if not summary.wall_seconds:
            summary.wall_seconds = time.perf_counter() - started
    return summary
