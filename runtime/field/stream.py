"""The stream product's consumer: the engine's window predictions (``engine.predict``) -> detections -> events ->
the output folder.

Memory is bounded by what the engine holds (``window + block`` samples for the window buffer plus ``batch x window``
for the model input), whatever the length of the recording; detections are streamed into the tables as they are
final, never collected. ``run_sources`` drives many sources with resume (the folder's journal, ``run_state.py``), the
output folder (``outputs.py``) and error listing; ``run.run_stream`` is the whole command.
"""

from __future__ import annotations

import csv
import heapq
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from vocalprobe.runtime.core.audio import truncation
from vocalprobe.runtime.core.detections.layout import JSONL_NAME
from vocalprobe.runtime.core.detections.tables import OutputNameError
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.engine.batches import PROBABILITIES, WITH_EMBEDDING, AudioClock, Model, Prediction, run_model
from vocalprobe.runtime.engine.batches import check_fits, window_batches
from vocalprobe.runtime.engine.predict import Source, predict
from vocalprobe.runtime.engine.scale import ONE_PROCESS, ModelSpec, Scale
from vocalprobe.runtime.engine.windows import Window, WindowPlan, WindowSpecError
from vocalprobe.runtime.field.events import Detection, EventMerger, window_hits
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.field.run_state import DONE, FileRecord, Fingerprint, RunState

logger = logging.getLogger(__name__)


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

    return {"models": [file_sha256(m.path) for m in model.members],
            "weights": [float(w) for w in model.weights],
            "sample_rate": model.sample_rate, "resampler": f"soxr {QUALITY}"}


def run_settings(model: Model, config: DetectConfig) -> dict:
    """The run's fingerprint (a resumed run must match it): not batch, threads or provider, nor output options."""
    return {**run_fingerprint(model), "window": config.plan.window, "hop": config.plan.hop,
            "final_window": config.plan.final_window}


def output_options(config: DetectConfig, formats: Sequence[str], scores: str | None = None) -> dict:
    """What shapes the outputs but not the numbers (thresholds included): may change between runs into one folder.
    ``scores``: the format of ``--scores``'s tables (None: none written)."""
    options = {"min_conf": config.min_conf, "top_k": config.top_k, "merge": config.merge, "formats": list(formats),
               "ignore": sorted(config.ignore)}
    if config.thresholds:
        options["thresholds"] = dict(sorted(config.thresholds))
    if scores is not None:
        options["scores"] = scores
    return options


def analysis_params(model: Model, config: DetectConfig, formats: Sequence[str]) -> list[tuple[str, object]]:
    """The rows of ``analysis_params.csv``: what a reader of the tables needs to know about how they were made."""
    from vocalprobe import __version__

    rate = model.sample_rate
    fingerprint = run_fingerprint(model)
    rows: list[tuple[str, object]] = [("vocalprobe_version", __version__)]
    members = model.members
    for i, (member, digest) in enumerate(zip(members, fingerprint["models"])):
        suffix = f"_{i + 1}" if len(members) > 1 else ""
        rows += [(f"model{suffix}", Path(member.path).name), (f"model_sha256{suffix}", digest)]
    if len(members) > 1:
        rows.append(("fusion_weights", ";".join(f"{w:g}" for w in fingerprint["weights"])))
    rows += [("classes", ";".join(model.classes)), ("sample_rate_hz", rate),
             ("window_s", f"{config.plan.window / rate:g}"), ("hop_s", f"{config.plan.hop / rate:g}"),
             ("final_window", config.plan.final_window), ("resampler", fingerprint["resampler"]),
             *output_params(config, formats)]
    return rows


#: The first of ``analysis_params.csv``'s rows that ``output_params`` writes (``rethreshold`` replaces them all).
FIRST_OUTPUT_PARAM = "min_conf"


