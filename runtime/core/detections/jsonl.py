"""``detections.jsonl``: one event per line, only ever appended (``tail -f`` friendly): a recording's rows once it is
finished, a live stream's as each event is final, and a ``{"retract": name}`` line before the new rows of a
recording analysed again."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, Sequence

from vocalprobe.runtime.core.detections.clock import clock_time
from vocalprobe.runtime.core.detections.layout import CSV_COLUMNS, CSV_TIME_COLUMN, JSONL_NAME, Detection
from vocalprobe.runtime.core.errors import VocalprobeError


def jsonl_line(detection: Detection, recording_start: datetime | None = None) -> str:
    event = dict(zip(CSV_COLUMNS, (detection.file, round(detection.start_s, 3), round(detection.end_s, 3),
                                   detection.label, round(float(detection.confidence), 4))))
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
        self._pending = tempfile.TemporaryFile(dir=self.path.parent, prefix=f".{JSONL_NAME}.", suffix=".tmp")

    def write(self, detection: Detection, recording_start: datetime | None = None) -> None:
        line = (jsonl_line(detection, recording_start) + "\n").encode("utf-8")
        if self._pending is not None:
            self._pending.write(line)
        else:
            self._handle.write(line)
            self._handle.flush()

    def commit(self, retract: str | Sequence[str] | None = None) -> int:
        """Append the held rows (after a retraction of the earlier rows of ``retract``, a name or several),
        durably; returns the new size."""
        for name in [retract] if isinstance(retract, str) else (retract or ()):
            self._handle.write((retract_line(name) + "\n").encode("utf-8"))
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
