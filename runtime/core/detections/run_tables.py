"""The tables of a whole run, written once its recordings are done: the combined tables, streamed from the
per-recording ones one file at a time, ``errors.csv`` and ``analysis_params.csv`` (names: ``layout``).

The combined Raven table numbers selections across files and gives ``Begin Time (s)`` on the files laid end to end,
as Raven opens a list of files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from vocalprobe.runtime.core.atomic import atomic_open, atomic_write_text
from vocalprobe.runtime.core.detections.layout import (
    TABLE_COLUMNS,
    ERRORS_COLUMNS,
    PARAMS_COLUMNS,
    RAVEN_COLUMNS,
)
from vocalprobe.runtime.core.detections.tables import parquet_schema, seconds_text
from vocalprobe.runtime.core.errors import VocalprobeError


def _header(path: str | Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def combine_csv(parts: Sequence[str | Path], path: str | Path) -> int:
    """Concatenate per-file CSV tables into one (``TABLE_COLUMNS``; parts written before ``start_time`` was always
    there get it empty)."""
    header = list(TABLE_COLUMNS)
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
                    cells[begin] = seconds_text(offset + start_in_file)
                    cells[end] = seconds_text(offset + start_in_file + length)
                    out.write("\t".join(cells) + "\n")
            offset += seconds
    return n


def combine_parquet(parts: Sequence[str | Path], path: str | Path, schema=None) -> int:
    """Concatenate per-file parquet tables of one ``schema`` (default: the detections'), batch by batch."""
    import pyarrow.parquet as pq

    n = 0
    schema = parquet_schema() if schema is None else schema
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


def raven_seconds(raven_table: str | Path) -> float:
    """A recording's length when no journal knows it (done by an older vocalprobe): its last selection's end."""
    end = RAVEN_COLUMNS.index("End Time (s)")
    last = 0.0
    with open(raven_table, encoding="utf-8") as handle:
        handle.readline()
        for line in handle:
            last = max(last, float(line.split("\t")[end]))
    return last


def write_params(params: Sequence[tuple[str, object]], path: str | Path) -> None:
    """``analysis_params.csv``: what a run was made with (``parameter,value``), for readers of its tables."""
    _write_small_csv(path, PARAMS_COLUMNS, params)


def write_errors(errors: Sequence[tuple[str, str]], path: str | Path) -> None:
    """The inputs a run could not read: ``file,problem``."""
    _write_small_csv(path, ERRORS_COLUMNS, errors)


def _write_small_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A table small enough to build in memory, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