def output_params(config: DetectConfig, formats: Sequence[str]) -> list[tuple[str, object]]:
    """The last rows of ``analysis_params.csv``: thresholds, top-k, merging, ignored classes and formats."""
    rows: list[tuple[str, object]] = [(FIRST_OUTPUT_PARAM, f"{config.min_conf:g}")]
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


def detect(predictions: Iterable[Prediction], name: str, model: Model, config: DetectConfig, *,
           on_event: Callable[[Detection], None] | None = None,
           on_row: Callable[[Detection], None] | None = None,
           on_embedding: Callable[[Window, np.ndarray], None] | None = None,
           on_scores: Callable[[Window, np.ndarray], None] | None = None) -> tuple[int, int]:
    """Detections of one recording's window predictions; ``on_event`` sees each event once final, ``on_row`` each
    event in table order (start, label), ``on_embedding`` each window's embedding (predictions made with
    ``WITH_EMBEDDING``), ``on_scores`` each window's probabilities. Nothing is kept: memory does not grow with the
    events. Returns (detections, windows)."""
    merger = EventMerger(name, model.sample_rate, config.merge)
    thresholds = config.class_thresholds(model.classes)
    n_detections = 0

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
    for prediction in predictions:
        for i, (window, probs) in enumerate(zip(prediction.windows, prediction.probabilities)):
            n_windows += 1
            if on_embedding is not None:
                on_embedding(window, prediction.embeddings[i])
            if on_scores is not None:
                on_scores(window, probs)
            hits = window_hits(probs, model.classes, thresholds, config.top_k, config.ignore)
            emit(merger.push(window, hits))
            start = window.start / model.sample_rate
            if config.merge:
                runs = {label: runs.get(label, start) for label, _ in hits}
            rows.release_before(min([start, *runs.values()]))
    emit(merger.finish())
    rows.flush()
    return n_detections, n_windows


def detect_stream(blocks: Iterable[np.ndarray], name: str, model: Model, config: DetectConfig, *,
                  on_event: Callable[[Detection], None] | None = None,
                  on_audio: Callable[[float], None] | None = None,
                  on_row: Callable[[Detection], None] | None = None) -> SourceResult:
    """``detect`` on one stream of model-rate blocks, predicted in this process (``on_audio``: each block's
    seconds)."""
    check_fits(model, config.plan, config.batch)
    clock = AudioClock(model.sample_rate, on_audio)
    predictions = (Prediction(windows, *run_model(model, samples, PROBABILITIES))
                   for windows, samples in window_batches(clock.count(blocks), config.plan, config.batch))
    n_detections, n_windows = detect(predictions, name, model, config, on_event=on_event, on_row=on_row)
    return SourceResult(name, n_detections, n_windows, clock.seconds)


@dataclass
class RunSummary:
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # in this run
    failed_all: list[tuple[str, str]] = field(default_factory=list)  # this run and earlier ones (errors.csv)
    #: done files analysed only in part (a truncated WAV: the part it holds), with why; in this run / all runs
    partial: list[tuple[str, str]] = field(default_factory=list)
    partial_all: list[tuple[str, str]] = field(default_factory=list)
    detections: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    done_all: int = 0  # recordings the folder holds results of (this run and earlier ones)
    _found: dict[str, int] = field(default_factory=dict, repr=False)  # detections of each done name in this run

    def add_done(self, name: str, detections: int, seconds: float, *, latest: bool = False,
                 partial: str | None = None) -> None:
        """``latest``: a file's outcome replaces its earlier ones in this run (a watched file analysed again): a
        file that failed and is then done is not also counted failed. ``partial``: why only part of it was read."""
        if latest:
            self.failed = [f for f in self.failed if f[0] != name]
            self.partial = [f for f in self.partial if f[0] != name]
        if partial is not None:
            self.partial.append((name, partial))
        self.done.append(name)
        self.detections += detections
        self._found[name] = self._found.get(name, 0) + detections
        self.audio_seconds += seconds

    def add_failed(self, name: str, problem: str, *, latest: bool = False) -> None:
        """``latest``: as in ``add_done``: a done file that then fails (its rows retracted) is not also done."""
        if latest and name in self._found:
            self.done = [n for n in self.done if n != name]
            self.detections -= self._found.pop(name)
        self.failed.append((name, problem))

    @property
    def exit_code(self) -> int:
        """0; 2 when some inputs failed or were read only in part and others were processed; 1 when inputs failed
        and none was processed."""
        if not self.failed_all and not self.partial_all:
            return 0
        return 2 if self.done_all else 1


