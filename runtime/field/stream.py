"""The streaming core: blocks of audio -> fixed-length windows -> batched model -> detections -> events.

Memory is bounded by ``window + block`` samples for the window buffer plus ``batch x window`` for the model input,
whatever the length of the recording; detections are streamed into the tables as they are final, never collected.
``run_sources`` drives many sources with resume (the folder's journal, ``run_state.py``), the output folder
(``outputs.py``) and error listing.
"""

from __future__ import annotations

import csv
import heapq
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.field.events import Detection, EventMerger, window_hits
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.field.run_state import DONE, JSONL_OUTPUT, Fingerprint, RunState
from vocalprobe.runtime.engine.windows import Window, Windower, WindowPlan, WindowSpecError
from vocalprobe.runtime.core.detections.tables import OutputNameError

logger = logging.getLogger(__name__)


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
    min_conf: float = 0.5  # the threshold of every class not in ``thresholds``
    top_k: int | None = None
    merge: bool = False
    ignore: frozenset[str] = frozenset()  # classes never reported, e.g. "background"
    thresholds: tuple[tuple[str, float], ...] = ()  # per-class thresholds (--min-conf CLASSES.csv)

    def __post_init__(self):
        for name, value in (("--min-conf", self.min_conf), *((f"--min-conf {c}", t) for c, t in self.thresholds)):
            if not 0.0 <= value <= 1.0:
                raise WindowSpecError(f"{name} must be within 0..1, got {value}")
        if self.top_k is not None and self.top_k < 1:
            raise WindowSpecError(f"--top-k must be >= 1, got {self.top_k}")

    def class_thresholds(self, classes: Sequence[str]) -> float | np.ndarray:
        """What ``window_hits`` compares with: the one threshold, or one per class (in the model's order)."""
        if not self.thresholds:
            return self.min_conf
        table = dict(self.thresholds)
        unknown = sorted(set(table) - set(classes))
        if unknown:
            raise WindowSpecError(f"--min-conf: {', '.join(unknown)}: not a class of the model "
                                  f"(classes: {', '.join(classes)})")
        return np.array([table.get(c, self.min_conf) for c in classes], dtype=np.float64)


class ThresholdTableError(VocalprobeError):
    """A --min-conf table that cannot be read as ``class,threshold`` rows."""


