"""Detection tables: one function per format, each taking detections and a path, never touching audio.

- Raven Pro selection table (tab-separated, one per input file), columns ``RAVEN_COLUMNS`` in that order;
- CSV ``file,start_s,end_s,label,confidence`` (+ ``start_time`` when the file name carries the recorder's clock);
- JSONL, one event per line, appended and flushed as events are found (``tail -f`` friendly).

Tables are written atomically (``vocalprobe.runtime.core.atomic``): a killed run never leaves half a table.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterable, Sequence

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


class JsonlWriter:
    """Append events to one JSONL file as they are found, flushing each line.

    With ``keep_files``, opening it keeps only the lines of those files (rewritten atomically): the events of a
    file that was interrupted half-way are dropped, because the resumed run analyses that file again. Without it
    (a stdin stream has nothing to resume) new events are appended to what is there.
    """

    def __init__(self, path: str | Path, keep_files: set[str] | None):
        self.path = Path(path)
        if self.path.exists() and keep_files is not None:
            kept = []
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        if json.loads(line).get("file") in keep_files:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except json.JSONDecodeError:  # the last line of a killed run may be cut short
                        continue
            atomic_write_text(self.path, "".join(kept))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, detection: Detection, recording_start: datetime | None = None) -> None:
        self._handle.write(jsonl_line(detection, recording_start) + "\n")
        self._handle.flush()

    def close(self) -> None:
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