class Progress(Protocol):
    def audio(self, seconds: float) -> None: ...

    def file_done(self) -> None: ...


class EmbeddingSink(Protocol):
    """Where ``stream --embeddings`` writes each recording's window embeddings (``runtime.archive.embed.ArchiveSink``):
    a recording is begun, fed, then committed or aborted."""

    def begin(self, source: Source) -> bool: ...

    def add(self, window: Window, embedding: np.ndarray) -> None: ...

    def commit(self, n_windows: int, audio_seconds: float) -> None: ...

    def abort(self, problem: str | None = None) -> None: ...

    def with_unembedded(self, files: Sequence, todo: Sequence, done_names: Sequence[str]) -> tuple[list, int]: ...


def _warn_narrow_band(name: str, source_rate: int | None, model_rate: int) -> None:
    if source_rate is not None and source_rate < model_rate:
        logger.warning("%s: recorded at %d Hz: the model's band above %g Hz (to %g Hz) is empty", name, source_rate,
                    source_rate / 2, model_rate / 2)


def _renamed(state: RunState, path: Path, before: FileRecord | None, outputs: Outputs
             ) -> tuple[str | None, list[FileRecord]]:
    """The sha256 of a journalled file's bytes, and the records of the same audio under names that are gone (the
    file was renamed or moved since it was recorded): their rows are retracted as this one is recorded, so a renamed
    recording is never counted twice. Rows in a JSONL this run does not write could not be retracted: kept."""
    try:
        digest = file_sha256(path)
    except OSError:
        return None, []
    if before is not None:
        return digest, []
    return digest, [r for r in state.renamed(path, digest) if not r.wrote_jsonl or outputs.jsonl is not None]


