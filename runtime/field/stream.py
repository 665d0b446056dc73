"""The streaming core: blocks of audio -> fixed-length windows -> batched model -> detections -> events.

Memory is bounded by ``window + block`` samples for the window buffer plus ``batch x window`` for the model input,
whatever the length of the recording; detections are streamed into the tables as they are final, never collected. ``run_sources`` drives many sources with resume (through the folder's journal,
``run_state.py``), outputs and error listing.
"""

from __future__ import annotations

import csv
import heapq
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.field.events import Detection, EventMerger, window_hits
from vocalprobe.runtime.field.out_lock import OutputLock
from vocalprobe.runtime.field.run_state import DONE, JSONL_OUTPUT, Fingerprint, RunState
from vocalprobe.runtime.field.windows import Window, WindowPlan, WindowSpecError, Windower
from vocalprobe.runtime.field.writers import (
    BIRDNET_COLUMNS,
    COMBINED,
    KALEIDOSCOPE_COLUMNS,
    PARAMS_NAME,
    RAVEN_COLUMNS,
    SUFFIXES,
    FileTables,
    JsonlWriter,
    OutputNameError,
    Recording,
    combine_csv,
    combine_lines,
    combine_parquet,
    combine_raven,
    parse_recorder_timestamp,
    write_errors,
    write_params,
)

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
    seconds = 0.0

    def count_row(d: Detection) -> None:
        nonlocal n_detections
        n_detections += 1
        if on_row is not None:
            on_row(d)

    rows = _InOrder(count_row)
    runs: dict[str, float] = {}  # label -> start of its run of consecutive windows (an open merged event)

    def counted() -> Iterator[np.ndarray]:
        nonlocal seconds
        for block in blocks:
            seconds += len(block) / model.sample_rate
            if on_audio is not None:
                on_audio(len(block) / model.sample_rate)
            yield block

    def emit(events: list[Detection]) -> None:
        rows.push(events)
        if on_event is not None:
            for event in events:
                on_event(event)

    n_windows = 0
    n_classes = len(model.classes)
    for window, probs in window_probabilities(counted(), model, config.plan, config.batch):
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
    return SourceResult(name, n_detections, n_windows, seconds)


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


PER_FILE_FORMATS = ("raven", "csv", "birdnet-csv", "audacity", "kaleidoscope", "parquet")


