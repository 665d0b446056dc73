"""One recording's detection tables: one writer per format, each fed the recording's detections in order and never
touching audio (columns and suffixes: ``layout``).

- ``raven``: Raven Pro selection table (tab-separated, no quoting);
- ``csv``: ``file,start_s,end_s,label,confidence,start_time`` (``start_time`` empty when the name has no clock);
- ``birdnet-csv``: BirdNET-Analyzer's columns (vocalprobe's class name in both name columns);
- ``audacity``: an Audacity label track, ``start<TAB>end<TAB>label`` (per recording only: a track is one file's);
- ``kaleidoscope``: the columns BirdNET-Analyzer writes for Kaleidoscope;
- ``parquet``: the CSV's columns, typed (needs pyarrow: ``pip install 'vocalprobe[parquet]'``).

The tables are streamed into temporary files beside their final names and renamed when the recording is finished
(``FileTables``), so memory does not grow with the detections and a killed run never leaves half a table.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable

from vocalprobe.runtime.core.atomic import atomic_open
from vocalprobe.runtime.core.detections.clock import clock_time, parse_recorder_timestamp
from vocalprobe.runtime.core.detections.layout import (
    BIRDNET_COLUMNS,
    TABLE_COLUMNS,
    FORMATS,
    KALEIDOSCOPE_COLUMNS,
    RAVEN_COLUMNS,
    Detection,
)
from vocalprobe.runtime.core.errors import VocalprobeError


class OutputNameError(VocalprobeError):
    """A recording whose name a table format cannot hold (e.g. a tab in a Raven table); listed in errors.csv."""

    def __init__(self, name: str, problem: str):
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def parse_formats(text: str) -> tuple[str, ...]:
    """``--format``'s comma-separated list, each format once, in the order given."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise VocalprobeError(f"--format: unknown format(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(FORMATS)}")
    if "parquet" in formats:
        pyarrow_module()
    return formats


def pyarrow_module():
    """pyarrow (with its parquet module), or an error saying how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise VocalprobeError("--format parquet needs pyarrow: pip install 'vocalprobe[parquet]'") from None
    return pyarrow


def seconds_text(value: float) -> str:
    """A time in the tables: milliseconds."""
    return f"{value:.3f}"


def confidence_text(value: float) -> str:
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
        cells = [self._n, "Spectrogram 1", 1, seconds_text(d.start_s), seconds_text(d.end_s), "0.0",
                 f"{r.high_freq_hz:.1f}", Path(r.name).name, r.path, seconds_text(d.start_s), d.label,
                 confidence_text(d.confidence)]
        self._file.handle.write("\t".join(map(str, cells)) + "\n")


class CsvWriter(TableWriter):
    def start(self) -> None:
        self._start = self.recording.recording_start
        self._csv = csv.writer(self._file.handle, lineterminator="\n")
        self._csv.writerow(TABLE_COLUMNS)

    def write(self, d: Detection) -> None:
        self._csv.writerow([d.file, seconds_text(d.start_s), seconds_text(d.end_s), d.label,
                            confidence_text(d.confidence),
                            clock_time(self._start, d.start_s) if self._start is not None else ""])


class BirdnetCsvWriter(TableWriter):
    def start(self) -> None:
        self._csv = csv.writer(self._file.handle, lineterminator="\n")
        self._csv.writerow(BIRDNET_COLUMNS)

    def write(self, d: Detection) -> None:
        self._csv.writerow([seconds_text(d.start_s), seconds_text(d.end_s), d.label, d.label,
                            confidence_text(d.confidence), self.recording.path])


class AudacityWriter(TableWriter):
    def write(self, d: Detection) -> None:
        self._file.handle.write(f"{seconds_text(d.start_s)}\t{seconds_text(d.end_s)}\t{d.label} "
                                f"{confidence_text(d.confidence)}\n")


class KaleidoscopeWriter(TableWriter):
    def start(self) -> None:
        self._csv = csv.writer(self._file.handle, lineterminator="\n")
        self._csv.writerow(KALEIDOSCOPE_COLUMNS)
        folder, self._in_file = os.path.split(self.recording.path)
        self._indir, self._folder = os.path.split(folder)

    def write(self, d: Detection) -> None:
        # lat, lon, week and sensitivity are BirdNET's own inputs: vocalprobe has none, so they stay empty.
        self._csv.writerow([self._indir, self._folder, self._in_file, seconds_text(d.start_s),
                            seconds_text(d.end_s - d.start_s), d.label, d.label, confidence_text(d.confidence),
                            "", "", "", f"{self.recording.overlap_s:g}", ""])


def parquet_schema():
    """The parquet tables' schema: the CSV's columns, typed (``start_time`` a millisecond timestamp, UTC when the
    name says so, else as written; null where the name has no clock)."""
    pa = pyarrow_module()
    types = (pa.string(), pa.float64(), pa.float64(), pa.string(), pa.float64(), pa.timestamp("ms"))
    return pa.schema(list(zip(TABLE_COLUMNS, types, strict=True)))


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
        when = None
        if self._start is not None:  # naive: a UTC start (its Z) is stored as that UTC wall time
            when = (self._start + timedelta(seconds=d.start_s)).replace(tzinfo=None)
        self._rows.append((d.file, d.start_s, d.end_s, d.label, float(d.confidence), when))
        if len(self._rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            columns = list(zip(*self._rows))
            self._writer.write_batch(pyarrow_module().record_batch(columns, schema=self._schema))
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


def write_tables(paths: dict[str, Path], detections: Iterable[Detection], recording: Recording) -> None:
    """One recording's tables (format -> path), at once."""
    tables = FileTables(paths, recording)
    try:
        for d in detections:
            tables.write(d)
    except BaseException:
        tables.abort()
        raise
    tables.commit()


def write_table(fmt: str, detections: Iterable[Detection], path: str | Path, recording: Recording) -> None:
    """One recording's table in format ``fmt``, at once."""
    write_tables({fmt: Path(path)}, detections, recording)
