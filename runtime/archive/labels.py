"""`vocalprobe label import`: reviewed Raven selection tables become annotations on the archive's windows.

A row names its recording by ``Begin Path`` (Raven's multi-file tables, and ``vocalprobe search``'s hits), by
``Begin File``, or, in a single-file table, by the table's own name (``<recording>.Table.1.selections.txt``). In a
reviewed ``search`` hits table (it has ``Score`` and ``Rank`` columns), a row whose times are still those of its
stored window labels that window alone: with overlapping windows its neighbours share half of it, and the reviewer
judged only the hit. Any other row labels the windows it overlaps by at least half of the shorter of the two (a
call clipped by a window edge is not a call in it). Annotations carry the window's own offsets, as hoplite's agile
notebooks write them. Rows that match no recording or window, or carry no label, are reported with their line, never
dropped silently.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vocalprobe.runtime.archive.store import NEGATIVE, POSITIVE, ArchiveDB, ArchiveError, RecordingRow, WindowRow

LABEL_COLUMNS = ("Label", "Annotation", "Class")
POSITIVE_WORDS = {"positive", "pos", "yes", "y", "1", "true", "present"}
NEGATIVE_WORDS = {"negative", "neg", "no", "n", "0", "false", "absent"}
#: Raven's names of a single-file table: ``NAME.Table.1.selections.txt`` or ``NAME.wav.Table01.txt``.
_SINGLE_FILE = re.compile(r"^(?P<recording>.+?)\.Table(?:\.\d+|\d+)\.")
#: Characters no label, path or field may hold (they split rows or columns in some reader).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")


@dataclass
class LabelReport:
    rows: int = 0
    annotations: int = 0  # newly added
    unmatched: list[tuple[str, int, str]] = field(default_factory=list)  # (table, line, why)
    matched: int = 0  # rows that labelled at least one window


class _Recordings:
    def __init__(self, rows: dict[int, RecordingRow]):
        self.by_path = {r.path.resolve(): r for r in rows.values()}
        self.by_name: dict[str, list[RecordingRow]] = {}
        self.by_stem: dict[str, list[RecordingRow]] = {}
        self._found: dict[tuple, RecordingRow | str] = {}
        for r in rows.values():
            self.by_name.setdefault(Path(r.filename).name, []).append(r)
            self.by_stem.setdefault(Path(r.filename).stem, []).append(r)

    def find(self, path_text: str | None, file_text: str | None, table_stem: str | None) -> RecordingRow | str:
        """The recording a row names (or why none); rows of one recording repeat its name, so each name is looked
        up (and its path resolved on disk) once."""
        key = (path_text, file_text, table_stem)
        if key not in self._found:
            self._found[key] = self._find(*key)
        return self._found[key]

    def _find(self, path_text: str | None, file_text: str | None, table_stem: str | None) -> RecordingRow | str:
        if path_text:
            hit = self.by_path.get(Path(path_text).resolve())
            if hit is not None:
                return hit
            file_text = Path(path_text).name
        if file_text:
            found = self.by_name.get(Path(file_text).name, [])
        elif table_stem:
            found = self.by_stem.get(table_stem, []) or self.by_name.get(table_stem, [])
        else:
            return "the table names no recording (no Begin Path / Begin File column, not <recording>.Table.1...)"
        if len(found) == 1:
            return found[0]
        name = path_text or file_text or table_stem
        return (f"no recording {name} in the archive" if not found
                else f"{name} names {len(found)} recordings ({', '.join(r.filename for r in found)}); use Begin Path")


def _table_stem(path: Path) -> str | None:
    found = _SINGLE_FILE.match(path.name)
    return found.group("recording") if found else None


def check_class_name(name: str, where: str) -> str:
    """A class name as stored: no tab, newline or other control character (they break every table it lands in)."""
    if _CONTROL.search(name) or "\t" in name or "\n" in name:
        raise ArchiveError(f"{where}: the label {name!r} holds a control character (tab, newline, ...); fix it")
    return name


def table_rows(table: Path, text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a table: a Raven table is tab-separated without quoting, one row a line (``\n``); a
    ``.csv`` is read with the csv module. A row with another number of fields than the header, or holding a control
    character, is an error naming its line."""
    if table.suffix.lower() == ".csv":
        records = csv.reader(io.StringIO(text, newline=""))
        numbered = ((records.line_num, r) for r in records)
    else:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        numbered = ((i, line.removesuffix("\r").split("\t")) for i, line in enumerate(lines, start=1))
    header = None
    for line, fields in numbered:
        if header is None:
            header = fields
            continue
        if not any(f.strip() for f in fields):
            continue
        bad = next((f for f in fields if _CONTROL.search(f) or "\n" in f or "\t" in f), None)
        if bad is not None:
            raise ArchiveError(f"{table}:{line}: the field {bad!r} holds a control character; fix the table")
        if len(fields) != len(header):
            raise ArchiveError(f"{table}:{line}: {len(fields)} field(s), the header has {len(header)}; fix the table")
        yield line, dict(zip(header, fields))
    if header is None:
        raise ArchiveError(f"{table}: empty table")


def _label_of(value: str, one_class: str | None) -> tuple[str, int] | str:
    text = value.strip()
    if not text:
        return "no label"
    if one_class is None:
        return check_class_name(text, "label"), POSITIVE
    word = text.lower()
    if word in POSITIVE_WORDS:
        return one_class, POSITIVE
    if word in NEGATIVE_WORDS:
        return one_class, NEGATIVE
    return f"label {text!r} is neither positive nor negative (--class {one_class})"


