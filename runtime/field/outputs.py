"""Where one stream run writes: the per-file tables (mirroring the input tree, streamed into temporary files and
renamed when a recording finishes), the per-window scores tables (``--scores``), the JSONL, errors.csv,
analysis_params.csv and the combined tables. The folder is locked for the run (``OutputLock``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from vocalprobe.runtime.core.detections.clock import parse_recorder_timestamp
from vocalprobe.runtime.core.detections.jsonl import JsonlWriter
from vocalprobe.runtime.core.detections.layout import (
    BIRDNET_COLUMNS,
    COMBINED,
    ERRORS_NAME,
    JSONL_NAME,
    KALEIDOSCOPE_COLUMNS,
    PARAMS_NAME,
    PER_FILE_FORMATS,
    SCORE_INDEX,
    SCORE_SUFFIXES,
    SCORES_COMBINED,
    SUFFIXES,
    Detection,
    table_path,
)
from vocalprobe.runtime.core.detections.run_tables import (
    combine_csv,
    combine_lines,
    combine_parquet,
    combine_raven,
    raven_seconds,
    write_errors,
    write_params,
)
from vocalprobe.runtime.core.detections.tables import FileTables, OutputNameError, Recording
from vocalprobe.runtime.core.errors import printable_name
from vocalprobe.runtime.core.out_lock import OutputLock


class Outputs:
    """Where one run writes: per-file tables mirroring the input tree, a JSONL, errors.csv, the combined tables.

    The folder is locked (``OutputLock``) from ``open`` (or ``with outputs:``) to ``close``: one run at a time.
    ``high_freq_hz``: the model's Nyquist frequency (a recording made at a lower rate has a lower band).
    ``scores``: the format of the per-window scores tables (``SCORE_SUFFIXES``), or None for none; they need the
    model's ``classes`` and ``sample_rate``.
    """

    def __init__(self, out_dir: str | Path, formats: Sequence[str], high_freq_hz: float, *, overlap_s: float = 0.0,
                 scores: str | None = None, classes: Sequence[str] = (), sample_rate: int | None = None):
        self.out_dir = Path(out_dir)
        self.formats = tuple(formats)
        self.high_freq_hz = high_freq_hz
        self.overlap_s = overlap_s
        self.scores_format = scores
        self.classes = tuple(classes)
        self.sample_rate = sample_rate
        self._scores = None  # the current recording's ScoresWriter
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
            self.jsonl = JsonlWriter(self.out_dir / JSONL_NAME, jsonl_committed)

    def close(self) -> None:
        self.discard()
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        if self._locked_by_open:
            self.lock.release()
            self._locked_by_open = False

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
        paths = {fmt: table_path(self.out_dir, name, SUFFIXES[fmt]) for fmt in self.formats if fmt in PER_FILE_FORMATS}
        combined = {self.out_dir / COMBINED[fmt] for fmt in self.formats if fmt in COMBINED}
        clash = sorted(str(p.relative_to(self.out_dir)) for p in paths.values() if p in combined)
        if clash:
            raise OutputNameError(name, f"its table {clash[0]} would overwrite the run's combined table; "
                                  "rename the file or move it into a sub-folder")
        if self.scores_format is not None:
            from vocalprobe.runtime.core.detections.scores import ScoresWriter

            self._scores = ScoresWriter(table_path(self.out_dir, name, SCORE_SUFFIXES[self.scores_format]),
                                        self.scores_format, name, self.classes, self.sample_rate)
        band = self.high_freq_hz if source_rate is None else min(self.high_freq_hz, source_rate / 2)
        recording = Recording(name, printable_name(os.path.abspath(path)) if path is not None else name, band,
                              self.overlap_s)
        self._tables = FileTables(paths, recording)

    def row(self, detection: Detection) -> None:
        if self._tables is not None:
            self._tables.write(detection)

    def scores(self, window, probs) -> None:
        """One window's probabilities (``stream --scores``), in the model's class order."""
        if self._scores is not None:
            self._scores.add(window.start, window.end, probs)

    def event(self, detection: Detection) -> None:
        if self.jsonl is not None:
            self.jsonl.write(detection, parse_recorder_timestamp(detection.file))

    def finish_tables(self, name: str, audio_seconds: float) -> list[str]:
        """Rename the recording's tables into place; their paths relative to the folder (+ the JSONL's name)."""
        written = []
        if self._tables is not None:
            self._tables.commit()
            written = [str(p.relative_to(self.out_dir)) for p in self._tables.paths.values()]
            self._tables = None
        if self._scores is not None:
            self._scores.commit()
            written.append(str(self._scores.path.relative_to(self.out_dir)))
            self._scores = None
        self._seconds[name] = audio_seconds
        if self.jsonl is not None:
            written.append(JSONL_NAME)
        return written

    def commit(self, retract: str | Sequence[str] | None = None) -> int | None:
        """Append the recording's held rows; the committed JSONL size (None without a JSONL)."""
        return self.jsonl.commit(retract) if self.jsonl is not None else None

    def discard(self) -> None:
        """Drop what the current recording wrote so far (it failed, or the run stops mid-file)."""
        if self._tables is not None:
            self._tables.abort()
            self._tables = None
        if self._scores is not None:
            self._scores.abort()
            self._scores = None
        if self.jsonl is not None:
            self.jsonl.discard()

    def remove(self, written: Sequence[str]) -> None:
        """Delete the tables an earlier analysis of a file wrote (the file has failed since)."""
        for rel in written:
            if rel != JSONL_NAME:
                (self.out_dir / rel).unlink(missing_ok=True)

    def write_errors(self, failed: Sequence[tuple[str, str]]) -> Path:
        """``errors.csv`` listing ``failed`` (name, problem); none at all when nothing failed (a stale one goes)."""
        path = self.out_dir / ERRORS_NAME
        if failed:
            write_errors(failed, path)
        else:
            path.unlink(missing_ok=True)
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
                combine_raven([(f, s if s is not None else raven_seconds(f)) for f, (_, s) in zip(files, parts)],
                              path)
            elif fmt == "parquet":
                combine_parquet(files, path)
            else:
                combine_lines(files, path, BIRDNET_COLUMNS if fmt == "birdnet-csv" else KALEIDOSCOPE_COLUMNS)
            made.append(path)
        if self.scores_format is not None:
            made.append(self._combine_scores(tables(SCORE_SUFFIXES[self.scores_format])))
        return made

    def _combine_scores(self, parts: Sequence[tuple[str, float | None]]) -> Path:
        """The run's scores table: the per-file ones (those that have one) one after the other."""
        from vocalprobe.runtime.core.detections.scores import score_classes, scores_schema

        path = self.out_dir / SCORES_COMBINED[self.scores_format]
        files = [self.out_dir / t for t, _ in parts if (self.out_dir / t).is_file()]
        classes = score_classes(files[0]) if files else self.classes
        if self.scores_format == "parquet":
            combine_parquet(files, path, scores_schema(classes))
        else:
            combine_lines(files, path, [*SCORE_INDEX, *classes])
        return path

    def this_run_tables(self, names: Sequence[str]) -> Callable[[str], list[tuple[str, float | None]]]:
        def tables(suffix: str) -> list[tuple[str, float | None]]:
            found = [(str(table_path(self.out_dir, n, suffix).relative_to(self.out_dir)), self._seconds.get(n))
                     for n in names]
            return sorted(found)
        return tables

    def write_params(self, params: Sequence[tuple[str, object]]) -> Path:
        path = self.out_dir / PARAMS_NAME
        write_params(params, path)
        return path
