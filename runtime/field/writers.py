"""Detection tables: one writer per format, each fed one recording's detections in order and never touching audio.

Per recording (beside each other, mirroring the input tree), and combined for the whole run:

- ``raven``: Raven Pro selection table (tab-separated, no quoting), columns ``RAVEN_COLUMNS``; the combined table
  numbers selections across files and gives ``Begin Time (s)`` on the files laid end to end, as Raven opens a list;
- ``csv``: ``file,start_s,end_s,label,confidence`` (+ ``start_time`` when the file name carries the recorder's clock);
- ``birdnet-csv``: BirdNET-Analyzer's ``Start (s),End (s),Scientific name,Common name,Confidence,File``
  (vocalprobe's class name in both name columns);
- ``audacity``: an Audacity label track, ``start<TAB>end<TAB>label`` (per recording only: a track is one file's);
- ``kaleidoscope``: the columns BirdNET-Analyzer writes for Kaleidoscope (``KALEIDOSCOPE_COLUMNS``);
- ``parquet``: the CSV's columns, typed (needs pyarrow: ``pip install 'vocalprobe[parquet]'``);
- ``jsonl``: one event per line, only ever appended (``tail -f`` friendly): a recording's rows once it is finished,
  a live stream's as each event is final.

A recording's tables are streamed into temporary files beside their final names and renamed when the recording is
finished (``FileTables``), so memory does not grow with the detections and a killed run never leaves half a table;
combined tables are streamed from the per-file ones, one at a time.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Iterable, Sequence

from vocalprobe.runtime.core.atomic import atomic_open, atomic_write_text
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.field.events import Detection

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Begin File", "Begin Path", "File Offset (s)", "Class", "Confidence")
CSV_COLUMNS = ("file", "start_s", "end_s", "label", "confidence")
CSV_TIME_COLUMN = "start_time"
BIRDNET_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File")
KALEIDOSCOPE_COLUMNS = ("INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "scientific_name", "common_name",
                        "confidence", "lat", "lon", "week", "overlap", "sensitivity")
FORMATS = ("raven", "csv", "jsonl", "birdnet-csv", "audacity", "kaleidoscope", "parquet")
RAVEN_SUFFIX = ".selection.table.txt"
CSV_SUFFIX = ".detections.csv"
#: Per-recording table suffix of each table format.
SUFFIXES = {"raven": RAVEN_SUFFIX, "csv": CSV_SUFFIX, "birdnet-csv": ".birdnet.csv", "audacity": ".labels.txt",
            "kaleidoscope": ".kaleidoscope.csv", "parquet": ".detections.parquet"}
#: The run's combined table of each format (in the output folder).
COMBINED = {"raven": "detections.selection.table.txt", "csv": "detections.csv", "birdnet-csv": "detections.birdnet.csv",
            "kaleidoscope": "detections.kaleidoscope.csv", "parquet": "detections.parquet"}
PARAMS_NAME = "analysis_params.csv"

# AudioMoth and Wildlife Acoustics recorders name files by their start time: 20210502_040000.WAV,
# SMA01234_20210502_040000.wav; some tools write 20210502T040000, and a trailing Z says UTC (MARS-20150910T000000Z).
_TIMESTAMP = re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)(Z(?![A-Za-z]))?")


class OutputNameError(VocalprobeError):
    """A recording whose name a table format cannot hold (e.g. a tab in a Raven table); listed in errors.csv."""

    def __init__(self, name: str, problem: str):
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise VocalprobeError(f"--format: unknown format(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(FORMATS)}")
    if "parquet" in formats:
        _pyarrow()
    return formats


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise VocalprobeError("--format parquet needs pyarrow: pip install 'vocalprobe[parquet]'") from None
    return pyarrow


def parse_recorder_timestamp(name: str | Path) -> datetime | None:
    """The start time a recorder encoded in a file name, e.g. AudioMoth ``20210502_040000.WAV``, else None.

    A trailing ``Z`` (``MARS-20150910T000000Z``) makes it a UTC time; without one it is returned as written, without
    a time zone (AudioMoth writes UTC unless configured otherwise, but does not say so in the name).
    """
    match = _TIMESTAMP.search(Path(name).stem)
    if match is None:
        return None
    try:
        when = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:  # eight + six digits that are not a date, e.g. a serial number
        return None
    return when.replace(tzinfo=timezone.utc) if match.group(3) else when


def clock_time(recording_start: datetime, offset_s: float) -> str:
    """ISO 8601 time of an event; a UTC start keeps its ``Z``."""
    text = (recording_start + timedelta(seconds=offset_s)).isoformat(timespec="milliseconds")
    return text[:-len("+00:00")] + "Z" if text.endswith("+00:00") else text


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _confidence(value: float) -> str:
    return f"{value:.4f}"


def check_raven_name(name: str) -> None:
    """Raven tables are tab-separated without quoting: a tab or line break in a name cannot be written."""
    for char, what in (("\t", "a tab"), ("\n", "a line break"), ("\r", "a carriage return")):
        if char in name:
            raise OutputNameError(name, f"its name holds {what}, which a Raven table (tab-separated, no quoting) "
                                  "cannot hold; rename the file or leave raven out of --format")


@dataclass(frozen=True)
class Recording:
    """What a recording's tables say about it besides its detections."""

    name: str  # as the outputs name it (relative to the folder given on the command line)
    path: str  # the audio file's absolute path (Raven's Begin Path, BirdNET's File); the name for stdin
    high_freq_hz: float  # the top of the band the model saw: min(the source's Nyquist, the model's)
    overlap_s: float = 0.0  # window - hop (Kaleidoscope's overlap column, as BirdNET-Analyzer writes it)

    @property
    def recording_start(self) -> datetime | None:
        return parse_recorder_timestamp(self.name)