#: Seconds within which a row's times are a stored window's (hit tables carry 3 decimals).
SAME_WINDOW_S = 0.0015


#: The columns that mark a table as ``vocalprobe search``'s hits.
HIT_MARKS = {"Score", "Rank"}


def matching_windows(windows: Sequence[WindowRow], start: float, stop: float, *,
                     hit: bool = False) -> list[WindowRow]:
    """The windows a selection ``start..stop`` labels (``hit``: a row of a hits table; see the module docs)."""
    if hit:
        same = [w for w in windows
                if abs(w.start_s - start) <= SAME_WINDOW_S and abs(w.end_s - stop) <= SAME_WINDOW_S]
        if same:
            return same[:1]
    return [w for w in windows
            if min(w.end_s, stop) - max(w.start_s, start) >= 0.5 * min(w.end_s - w.start_s, stop - start)
            and min(w.end_s, stop) > max(w.start_s, start)]


class WindowIndex:
    """Each recording's windows by offset: read once, sorted by start, and searched by bisection, so a row costs
    the same on a 24-hour recording as on a minute-long one (reading every window of the recording per row cost
    ~30 ms a row on a 1-hour recording). The last ``keep`` recordings asked for stay in memory (three numbers a
    window); tables come grouped by recording."""

    def __init__(self, archive: ArchiveDB, keep: int = 32):
        self.archive = archive
        self.keep = keep
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = OrderedDict()

    def _windows(self, recording_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        found = self._cache.get(recording_id)
        if found is None:
            ids, starts, ends = self.archive.recording_offsets(recording_id)  # by id
            order = np.argsort(starts, kind="stable")  # stored in start order already; ties keep the id order
            longest = float((ends - starts).max()) if len(ids) else 0.0
            found = ids[order], starts[order], ends[order], longest
            self._cache[recording_id] = found
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(recording_id)
        return found

    def near(self, recording_id: int, start: float, stop: float) -> list[WindowRow]:
        """The windows that could match ``start..stop`` (every one that overlaps it or starts within
        ``SAME_WINDOW_S`` of it), in start order; ``matching_windows`` decides among them."""
        ids, starts, ends, longest = self._windows(recording_id)
        lo = int(np.searchsorted(starts, start - longest - SAME_WINDOW_S, side="left"))
        hi = int(np.searchsorted(starts, max(stop, start) + SAME_WINDOW_S, side="right"))
        return [WindowRow(int(ids[i]), recording_id, float(starts[i]), float(ends[i])) for i in range(lo, hi)]


def _header(table: Path, text: str) -> list[str]:
    first = text.split("\n", 1)[0].removesuffix("\r")
    return next(csv.reader([first])) if table.suffix.lower() == ".csv" else first.split("\t")


def import_tables(archive: ArchiveDB, tables: Sequence[str | Path], *, label_column: str | None = None,
                  one_class: str | None = None, recording: str | None = None) -> LabelReport:
    """``recording``: the archived recording of tables that name none (no Begin Path/File, not Raven's naming)."""
    if one_class is not None:
        check_class_name(one_class, "--class")
    recordings = _Recordings(archive.recordings())
    windows_of = WindowIndex(archive)
    report = LabelReport()
    provenance_rows: dict[str, list] = {}
    for table in map(Path, tables):
        try:
            text = table.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            text = table.read_text(encoding="latin-1")
        header = _header(table, text)
        column = label_column if label_column is not None else next((c for c in LABEL_COLUMNS if c in header), None)
        if column is None or column not in header:
            raise ArchiveError(f"{table}: no label column ({label_column or ' / '.join(LABEL_COLUMNS)}; the table "
                               f"has {', '.join(header)}); name it with --label-column")
        for name in ("Begin Time (s)", "End Time (s)"):
            if name not in header:
                raise ArchiveError(f"{table}: not a Raven selection table (no {name!r} column)")
        provenance = f"raven:{table.name}"
        hits_table = HIT_MARKS <= set(header)
        rows = provenance_rows.setdefault(provenance, [])
        stem = recording if recording is not None else _table_stem(table)
        for line, row in table_rows(table, text):
            report.rows += 1
            label = _label_of(row.get(column) or "", one_class)
            if isinstance(label, str):
                report.unmatched.append((str(table), line, label))
                continue
            found = recordings.find(row.get("Begin Path"), row.get("Begin File"), stem)
            if isinstance(found, str):
                report.unmatched.append((str(table), line, found))
                continue
            try:
                begin, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
                offset = float(row["File Offset (s)"]) if row.get("File Offset (s)") else begin
            except ValueError:
                report.unmatched.append((str(table), line, "times are not numbers"))
                continue
            if not all(math.isfinite(v) for v in (begin, end, offset)) or end < begin:
                raise ArchiveError(f"{table}:{line}: times {begin}..{end} (offset {offset}) are not a finite span; "
                                   "fix the table")
            start, stop = offset, offset + (end - begin)
            windows = matching_windows(windows_of.near(found.id, start, stop), start, stop, hit=hits_table)
            if not windows:
                report.unmatched.append((str(table), line, f"no window of {found.filename} covers "
                                                           f"{start:.3f}-{stop:.3f} s"))
                continue
            report.matched += 1
            rows.extend((found.id, w.start_s, w.end_s, label[0], label[1]) for w in windows)
    for provenance, rows in provenance_rows.items():
        report.annotations += archive.add_annotations(rows, provenance)
    return report