def run_sources(sources: Iterable[Source], model: Model, config: DetectConfig, outputs: Outputs,
                state: RunState | None = None, *, progress: Progress | None = None,
                log: Callable[[str], None] | None = None,
                params: Sequence[tuple[str, object]] | None = None,
                embeddings: EmbeddingSink | None = None, scale: Scale = ONE_PROCESS,
                spec: ModelSpec | None = None) -> RunSummary:
    """Stream every source given, writing its outputs as it goes; unreadable sources are listed and skipped.

    With ``state`` (the folder's journal) each file's outcome is recorded, so pass ``state.todo(sources)`` to leave
    out what an earlier run finished. A file's rows reach the JSONL exactly once: held until the file is finished,
    dropped if it fails, and preceded by a retraction when an earlier version of the file had rows. ``params``: the
    rows of ``analysis_params.csv``, written beside the outputs. ``embeddings``: each window's embedding is also
    written there, from the same model run (the recording is committed there before the journal marks it done).
    ``scale`` and ``spec``: where the engine runs the model (``engine.predict``); the outputs are the same.
    """
    summary = RunSummary()
    started = time.perf_counter()
    outputs.open(state.jsonl_committed if state is not None else None)
    if params is not None:
        outputs.write_params(params)

    def glitch_reporter(source: Source) -> Callable[[float], None] | None:
        """A live stream's NaN blocks go to errors.csv at once (the stream may never end)."""
        glitches = source.glitches
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

    recordings = predict(sources, model, config.plan, config.batch, scale,
                         WITH_EMBEDDING if embeddings is not None else PROBABILITIES, spec=spec, log=log)
    try:
        for recording in recordings:
            source = recording.source
            path = source.path
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
                source_rate = source.source_rate()
                _warn_narrow_band(source.name, source_rate, model.sample_rate)
                outputs.begin(source.name, path=path, source_rate=source_rate, hold_jsonl=path is not None)
                if embeddings is not None:
                    embeddings.begin(source)
                n_detections, n_windows = detect(recording.predictions(glitch_reporter(source)), source.name, model,
                                                 config, on_event=outputs.event, on_row=outputs.row,
                                                 on_embedding=embeddings.add if embeddings is not None else None,
                                                 on_scores=outputs.scores if outputs.scores_format else None)
                result = SourceResult(source.name, n_detections, n_windows, recording.audio_seconds)
                if embeddings is not None:
                    embeddings.commit(result.n_windows, result.audio_seconds)
            except (AudioError, OutputNameError) as exc:
                outputs.discard()
                if embeddings is not None:
                    embeddings.abort(exc.problem)
                summary.add_failed(source.name, exc.problem, latest=journalled)
                if journalled:
                    digest, gone = _renamed(state, path, before, outputs)
                    retracts = ([retract] if retract is not None else []) + [r.name for r in gone if r.wrote_jsonl]
                    jsonl_end = outputs.commit(retracts) if retracts else None
                    if before is not None and before.status == DONE:
                        outputs.remove(before.outputs)
                    state.mark_failed(path, source.name, exc.problem, fingerprint=fingerprint, jsonl_end=jsonl_end,
                                      sha256=digest, replaces=gone)
                    for record in gone:
                        outputs.remove(record.outputs)
                if log is not None:
                    log(f"skipped {source.name}: {exc.problem}")
                continue
            except BaseException:
                outputs.discard()  # no temporary table is left behind (Ctrl-C, a kill's SIGTERM, a full disk)
                if embeddings is not None:
                    embeddings.abort()
                raise
            partial = truncation(path) if source.partial else None  # a truncated WAV, read for what it holds
            if partial is not None and log is not None:
                log(f"{source.name}: {partial}")
            written = outputs.finish_tables(result.name, result.audio_seconds)
            if retract is not None and outputs.jsonl is None:
                written.append(JSONL_NAME)  # its earlier rows are still there, to retract when a JSONL is written
            digest, gone = _renamed(state, path, before, outputs) if journalled else (None, [])
            retracts = ([retract] if retract is not None else []) + [r.name for r in gone if r.wrote_jsonl]
            jsonl_end = outputs.commit(retracts) if path is not None else None
            if journalled:
                state.mark_done(path, source.name, result.n_detections, written, fingerprint=fingerprint,
                                jsonl_end=jsonl_end, seconds=result.audio_seconds, source_rate=source_rate,
                                sha256=digest, replaces=gone, problem=partial)
                for record in gone:  # after the journal: a kill in between leaves a table nothing lists, never two
                    outputs.remove([o for o in record.outputs if o not in written])
                    if log is not None:
                        log(f"{source.name}: the recording {record.name} renamed; its earlier rows are retracted")
            summary.add_done(source.name, result.n_detections, result.audio_seconds, latest=journalled,
                             partial=partial)
            if progress is not None:
                progress.file_done()
        summary.wall_seconds = time.perf_counter() - started
        summary.failed_all = state.failures() if state is not None else list(summary.failed)
        summary.partial_all = state.partly_read() if state is not None else list(summary.partial)
        summary.done_all = state.count(DONE) if state is not None else len(summary.done)
        outputs.write_errors(state.problems() if state is not None else sorted(summary.failed + summary.partial))
        outputs.combine(state.done_tables if state is not None else outputs.this_run_tables(summary.done))
    finally:
        recordings.close()  # stops the engine's workers
        outputs.close()
        if not summary.wall_seconds:
            summary.wall_seconds = time.perf_counter() - started
    return summary