class _AtomicTable:
    """A file written under a temporary name beside ``path`` and renamed over it by ``commit``."""

    def __init__(self, path: Path, binary: bool = False):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._context = atomic_open(path, "wb") if binary else atomic_open(path, "w", encoding="utf-8", newline="")
        self.handle = self._context.__enter__()

    def commit(self) -> None:
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            self._context.__exit__(_Aborted, _Aborted(), None)
        except _Aborted:
            pass


class _Aborted(Exception):
    pass


class TableWriter:
    """One recording's table in one format: ``write`` each detection in order, then ``commit`` (or ``abort``)."""

    binary = False

    def __init__(self, path: Path, recording: Recording):
        self.recording = recording
        self._file = _AtomicTable(path, self.binary)
        self.start()

    def start(self) -> None: ...

    def write(self, detection: Detection) -> None:
        raise NotImplementedError

    def finish(self) -> None: ...

    def commit(self) -> None:
        self.finish()
        self._file.commit()

    def abort(self) -> None:
        self._file.abort()


class RavenWriter(TableWriter):
    def start(self) -> None:
        check_raven_name(Path(self.recording.name).name)
        check_raven_name(self.recording.path)
        self._file.handle.write("\t".join(RAVEN_COLUMNS) + "\n")
        self._n = 0

    def write(self, d: Detection) -> None:
        self._n += 1
        r = self.recording
        self._file.handle.write("\t".join(map(str, [
            self._n, "Spectrogram 1", 1, _seconds(d.start_s), _seconds(d.end_s), "0.0", f"{r.high_freq_hz:.1f}",
            Path(r.name).name, r.path, _seconds(d.start_s), d.label, _confidence(d.confidence)])) + "\n")


