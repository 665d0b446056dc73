"""One recording's per-window scores table (``stream --scores``; names and columns: ``layout``), written window by
window and read back in chunks by ``rethreshold``, so memory is a chunk of windows whatever the recording's length.

Scores are the model's float32 probabilities: parquet stores them as float32, the CSV as the shortest decimal of
their float64 value, so both read back bit for bit and thresholds compare exactly as they did in the run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vocalprobe.runtime.core.detections.layout import SCORE_INDEX, SCORE_SUFFIXES
from vocalprobe.runtime.core.detections.tables import _AtomicTable, pyarrow_module
from vocalprobe.runtime.core.errors import VocalprobeError

#: Windows held before a parquet row group (or a CSV chunk) is written: fixed, so the bytes never depend on batch
#: size, workers or engine.
CHUNK = 4096


class ScoresError(VocalprobeError):
    """A scores table that cannot be read back: missing, or with other classes than the run's."""


def scores_format() -> str:
    """``stream --scores``'s table format: parquet when pyarrow is importable, else CSV."""
    try:
        pyarrow_module()
    except VocalprobeError:
        return "csv"
    return "parquet"


def scores_schema(classes: Sequence[str]):
    """The parquet scores table's schema: the index typed (times in float64 seconds), float32 scores."""
    pa = pyarrow_module()
    index = [(SCORE_INDEX[0], pa.string()), (SCORE_INDEX[1], pa.float64()), (SCORE_INDEX[2], pa.float64())]
    return pa.schema(index + [(c, pa.float32()) for c in classes])


class ScoresWriter:
    """One recording's scores table, under a temporary name until ``commit`` (``abort`` leaves nothing)."""

    def __init__(self, path: Path, fmt: str, name: str, classes: Sequence[str], sample_rate: int):
        if fmt not in SCORE_SUFFIXES:
            raise ScoresError(f"scores format {fmt!r}: choose from {', '.join(SCORE_SUFFIXES)}")
        self.path, self.fmt, self.name, self.sample_rate = path, fmt, name, sample_rate
        self.classes = tuple(classes)
        self._file = _AtomicTable(path, binary=fmt == "parquet")
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._probs: list[np.ndarray] = []
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._schema = scores_schema(self.classes)
            self._writer = pq.ParquetWriter(self._file.handle, self._schema)
        else:
            self._csv = csv.writer(self._file.handle, lineterminator="\n")
            self._csv.writerow([*SCORE_INDEX, *self.classes])

    def add(self, start: int, end: int, probs: np.ndarray) -> None:
        """One window (first sample, one past its last) and its probabilities, in the model's class order."""
        self._starts.append(start / self.sample_rate)
        self._ends.append(end / self.sample_rate)
        self._probs.append(np.asarray(probs, dtype=np.float32))
        if len(self._starts) >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._starts:
            return
        probs = np.stack(self._probs)
        if self.fmt == "parquet":
            pa = pyarrow_module()
            columns = [pa.array([self.name] * len(self._starts), pa.string()), pa.array(self._starts, pa.float64()),
                       pa.array(self._ends, pa.float64())] + [pa.array(probs[:, i]) for i in range(len(self.classes))]
            self._writer.write_batch(pa.record_batch(columns, schema=self._schema))
        else:
            for start, end, row in zip(self._starts, self._ends, probs.astype(np.float64).tolist()):
                self._csv.writerow([self.name, repr(start), repr(end), *map(repr, row)])
        self._starts, self._ends, self._probs = [], [], []

    def commit(self) -> None:
        self._flush()
        if self.fmt == "parquet":
            self._writer.close()
        self._file.commit()

    def abort(self) -> None:
        self._starts, self._ends, self._probs = [], [], []
        try:
            if self.fmt == "parquet":
                self._writer.close()
        finally:
            self._file.abort()


def score_classes(path: str | Path) -> tuple[str, ...]:
    """The class columns of a scores table (after ``SCORE_INDEX``), in the model's order."""
    path = Path(path)
    if not path.is_file():
        raise ScoresError(f"{path}: scores table missing; re-run `vocalprobe stream` with --scores")
    if path.name.endswith(SCORE_SUFFIXES["parquet"]):
        import pyarrow.parquet as pq

        names = list(pq.read_schema(path).names)
    else:
        with open(path, newline="", encoding="utf-8") as handle:
            names = next(csv.reader(handle), [])
    if tuple(names[:len(SCORE_INDEX)]) != SCORE_INDEX:
        raise ScoresError(f"{path}: not a scores table (its first columns must be {', '.join(SCORE_INDEX)})")
    return tuple(names[len(SCORE_INDEX):])


def score_chunks(path: str | Path, classes: Sequence[str], sample_rate: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A scores table read back in chunks of windows: (first samples, ends, float32 probabilities [windows,
    classes]); refuses a table whose class columns are not ``classes``."""
    path = Path(path)
    if not path.is_file():
        raise ScoresError(f"{path}: scores table missing; re-run `vocalprobe stream` with --scores")
    want = [*SCORE_INDEX, *classes]
    if path.name.endswith(SCORE_SUFFIXES["parquet"]):
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        _check_columns(path, list(table.schema_arrow.names), want)
        for batch in table.iter_batches(batch_size=CHUNK):
            starts = batch.column(1).to_numpy()
            ends = batch.column(2).to_numpy()
            probs = np.column_stack([batch.column(3 + i).to_numpy() for i in range(len(classes))]) if classes else \
                np.zeros((len(starts), 0), np.float32)
            yield _samples(starts, sample_rate), _samples(ends, sample_rate), probs.astype(np.float32, copy=False)
        return
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        _check_columns(path, next(reader, []), want)
        rows: list[list[str]] = []
        for row in reader:
            rows.append(row)
            if len(rows) >= CHUNK:
                yield _csv_chunk(rows, sample_rate)
                rows = []
        if rows:
            yield _csv_chunk(rows, sample_rate)


def _check_columns(path: Path, found: list[str], want: list[str]) -> None:
    if found != want:
        raise ScoresError(f"{path}: columns {', '.join(found)}; expected {', '.join(want)} (the run's classes)")


def _samples(seconds: np.ndarray, sample_rate: int) -> np.ndarray:
    """Window bounds in samples again (they were written as samples / rate, which this inverts exactly)."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * sample_rate).astype(np.int64)


def _csv_chunk(rows: list[list[str]], sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.array([[float(v) for v in row[1:]] for row in rows], dtype=np.float64)
    return (_samples(values[:, 0], sample_rate), _samples(values[:, 1], sample_rate),
            values[:, 2:].astype(np.float32))
