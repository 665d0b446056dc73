"""Detection tables: one function per format, each taking detections and a path, never touching audio.

- Raven Pro selection table (tab-separated, one per input file), columns ``RAVEN_COLUMNS`` in that order;
- CSV ``file,start_s,end_s,label,confidence`` (+ ``start_time`` when the file name carries the recorder's clock);
- JSONL, one event per line, only ever appended (``tail -f`` friendly): a recording's rows once it is finished,
  a live stream's as each event is final.

Tables are written atomically (``vocalprobe.runtime.core.atomic``): a killed run never leaves half a table.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Iterable, Sequence

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.field.events import Detection

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Begin File", "File Offset (s)", "Class", "Confidence")
CSV_COLUMNS = ("file", "start_s", "end_s", "label", "confidence")
CSV_TIME_COLUMN = "start_time"
FORMATS = ("raven", "csv", "jsonl")
RAVEN_SUFFIX = ".selection.table.txt"
CSV_SUFFIX = ".detections.csv"

# AudioMoth and Wildlife Acoustics recorders name files by their start time: 20210502_040000.WAV,
# SMA01234_20210502_040000.wav; some tools write 20210502T040000.
_TIMESTAMP = re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)")


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise VocalprobeError(f"--format: unknown format(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(FORMATS)}")
    return formats


def parse_recorder_timestamp(name: str | Path) -> datetime | None:
    """The start time a recorder encoded in a file name, e.g. AudioMoth ``20210502_040000.WAV``, else None.

    AudioMoth writes UTC unless configured otherwise; the time is returned as written, without a time zone.
    """
    match = _TIMESTAMP.search(Path(name).stem)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
    except ValueError:  # eight + six digits that are not a date, e.g. a serial number
        return None


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _confidence(value: float) -> str:
    return f"{value:.4f}"


def raven_table(detections: Sequence[Detection], *, begin_file: str, high_freq_hz: float) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(RAVEN_COLUMNS)
    for i, d in enumerate(detections, start=1):
        writer.writerow([i, "Spectrogram 1", 1, _seconds(d.start_s), _seconds(d.end_s), "0.0", f"{high_freq_hz:.1f}",
                         begin_file, _seconds(d.start_s), d.label, _confidence(d.confidence)])
    return buffer.getvalue()


def write_raven(detections: Sequence[Detection], path: str | Path, *, begin_file: str, high_freq_hz: float) -> None:
    """A Raven Pro selection table for one audio file (``begin_file`` is that file's name)."""
    atomic_write_text(path, raven_table(detections, begin_file=begin_file, high_freq_hz=high_freq_hz))


def csv_rows(detections: Iterable[Detection], recording_start: datetime | None) -> list[list[str]]:
    rows = []
    for d in detections:
        row = [d.file, _seconds(d.start_s), _seconds(d.end_s), d.label, _confidence(d.confidence)]
        if recording_start is not None:
            row.append((recording_start + timedelta(seconds=d.start_s)).isoformat(timespec="milliseconds"))
        rows.append(row)
    return rows


def write_csv(detections: Sequence[Detection], path: str | Path, *, recording_start: datetime | None = None) -> None:
    """One file's detections; with ``recording_start`` a ``start_time`` column gives each event's clock time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + ((CSV_TIME_COLUMN,) if recording_start is not None else ()))
    writer.writerows(csv_rows(detections, recording_start))
    atomic_write_text(path, buffer.getvalue())


def combine_csv(parts: Sequence[str | Path], path: str | Path) -> int:
    """Concatenate per-file CSV tables into one (a ``start_time`` column appears when any part has it)."""
    header = list(CSV_COLUMNS)
    rows: list[dict] = []
    for part in parts:
        with open(part, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if CSV_TIME_COLUMN in (reader.fieldnames or []) and CSV_TIME_COLUMN not in header:
                header.append(CSV_TIME_COLUMN)
            rows.extend(reader)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return len(rows)


def jsonl_line(detection: Detection, recording_start: datetime | None = None) -> str:
    event = {"file": detection.file, "start_s": round(detection.start_s, 3), "end_s": round(detection.end_s, 3),
             "label": detection.label, "confidence": round(float(detection.confidence), 4)}
    if recording_start is not None:
        event[CSV_TIME_COLUMN] = (recording_start + timedelta(seconds=detection.start_s)).isoformat(
            timespec="milliseconds")
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
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("file", "problem"))
    writer.writerows(errors)
    atomic_write_text(path, buffer.getvalue())