class CsvWriter(TableWriter):
    def start(self) -> None:
        self._start = self.recording.recording_start
        self._csv = csv.writer(self._file.handle, lineterminator="\n")
        self._csv.writerow(CSV_COLUMNS + ((CSV_TIME_COLUMN,) if self._start is not None else ()))

    def write(self, d: Detection) -> None:
        row = [d.file, _seconds(d.start_s), _seconds(d.end_s), d.label, _confidence(d.confidence)]
        if self._start is not None:
            row.append(clock_time(self._start, d.start_s))
        self._csv.writerow(row)


class BirdnetCsvWriter(TableWriter):
    def start(self) -> None:
        self._csv = csv.writer(self._file.handle, lineterminator="\n")
        self._csv.writerow(BIRDNET_COLUMNS)

    def write(self, d: Detection) -> None:
        self._csv.writerow([_seconds(d.start_s), _seconds(d.end_s), d.label, d.label, _confidence(d.confidence),
                            self.recording.path])


class AudacityWriter(TableWriter):
    def write(self, d: Detection) -> None:
        self._file.handle.write(f"{_seconds(d.start_s)}\t{_seconds(d.end_s)}\t{d.label} {_confidence(d.confidence)}\n")


class KaleidoscopeWriter(TableWriter):
    def start(self) -> None:
        self._csv = csv.writer(self._file.handle, lineterminator="\n")
        self._csv.writerow(KALEIDOSCOPE_COLUMNS)
        folder, self._in_file = os.path.split(self.recording.path)
        self._indir, self._folder = os.path.split(folder)

    def write(self, d: Detection) -> None:
        # lat, lon, week and sensitivity are BirdNET's own inputs: vocalprobe has none, so they stay empty.
        self._csv.writerow([self._indir, self._folder, self._in_file, _seconds(d.start_s),
                            _seconds(d.end_s - d.start_s), d.label, d.label, _confidence(d.confidence), "", "", "",
                            f"{self.recording.overlap_s:g}", ""])


def parquet_schema():
    pa = _pyarrow()
    return pa.schema([("file", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
                      ("label", pa.string()), ("confidence", pa.float64()), (CSV_TIME_COLUMN, pa.string())])


class ParquetWriter(TableWriter):
    binary = True
    BATCH = 65_536  # rows held before a row group is written

    def start(self) -> None:
        import pyarrow.parquet as pq

        self._schema = parquet_schema()
        self._writer = pq.ParquetWriter(self._file.handle, self._schema)
        self._rows: list[tuple] = []
        self._start = self.recording.recording_start

    def write(self, d: Detection) -> None:
        when = clock_time(self._start, d.start_s) if self._start is not None else None
        self._rows.append((d.file, d.start_s, d.end_s, d.label, float(d.confidence), when))
        if len(self._rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows))
            self._writer.write_batch(_pyarrow().record_batch(columns, schema=self._schema))
            self._rows = []

    def finish(self) -> None:
        self._flush()
        self._writer.close()

    def abort(self) -> None:
        self._rows = []
        try:
            self._writer.close()
        finally:
            super().abort()


WRITERS: dict[str, type[TableWriter]] = {"raven": RavenWriter, "csv": CsvWriter, "birdnet-csv": BirdnetCsvWriter,
                                         "audacity": AudacityWriter, "kaleidoscope": KaleidoscopeWriter,
                                         "parquet": ParquetWriter}


class FileTables:
    """Every per-recording table of one recording, written as its detections arrive (in order)."""

    def __init__(self, paths: dict[str, Path], recording: Recording):
        self.paths = paths
        self._writers: list[TableWriter] = []
        try:
            for fmt, path in paths.items():
                self._writers.append(WRITERS[fmt](path, recording))
        except BaseException:
            self.abort()
            raise

    def write(self, detection: Detection) -> None:
        for writer in self._writers:
            writer.write(detection)

    def commit(self) -> None:
        for writer in self._writers:
            writer.commit()
        self._writers = []

    def abort(self) -> None:
        for writer in self._writers:
            writer.abort()
        self._writers = []