class Outputs:
    """Where one run writes: per-file tables mirroring the input tree, a JSONL, errors.csv, the combined tables.

    The folder is locked (``OutputLock``) from ``open`` (or ``with outputs:``) to ``close``: one run at a time.
    ``high_freq_hz``: the model's Nyquist frequency (a recording made at a lower rate has a lower band).
    """

    def __init__(self, out_dir: str | Path, formats: Sequence[str], high_freq_hz: float, *, overlap_s: float = 0.0):
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.high_freq_hz = high_freq_hz
        self.overlap_s = overlap_s
        self.lock = OutputLock(self.out_dir)
        self._locked_by_open = False
        self.jsonl: JsonlWriter | None = None
        self._tables: FileTables | None = None
        self._seconds: dict[str, float] = {}  # name -> audio seconds, of this run's recordings (no journal: stdin)

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
        self.discard()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self._locked_by_open:
            self.lock.release()
            self._locked_by_open = False

    def table_path(self, name: str, suffix: str) -> Path:
        rel = Path(name)
        return self.out_dir / rel.parent / (rel.stem + suffix)

    def begin(self, name: str | None = None, *, path: str | Path | None = None, source_rate: int | None = None,
              hold_jsonl: bool = True) -> None:
        """A recording starts: its tables are streamed into temporary files and its JSONL rows held until ``commit``
        (unless ``hold_jsonl`` is False: a live stream, which never finishes, has its rows appended at once).

        Raises ``OutputNameError`` for a name a table cannot hold (the recording is then listed in errors.csv).
        """
        self.discard()
        if self.jsonl is not None and hold_jsonl:
            self.jsonl.begin()
        if name is None:
            return
        paths = {fmt: self.table_path(name, SUFFIXES[fmt]) for fmt in self.formats if fmt in PER_FILE_FORMATS}
        combined = {self.out_dir / COMBINED[fmt] for fmt in self.formats if fmt in COMBINED}
        clash = sorted(str(p.relative_to(self.out_dir)) for p in paths.values() if p in combined)
        if clash:
            raise OutputNameError(name, f"its table {clash[0]} would overwrite the run's combined table; "
                                  "rename the file or move it into a sub-folder")
        band = self.high_freq_hz if source_rate is None else min(self.high_freq_hz, source_rate / 2)
        recording = Recording(name, os.path.abspath(path) if path is not None else name, band, self.overlap_s)
        self._tables = FileTables(paths, recording)

    def row(self, detection: Detection) -> None:
        if self._tables is not None:
            self._tables.write(detection)

    def event(self, detection: Detection) -> None:
        if self.jsonl is not None:
            self.jsonl.write(detection, parse_recorder_timestamp(detection.file))

    def finish_tables(self, result: SourceResult) -> list[str]:
        """Rename the recording's tables into place; their paths relative to the folder (+ the JSONL's name)."""
        written = []
        if self._tables is not None:
            self._tables.commit()
            written = [str(p.relative_to(self.out_dir)) for p in self._tables.paths.values()]
            self._tables = None
        self._seconds[result.name] = result.audio_seconds
        if self.jsonl is not None:
            written.append(JSONL_OUTPUT)
        return written

    def commit(self, retract: str | None = None) -> int | None:
        """Append the recording's held rows; the committed JSONL size (None without a JSONL)."""
        return self.jsonl.commit(retract) if self.jsonl is not None else None

    def discard(self) -> None:
        """Drop what the current recording wrote so far (it failed, or the run stops mid-file)."""
        if self._tables is not None:
            self._tables.abort()
            self._tables = None
        if self.jsonl is not None:
            self.jsonl.discard()

    def remove(self, written: Sequence[str]) -> None:
        """Delete the tables an earlier analysis of a file wrote (the file has failed since)."""
        for rel in written:
            if rel != JSONL_OUTPUT:
                (self.out_dir / rel).unlink(missing_ok=True)

    def write_errors(self, failed: Sequence[tuple[str, str]]) -> Path:
        path = self.out_dir / "errors.csv"
        write_errors(failed, path)
        return path

    def combine(self, tables: Callable[[str], Sequence[tuple[str, float | None]]]) -> list[Path]:
        """Write the combined table of each format from the per-file ones; ``tables(suffix)``: (table, seconds of
        its recording or None when unknown) of every done recording, in order."""
        made = []
        for fmt in self.formats:
            if fmt not in COMBINED:
                continue
            parts = tables(SUFFIXES[fmt])
            path = self.out_dir / COMBINED[fmt]
            files = [self.out_dir / t for t, _ in parts]
            if fmt == "csv":
                combine_csv(files, path)
            elif fmt == "raven":
                combine_raven([(f, s if s is not None else _last_end(f)) for f, (_, s) in zip(files, parts)], path)
            elif fmt == "parquet":
                combine_parquet(files, path)
            else:
                combine_lines(files, path, BIRDNET_COLUMNS if fmt == "birdnet-csv" else KALEIDOSCOPE_COLUMNS)
            made.append(path)
        return made

    def this_run_tables(self, names: Sequence[str]) -> Callable[[str], list[tuple[str, float | None]]]:
        def tables(suffix: str) -> list[tuple[str, float | None]]:
            found = [(str(self.table_path(n, suffix).relative_to(self.out_dir)), self._seconds.get(n)) for n in names]
            return sorted(found)
        return tables

    def write_params(self, params: Sequence[tuple[str, object]]) -> Path:
        path = self.out_dir / PARAMS_NAME
        write_params(params, path)
        return path


def _last_end(raven_table: Path) -> float:
    """A recording's length when no journal knows it (done by an older vocalprobe): its last selection's end."""
    end = RAVEN_COLUMNS.index("End Time (s)")
    last = 0.0
    with open(raven_table, encoding="utf-8") as handle:
        handle.readline()
        for line in handle:
            last = max(last, float(line.split("\t")[end]))
    return last


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
            written = outputs.finish_tables(result)
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