def read_thresholds(value: str, default: float = 0.5) -> tuple[float, tuple[tuple[str, float], ...]]:
    """``--min-conf``: one number (every class), or a ``class,threshold`` CSV whose classes get their own threshold
    and the others ``default``. Returns (the threshold of unlisted classes, the per-class table)."""
    try:
        return float(value), ()
    except ValueError:
        pass
    path = Path(value)
    if not path.is_file():
        raise ThresholdTableError(f"--min-conf {value}: neither a number nor a class,threshold CSV file")
    table: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [c.strip().lower() for c in next(reader, [])]
        if header != ["class", "threshold"]:
            raise ThresholdTableError(f"{path}: the first line must be 'class,threshold', got {','.join(header)!r}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ThresholdTableError(f"{path} line {line}: expected class,threshold, got {len(row)} field(s)")
            name, text = row[0].strip(), row[1].strip()
            try:
                threshold = float(text)
            except ValueError:
                raise ThresholdTableError(f"{path} line {line}: threshold {text!r} is not a number") from None
            if name in table:
                raise ThresholdTableError(f"{path} line {line}: {name} is listed twice")
            table[name] = threshold
    if not table:
        raise ThresholdTableError(f"{path}: no class,threshold rows")
    return default, tuple(table.items())


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
    """What shapes the outputs but not the numbers (thresholds included): may change between runs into one folder."""
    options = {"min_conf": config.min_conf, "top_k": config.top_k, "merge": config.merge, "formats": list(formats),
               "ignore": sorted(config.ignore)}
    if config.thresholds:
        options["thresholds"] = dict(sorted(config.thresholds))
    return options


def analysis_params(model: Model, config: DetectConfig, formats: Sequence[str]) -> list[tuple[str, object]]:
    """The rows of ``analysis_params.csv``: what a reader of the tables needs to know about how they were made."""
    from vocalprobe import __version__

    rate = model.sample_rate
    fingerprint = run_fingerprint(model)
    rows: list[tuple[str, object]] = [("vocalprobe_version", __version__)]
    members = getattr(model, "members", [model])
    for i, (member, digest) in enumerate(zip(members, fingerprint["models"])):
        suffix = f"_{i + 1}" if len(members) > 1 else ""
        rows += [(f"model{suffix}", Path(member.path).name), (f"model_sha256{suffix}", digest)]
    if len(members) > 1:
        rows.append(("fusion_weights", ";".join(f"{w:g}" for w in fingerprint["weights"])))
    rows += [("classes", ";".join(model.classes)), ("sample_rate_hz", rate),
             ("window_s", f"{config.plan.window / rate:g}"), ("hop_s", f"{config.plan.hop / rate:g}"),
             ("final_window", config.plan.final_window), ("resampler", fingerprint["resampler"]),
             ("min_conf", f"{config.min_conf:g}")]
    rows += [(f"min_conf.{c}", f"{t:g}") for c, t in sorted(config.thresholds)]
    rows += [("top_k", config.top_k if config.top_k is not None else ""), ("merge", config.merge),
             ("ignore", ";".join(sorted(config.ignore))), ("formats", ";".join(formats))]
    return rows


@dataclass
class SourceResult:
    name: str
    n_detections: int
    n_windows: int
    audio_seconds: float


class _InOrder:
    """Hand on detections sorted by (start, label) while holding only those that a later event could still precede.

    Merged events come out when they close, so a long event is final after shorter ones that began later; an event
    is released once no open event (and no later window) can start before it.
    """

    def __init__(self, sink: Callable[[Detection], None]):
        self.sink = sink
        self._held: list[tuple[float, str, int, Detection]] = []
        self._n = 0

    def push(self, events: Iterable[Detection]) -> None:
        for d in events:
            heapq.heappush(self._held, (d.start_s, d.label, self._n, d))
            self._n += 1

    def release_before(self, start_s: float) -> None:
        while self._held and self._held[0][0] < start_s:
            self.sink(heapq.heappop(self._held)[3])

    def flush(self) -> None:
        while self._held:
            self.sink(heapq.heappop(self._held)[3])


class AudioClock:
    """Seconds of audio that went through ``count`` (and, per block, to ``on_audio``: a progress bar)."""

    def __init__(self, sample_rate: int, on_audio: Callable[[float], None] | None = None):
        self.sample_rate, self.on_audio, self.seconds = sample_rate, on_audio, 0.0

    def count(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            seconds = len(block) / self.sample_rate
            self.seconds += seconds
            if self.on_audio is not None:
                self.on_audio(seconds)
            yield block


def detect_stream(blocks: Iterable[np.ndarray], name: str, model: Model, config: DetectConfig, *,
                  on_event: Callable[[Detection], None] | None = None,
                  on_audio: Callable[[float], None] | None = None,
                  on_row: Callable[[Detection], None] | None = None,
                  on_embedding: Callable[[Window, np.ndarray], None] | None = None) -> SourceResult:
    """Run one stream of model-rate blocks; ``on_event`` sees each event once final, ``on_row`` each event in table
    order (start, label), ``on_audio`` each block's seconds. Nothing is kept: memory does not grow with the events.
    With ``on_embedding`` the model's rows are ``[probabilities | embedding]`` (``runtime.archive``'s
    ``WithEmbedding``: one session run gives both) and each window's embedding goes there."""
    merger = EventMerger(name, model.sample_rate, config.merge)
    thresholds = config.class_thresholds(model.classes)
    n_detections = 0
    clock = AudioClock(model.sample_rate, on_audio)

    def count_row(d: Detection) -> None:
        nonlocal n_detections
        n_detections += 1
        if on_row is not None:
            on_row(d)

    rows = _InOrder(count_row)
    runs: dict[str, float] = {}  # label -> start of its run of consecutive windows (an open merged event)

    def emit(events: list[Detection]) -> None:
        rows.push(events)
        if on_event is not None:
            for event in events:
                on_event(event)

    n_windows = 0
    n_classes = len(model.classes)
    for window, probs in window_probabilities(clock.count(blocks), model, config.plan, config.batch):
        n_windows += 1
        if on_embedding is not None:
            on_embedding(window, probs[n_classes:])
            probs = probs[:n_classes]
        hits = window_hits(probs, model.classes, thresholds, config.top_k, config.ignore)
        emit(merger.push(window, hits))
        start = window.start / model.sample_rate
        if config.merge:
            runs = {label: runs.get(label, start) for label, _ in hits}
        rows.release_before(min([start, *runs.values()]))
    emit(merger.finish())
    rows.flush()
    return SourceResult(name, n_detections, n_windows, clock.seconds)


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # in this run
    failed_all: list[tuple[str, str]] = field(default_factory=list)  # this run and earlier ones (errors.csv)
    detections: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    done_all: int = 0  # recordings the folder holds results of (this run and earlier ones)

    @property
    def exit_code(self) -> int:
        """0; 2 when some inputs failed and others were processed; 1 when inputs failed and none was processed."""
        if not self.failed_all:
            return 0
        return 2 if self.done_all else 1


class Progress(Protocol):
    def audio(self, seconds: float) -> None: ...

    def file_done(self) -> None: ...


class Source(Protocol):
    name: str

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]: ...


class EmbeddingSink(Protocol):
    """Where ``stream --embeddings`` writes each recording's window embeddings (``runtime.archive.embed.ArchiveSink``):
    ``model`` gives ``[probabilities | embedding]`` rows; a recording is begun, fed, then committed or aborted."""
    model: Model

    def begin(self, source: Source) -> bool: ...

    def add(self, window: Window, embedding: np.ndarray) -> None: ...

    def commit(self, n_windows: int, audio_seconds: float) -> None: ...

    def abort(self, problem: str | None = None) -> None: ...


def _warn_narrow_band(name: str, source_rate: int | None, model_rate: int) -> None:
    if source_rate is not None and source_rate < model_rate:
        logger.warning("%s: recorded at %d Hz: the model's band above %g Hz (to %g Hz) is empty", name, source_rate,
                    source_rate / 2, model_rate / 2)


def run_sources(sources: Iterable[Source], model: Model, config: DetectConfig, outputs: Outputs,
                state: RunState | None = None, *, progress: Progress | None = None,
                log: Callable[[str], None] | None = None,
                params: Sequence[tuple[str, object]] | None = None,
                embeddings: EmbeddingSink | None = None) -> RunSummary:
    """Stream every source given, writing its outputs as it goes; unreadable sources are listed and skipped.

    With ``state`` (the folder's journal) each file's outcome is recorded, so pass ``state.todo(sources)`` to leave
    out what an earlier run finished. A file's rows reach the JSONL exactly once: held until the file is finished,
    dropped if it fails, and preceded by a retraction when an earlier version of the file had rows. ``params``: the
    rows of ``analysis_params.csv``, written beside the outputs. ``embeddings``: each window's embedding is also
    written there, from the same model run (the recording is committed there before the journal marks it done).
    """
    if embeddings is not None:
        model = embeddings.model
    summary = RunSummary()
    started = time.perf_counter()
    outputs.open(state.jsonl_committed if state is not None else None)
    if params is not None:
        outputs.write_params(params)

    def glitch_reporter(source: Source) -> Callable[[float], None] | None:
        """A live stream's NaN blocks go to errors.csv at once (the stream may never end)."""
        glitches = getattr(source, "glitches", None)
        seen = [0]

        def on_audio(seconds: float) -> None:
            if progress is not None:
                progress.audio(seconds)
            if glitches is not None and len(glitches) > seen[0]:
                for start, end in glitches[seen[0]:]:
                    summary.failed.append((source.name, f"NaN/inf samples at {start:.3f}-{end:.3f} s of the stream; "
                                           "analysed as silence"))
                seen[0] = len(glitches)
                outputs.write_errors(summary.failed)
        return on_audio if glitches is not None else (progress.audio if progress is not None else None)

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
            try:
                source_rate = source.source_rate() if hasattr(source, "source_rate") else None
                _warn_narrow_band(source.name, source_rate, model.sample_rate)
                outputs.begin(source.name, path=path, source_rate=source_rate, hold_jsonl=path is not None)
                if embeddings is not None:
                    embeddings.begin(source)
                result = detect_stream(source.blocks(model.sample_rate), source.name, model, config,
                                       on_event=outputs.event, on_audio=glitch_reporter(source), on_row=outputs.row,
                                       on_embedding=embeddings.add if embeddings is not None else None)
                if embeddings is not None:
                    embeddings.commit(result.n_windows, result.audio_seconds)
            except (AudioError, OutputNameError) as exc:
                outputs.discard()
                if embeddings is not None:
                    embeddings.abort(exc.problem)
                summary.failed.append((source.name, exc.problem))
                if journalled:
                    jsonl_end = outputs.commit(retract) if retract is not None else None
                    if before is not None and before.status == DONE:
                        outputs.remove(before.outputs)
                    state.mark_failed(path, source.name, exc.problem, fingerprint=fingerprint, jsonl_end=jsonl_end)
                if log is not None:
                    log(f"skipped {source.name}: {exc.problem}")
                continue
            except BaseException:
                outputs.discard()  # no temporary table is left behind (Ctrl-C, a kill's SIGTERM, a full disk)
                if embeddings is not None:
                    embeddings.abort()
                raise
            written = outputs.finish_tables(result.name, result.audio_seconds)
            if retract is not None and outputs.jsonl is None:
                written.append(JSONL_OUTPUT)  # its earlier rows are still there, to retract when a JSONL is written
            jsonl_end = outputs.commit(retract) if path is not None else None
            if journalled:
                state.mark_done(path, source.name, result.n_detections, written, fingerprint=fingerprint,
                                jsonl_end=jsonl_end, seconds=result.audio_seconds)
            summary.done.append(source.name)
            summary.detections += result.n_detections
            summary.audio_seconds += result.audio_seconds
            if progress is not None:
                progress.file_done()
        summary.wall_seconds = time.perf_counter() - started
        summary.failed_all = state.failures() if state is not None else list(summary.failed)
        summary.done_all = state.count(DONE) if state is not None else len(summary.done)
        if summary.failed_all:
            outputs.write_errors(summary.failed_all)
        elif (outputs.out_dir / "errors.csv").exists():
            (outputs.out_dir / "errors.csv").unlink()
        outputs.combine(state.done_tables if state is not None else outputs.this_run_tables(summary.done))
    finally:
        outputs.close()
        if not summary.wall_seconds:
            summary.wall_seconds = time.perf_counter() - started
    return summary