def write_table(fmt: str, detections: Iterable[Detection], path: str | Path, recording: Recording) -> None:
    """One recording's table in format ``fmt``, at once."""
    tables = FileTables({fmt: Path(path)}, recording)
    try:
        for d in detections:
            tables.write(d)
    except BaseException:
        tables.abort()
        raise
    tables.commit()


def write_raven(detections: Sequence[Detection], path: str | Path, *, begin_file: str, high_freq_hz: float,
                begin_path: str | None = None) -> None:
    """A Raven Pro selection table for one audio file (``begin_file`` is that file's name)."""
    write_table("raven", detections, path, Recording(begin_file, begin_path or begin_file, high_freq_hz))


def write_csv(detections: Sequence[Detection], path: str | Path, *, recording_start: datetime | None = None) -> None:
    """One file's detections; with ``recording_start`` a ``start_time`` column gives each event's clock time."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS + ((CSV_TIME_COLUMN,) if recording_start is not None else ()))
        for d in detections:
            row = [d.file, _seconds(d.start_s), _seconds(d.end_s), d.label, _confidence(d.confidence)]
            if recording_start is not None:
                row.append(clock_time(recording_start, d.start_s))
            writer.writerow(row)


# -- combined tables: streamed from the per-file ones, one file at a time ------------------------------------------
def _header(path: str | Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def combine_csv(parts: Sequence[str | Path], path: str | Path) -> int:
    """Concatenate per-file CSV tables into one (a ``start_time`` column appears when any part has it)."""
    header = list(CSV_COLUMNS)
    if any(CSV_TIME_COLUMN in _header(part) for part in parts):
        header.append(CSV_TIME_COLUMN)
    n = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="")
        writer.writeheader()
        for part in parts:
            with open(part, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    writer.writerow(row)
                    n += 1
    return n


def combine_lines(parts: Sequence[str | Path], path: str | Path, header: Sequence[str]) -> int:
    """Concatenate per-file CSV tables of one fixed header (birdnet-csv, kaleidoscope), the header once."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as out:
        csv.writer(out, lineterminator="\n").writerow(header)
        for part in parts:
            with open(part, newline="", encoding="utf-8") as handle:
                handle.readline()
                for line in handle:
                    out.write(line)
                    n += 1
    return n


def combine_raven(parts: Sequence[tuple[str | Path, float]], path: str | Path) -> int:
    """One Raven table for many recordings: ``parts`` are (per-file table, that recording's seconds), in order.

    Selections are numbered through, and ``Begin Time (s)``/``End Time (s)`` count on the recordings laid end to end
    (the way Raven opens a list of files), while ``Begin Path`` and ``File Offset (s)`` say where in which file.
    """
    begin, end, offset_col = (RAVEN_COLUMNS.index(c) for c in ("Begin Time (s)", "End Time (s)", "File Offset (s)"))
    n, offset = 0, 0.0
    with atomic_open(path, "w", encoding="utf-8", newline="") as out:
        out.write("\t".join(RAVEN_COLUMNS) + "\n")
        for part, seconds in parts:
            with open(part, encoding="utf-8", newline="") as handle:
                columns = handle.readline().rstrip("\n").split("\t")
                if columns[:len(RAVEN_COLUMNS)] != list(RAVEN_COLUMNS):
                    raise VocalprobeError(f"{part}: not a vocalprobe Raven table of this version (columns "
                                          f"{', '.join(columns)}); re-run with --rewrite-outputs")
                for line in handle:
                    cells = line.rstrip("\n").split("\t")
                    n += 1
                    start_in_file = float(cells[offset_col])
                    length = float(cells[end]) - float(cells[begin])
                    cells[0] = str(n)
                    cells[begin] = _seconds(offset + start_in_file)
                    cells[end] = _seconds(offset + start_in_file + length)
                    out.write("\t".join(cells) + "\n")
            offset += seconds
    return n


def combine_parquet(parts: Sequence[str | Path], path: str | Path) -> int:
    import pyarrow.parquet as pq

    n = 0
    schema = parquet_schema()
    with atomic_open(path, "wb") as out:
        writer = pq.ParquetWriter(out, schema)
        try:
            for part in parts:
                for batch in pq.ParquetFile(part).iter_batches():
                    writer.write_batch(batch)
                    n += batch.num_rows
        finally:
            writer.close()
    return n


def write_params(params: Sequence[tuple[str, object]], path: str | Path) -> None:
    """``analysis_params.csv``: what a run was made with (``parameter,value``), for readers of its tables."""
    _write_small_csv(path, ("parameter", "value"), params)


def jsonl_line(detection: Detection, recording_start: datetime | None = None) -> str:
    event = {"file": detection.file, "start_s": round(detection.start_s, 3), "end_s": round(detection.end_s, 3),
             "label": detection.label, "confidence": round(float(detection.confidence), 4)}
    if recording_start is not None:
        event[CSV_TIME_COLUMN] = clock_time(recording_start, detection.start_s)
    return json.dumps(event)


class JsonlError(VocalprobeError):
    """``detections.jsonl`` does not hold what the journal says was committed to it."""


def retract_line(name: str) -> str:
    """Withdraws every earlier row of ``name``: the recording was analysed again (it grew or was replaced)."""
    return json.dumps({"retract": name})


class JsonlWriter:
    """Append events to one JSONL file; never rewrites what is there.

    A recording's rows are held (in an unnamed temporary file beside it) until the recording is finished, then
    appended in one block with ``commit``: a file that fails part-way leaves no rows, and a file analysed again is
    preceded by a ``{"retract": name}`` line. ``write`` without ``begin`` (a live stdin stream, which has no end)
    appends and flushes each line at once.

    ``committed``: the size a journal recorded after its last commit; bytes past it are the rows of a commit a kill
    cut short (the journal does not count that file as done), and are dropped before anything is appended.
    """

    def __init__(self, path: str | Path, committed: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "ab")
        size = self._handle.seek(0, io.SEEK_END)
        if committed is not None:
            if size < committed:
                self._handle.close()
                raise JsonlError(f"{self.path} holds {size} bytes, the journal counts {committed} as written (was it "
                                 "edited or cut?); move it away and re-run with --rewrite-outputs, or use another "
                                 "--out folder")
            if size > committed:
                self._handle.truncate(committed)
                self._handle.seek(committed)
        self._pending: IO[bytes] | None = None

    @property
    def size(self) -> int:
        return self._handle.tell()

    def begin(self) -> None:
        """Hold the rows written from now on until ``commit`` (or drop them with ``discard``)."""
        self.discard()
        self._pending = tempfile.TemporaryFile(dir=self.path.parent, prefix=".detections.jsonl.", suffix=".tmp")

    def write(self, detection: Detection, recording_start: datetime | None = None) -> None:
        line = (jsonl_line(detection, recording_start) + "\n").encode("utf-8")
        if self._pending is not None:
            self._pending.write(line)
        else:
            self._handle.write(line)
            self._handle.flush()

    def commit(self, retract: str | None = None) -> int:
        """Append the held rows (after a retraction of ``retract``'s earlier rows), durably; returns the new size."""
        if retract is not None:
            self._handle.write((retract_line(retract) + "\n").encode("utf-8"))
        if self._pending is not None:
            self._pending.seek(0)
            shutil.copyfileobj(self._pending, self._handle)
            self.discard()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return self._handle.tell()

    def discard(self) -> None:
        if self._pending is not None:
            self._pending.close()
            self._pending = None

    def close(self) -> None:
        self.discard()
        self._handle.close()

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_errors(errors: Sequence[tuple[str, str]], path: str | Path) -> None:
    """The inputs a run could not read: ``file,problem``."""
    _write_small_csv(path, ("file", "problem"), errors)


def _write_small_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A table small enough to build in memory, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
