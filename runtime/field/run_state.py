"""The journal of `vocalprobe stream --out DIR`: which recordings are done or failed, so a restarted (or watching)
run continues where it stopped and analyses each version of a file exactly once.

It is an SQLite database in WAL mode, one row per recording, so recording a file costs the same at the first file of
a season as at the millionth (the JSON state it replaces was rewritten whole after every file). A file counts as done
only while its size and modification time are what they were when its analysis began: a recording that grew or was
replaced is analysed again.

Two fingerprints keep a folder honest:
- the run's (graph digests, fusion weights, sample rate, resampler, window, hop, final-window policy): what changes
  the numbers. Resuming with another one is refused;
- the output options (formats, min-conf, top-k, merge, ignored classes, scores): they may change between runs.
  Files done earlier keep what they were written with; ``rewrite_outputs`` re-analyses those whose options differ.

The journal also records how many bytes of ``detections.jsonl`` are final, so rows of a file whose commit was cut
short by a kill are dropped, never doubled.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from vocalprobe.runtime.core.detections.layout import JSONL_NAME
from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.errors import VocalprobeError, printable_name

JOURNAL_NAME = ".vocalprobe-journal.sqlite"
JOURNAL_FORMAT = "2"
#: The run state of pre-release vocalprobes (one JSON file): refused, not migrated.
PRE_RELEASE_STATE_NAME = ".vocalprobe-stream-state.json"
DONE, FAILED = "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS options (id INTEGER PRIMARY KEY, json TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS files (
    key TEXT PRIMARY KEY,           -- absolute path of the recording
    name TEXT NOT NULL,             -- how the outputs name it
    size INTEGER, mtime_ns INTEGER, -- the version analysed (NULL: gone before it could be read)
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    detections INTEGER,
    outputs TEXT NOT NULL,          -- JSON list of the paths it wrote, relative to the output folder
    problem TEXT,
    options_id INTEGER REFERENCES options(id),
    updated REAL NOT NULL,
    seconds REAL,                   -- audio seconds of a done recording (the combined Raven table lays them end to end)
    position INTEGER,               -- place in the run's whole input list, before --shard (merge keeps that order)
    source_rate INTEGER,            -- the recording's own sample rate (its tables' band; rethreshold writes them again)
    sha256 TEXT                     -- of the file's bytes when it was recorded (a renamed recording is recognised)
) WITHOUT ROWID;
"""


class StateError(VocalprobeError):
    """An output folder whose journal is unreadable or was written with other numeric settings."""


@dataclass(frozen=True)
class Fingerprint:
    """The version of a recording: a file that grew or was replaced has another one."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> "Fingerprint":
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class FileRecord:
    key: str
    name: str
    status: str  # DONE or FAILED
    fingerprint: Fingerprint | None
    detections: int | None = None
    outputs: tuple[str, ...] = ()
    problem: str | None = None
    options: dict | None = None
    seconds: float | None = None  # audio seconds of a done recording
    position: int | None = None  # place in the whole input list (before --shard); None: not known
    source_rate: int | None = None  # the recording's own sample rate; None: not known
    sha256: str | None = None  # of the file's bytes when recorded; None: not taken (a file gone, an older journal)

    @property
    def wrote_jsonl(self) -> bool:
        return JSONL_NAME in self.outputs


class HasPath(Protocol):
    path: Path
    name: str


def _changed(now: dict, before: dict) -> list[str]:
    return sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))


def _describe(options: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(options.items()))


def read_settings(out_dir: str | Path) -> dict:
    """The run fingerprint a folder's journal was written with (read-only), e.g. to join the folders of shards."""
    path = Path(out_dir) / JOURNAL_NAME
    if not path.is_file():
        raise StateError(f"{out_dir}: no {JOURNAL_NAME}; is it the --out folder of a stream run over files?")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: unreadable journal ({exc})") from exc
    if meta.get("format") != JOURNAL_FORMAT:
        raise StateError(f"{path}: journal format {meta.get('format')!r} (this vocalprobe reads {JOURNAL_FORMAT!r})")
    return json.loads(meta.get("settings") or "{}")


class RunState:
    """The journal of one output folder (open it while holding the folder's ``OutputLock``).

    ``settings``: the run's fingerprint (what changes the numbers); ``options``: the output options of this run.
    """

    def __init__(self, out_dir: str | Path, settings: dict, options: dict | None = None, *,
                 rewrite_outputs: bool = False):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JOURNAL_NAME
        self.settings = settings
        self.options = dict(options or {})
        self.rewrite_outputs = rewrite_outputs
        self.skipped: list[str] = []  # names ``todo`` left out as already done
        self.positions: dict[str, int] = {}  # key -> place in the whole input list (``number``)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if (self.out_dir / PRE_RELEASE_STATE_NAME).exists():
            raise StateError(f"{self.out_dir} holds the run state of a pre-release vocalprobe "
                             f"({PRE_RELEASE_STATE_NAME}); use another --out folder, or delete it to start over")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA page_size=1024")  # a commit rewrites a few pages: small ones spare the card
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; the outputs are fsynced first
            self._db.executescript(_SCHEMA)
            self._check_format()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: unreadable journal ({exc}); use another --out folder, "
                             "or delete this one to start over") from exc
        self._options_id = self._option_id(self.options)

    # -- opening ----------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _check_format(self) -> None:
        found = self._meta("format")
        if found is None:
            self._db.execute("BEGIN")
            self._set_meta("format", JOURNAL_FORMAT)
            self._set_meta("settings", json.dumps(self.settings, sort_keys=True))
            jsonl = self.out_dir / JSONL_NAME  # rows already there (a stdin stream's) are kept as they are
            self._set_meta("jsonl_committed", str(jsonl.stat().st_size if jsonl.exists() else 0))
            self._db.execute("COMMIT")
            return
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        if found != JOURNAL_FORMAT or not {"seconds", "position"} <= columns:
            raise StateError(f"{self.path}: journal format {found!r} (this vocalprobe reads {JOURNAL_FORMAT!r}); "
                             "use the vocalprobe that wrote it, or another --out folder")
        if "source_rate" not in columns:  # a journal of before --scores: its files' rates are not known (NULL)
            self._db.execute("ALTER TABLE files ADD COLUMN source_rate INTEGER")
        if "sha256" not in columns:  # a journal of a vocalprobe before renamed recordings were recognised
            self._db.execute("ALTER TABLE files ADD COLUMN sha256 TEXT")
        before = json.loads(self._meta("settings") or "{}")
        if json_sha256(before) != json_sha256(self.settings):
            raise StateError(f"{self.out_dir} holds results made with other settings (changed: "
                             f"{', '.join(_changed(self.settings, before))}); use another --out folder, "
                             "or delete it to start over")

    def _option_id(self, options: dict) -> int:
        text = json.dumps(options, sort_keys=True)
        self._db.execute("INSERT OR IGNORE INTO options (json) VALUES (?)", (text,))
        return self._db.execute("SELECT id FROM options WHERE json = ?", (text,)).fetchone()[0]

    # -- reading ----------------------------------------------------------------------------------------------
    @staticmethod
    def key(path: str | Path) -> str:
        return printable_name(os.path.abspath(path))

    def _record(self, row: tuple) -> FileRecord:
        key, name, size, mtime_ns, status, detections, outputs, problem, options, seconds, position, rate, sha256 = row
        return FileRecord(key, name, status, Fingerprint(size, mtime_ns) if size is not None else None, detections,
                          tuple(json.loads(outputs)), problem, json.loads(options) if options else None, seconds,
                          position, rate, sha256)

    _SELECT = ("SELECT f.key, f.name, f.size, f.mtime_ns, f.status, f.detections, f.outputs, f.problem, o.json, "
               "f.seconds, f.position, f.source_rate, f.sha256 FROM files f LEFT JOIN options o ON o.id = f.options_id")

    def lookup(self, path: str | Path) -> FileRecord | None:
        row = self._db.execute(self._SELECT + " WHERE f.key = ?", (self.key(path),)).fetchone()
        return self._record(row) if row else None

    def is_done(self, path: str | Path) -> bool:
        """Done or failed on this very version of the file (a failed file is retried once it changes)."""
        row = self._db.execute("SELECT size, mtime_ns, status, options_id FROM files WHERE key = ?",
                               (self.key(path),)).fetchone()
        if row is None:
            return False
        size, mtime_ns, status, options_id = row
        if self.rewrite_outputs and status == DONE and options_id != self._options_id:
            return False
        try:
            return Fingerprint.of(path) == Fingerprint(size, mtime_ns)
        except FileNotFoundError:
            return True  # gone since: nothing left to do

    def number(self, sources: Iterable[HasPath]) -> None:
        """Remember each source's place in the run's whole input list (taken before ``--shard`` splits it), so
        that ``merge`` lays the shards' rows out in the order one run over all the inputs writes them."""
        self.positions = {self.key(s.path): i for i, s in enumerate(sources)}

    def renamed(self, path: str | Path, sha256: str) -> list[FileRecord]:
        """The records of this audio (``sha256``) under other names whose files are gone: ``path`` is that
        recording renamed (or moved), so their rows are to be retracted when it is recorded. A name kept as escapes
        (not UTF-8) cannot be looked for on disk, so it never counts as gone."""
        key = self.key(path)
        rows = self._db.execute(self._SELECT + " WHERE f.sha256 = ? AND f.key != ? ORDER BY f.key", (sha256, key))
        return [r for r in map(self._record, rows) if "\\x" not in r.key and not os.path.lexists(r.key)]

    def records(self) -> list[FileRecord]:
        """Every file's record, with its options, seconds and place, by key."""
        return [self._record(row) for row in self._db.execute(self._SELECT + " ORDER BY f.key")]

    def todo(self, sources: Iterable[HasPath]) -> Iterator[HasPath]:
        """The sources not yet done, lazily (a watched folder never ends); the others are listed in ``skipped``."""
        for source in sources:
            if self.is_done(source.path):
                self.skipped.append(source.name)
            else:
                yield source

    @property
    def jsonl_committed(self) -> int:
        """Bytes of ``detections.jsonl`` that belong to committed files."""
        return int(self._meta("jsonl_committed") or 0)

    def count(self, status: str = DONE) -> int:
        return self._db.execute("SELECT COUNT(*) FROM files WHERE status = ?", (status,)).fetchone()[0]

    def failures(self) -> list[tuple[str, str]]:
        """(name, problem) of every file that failed, in this run or an earlier one."""
        return [tuple(r) for r in self._db.execute(
            "SELECT name, problem FROM files WHERE status = 'failed' ORDER BY name")]

    def partly_read(self) -> list[tuple[str, str]]:
        """(name, why) of every done file that was read only in part (a truncated WAV: the part it holds)."""
        return [tuple(r) for r in self._db.execute(
            "SELECT name, problem FROM files WHERE status = 'done' AND problem IS NOT NULL ORDER BY name")]

    def problems(self) -> list[tuple[str, str]]:
        """What errors.csv lists: the failed files and those read only in part, by name."""
        return [tuple(r) for r in self._db.execute(
            "SELECT name, problem FROM files WHERE problem IS NOT NULL ORDER BY name")]

    def outputs_ending(self, suffix: str) -> list[str]:
        """The outputs done files wrote that end with ``suffix`` (e.g. every per-file CSV table), sorted."""
        found = []
        for (outputs,) in self._db.execute("SELECT outputs FROM files WHERE status = 'done'"):
            found.extend(o for o in json.loads(outputs) if o.endswith(suffix))
        return sorted(found)

    def done_tables(self, suffix: str) -> list[tuple[str, float | None]]:
        """(output ending with ``suffix``, audio seconds of its recording or None) of every done file, by output."""
        found = []
        for outputs, seconds in self._db.execute("SELECT outputs, seconds FROM files WHERE status = 'done'"):
            found.extend((o, seconds) for o in json.loads(outputs) if o.endswith(suffix))
        return sorted(found)

    def other_options(self) -> dict[str, int]:
        """Done files written with output options other than this run's: a description of those options -> count."""
        rows = self._db.execute("SELECT o.json, COUNT(*) FROM files f JOIN options o ON o.id = f.options_id "
                                "WHERE f.status = 'done' AND f.options_id != ? GROUP BY o.json", (self._options_id,))
        found = {}
        for text, n in rows:
            old = json.loads(text)
            found[_describe({k: old.get(k) for k in _changed(self.options, old)})] = n
        return found

    def shard(self) -> tuple[str | None, dict | None, int | None]:
        """The ``--shard i/n`` this folder holds (None: a run over all the inputs), its run's identity
        (``core.shards.run_identity``) and how many files the shard has: what ``merge`` checks."""
        files = self._meta("shard_files")
        run = self._meta("shard_run")
        return self._meta("shard"), json.loads(run) if run else None, int(files) if files is not None else None

    # -- writing ----------------------------------------------------------------------------------------------
    def mark_shard(self, shard: str | None, run: dict | None = None, files: int = 0) -> None:
        """Record which ``--shard i/n`` of which run this folder holds (``shard`` None: all the inputs) and the
        number of files of the shard, so that ``merge`` refuses foreign and unfinished shards. A folder holds one
        shard of one run: another one is refused."""
        known, theirs, _ = self.shard()
        if known == shard and (shard is None or theirs == run):
            if shard is not None:
                self._db.execute("BEGIN")
                self._set_meta("shard_files", str(files))
                self._db.execute("COMMIT")
            return
        if known == shard:
            raise StateError(f"{self.out_dir} holds shard {shard} of a run over other inputs ({theirs['inputs']} "
                             f"file(s), now {run['inputs']}); stream this run's shard into another --out folder")
        if known is not None or self.count(DONE) or self.count(FAILED):
            was = f"shard {known}" if known is not None else "a run over all the inputs"
            now = f"shard {shard}" if shard is not None else "all the inputs"
            raise StateError(f"{self.out_dir} holds the outputs of {was}; stream {now} into another --out folder")
        if shard is None:
            return
        self._db.execute("BEGIN")
        self._set_meta("shard", shard)
        self._set_meta("shard_run", json.dumps(run, sort_keys=True))
        self._set_meta("shard_files", str(files))
        self._db.execute("COMMIT")

    def _write(self, record: FileRecord, options_id: int, jsonl_end: int | None,
               seconds: float | None = None) -> None:
        fp = record.fingerprint
        self._db.execute(
            "INSERT OR REPLACE INTO files (key, name, size, mtime_ns, status, detections, outputs, problem, "
            "options_id, updated, seconds, position, source_rate, sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?)",
            (record.key, record.name, fp.size if fp else None, fp.mtime_ns if fp else None, record.status,
             record.detections, json.dumps(list(record.outputs)), record.problem, options_id, time.time(), seconds,
             record.position if record.position is not None else self.positions.get(record.key),
             record.source_rate, record.sha256))
        if jsonl_end is not None:
            self._set_meta("jsonl_committed", str(jsonl_end))

    def _commit(self, record: FileRecord, jsonl_end: int | None, seconds: float | None = None,
                replaces: Sequence[FileRecord] = ()) -> None:
        self._db.execute("BEGIN")
        try:
            self._write(record, self._options_id, jsonl_end, seconds)
            self._db.executemany("DELETE FROM files WHERE key = ?", [(r.key,) for r in replaces])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def mark_done(self, path: Path, name: str, n_detections: int, outputs: Sequence[str], *,
                  fingerprint: Fingerprint | None = None, jsonl_end: int | None = None,
                  seconds: float | None = None, source_rate: int | None = None, sha256: str | None = None,
                  replaces: Sequence[FileRecord] = (), problem: str | None = None) -> None:
        """``fingerprint``: the version analysed (taken before reading it); ``jsonl_end``: the committed JSONL size;
        ``seconds``: the recording's length in audio seconds; ``source_rate``: its own sample rate; ``sha256``: of
        its bytes; ``replaces``: the records of this recording under its earlier names (``renamed``), deleted in the
        same transaction; ``problem``: why it was read only in part (None: read whole)."""
        fingerprint = fingerprint if fingerprint is not None else Fingerprint.of(path)
        self._commit(FileRecord(self.key(path), name, DONE, fingerprint, n_detections, tuple(outputs), problem,
                                source_rate=source_rate, sha256=sha256), jsonl_end, seconds, replaces)

    def mark_failed(self, path: Path, name: str, problem: str, *, fingerprint: Fingerprint | None = None,
                    jsonl_end: int | None = None, sha256: str | None = None,
                    replaces: Sequence[FileRecord] = ()) -> None:
        if fingerprint is None:
            try:
                fingerprint = Fingerprint.of(path)
            except FileNotFoundError:
                fingerprint = None
        self._commit(FileRecord(self.key(path), name, FAILED, fingerprint, problem=problem, sha256=sha256), jsonl_end,
                     replaces=replaces)

    def merge(self, records: Iterable[FileRecord], *, jsonl_committed: int | None = None) -> None:
        """Write many records in one transaction (a migrated state, or journals of several workers)."""
        self._db.execute("BEGIN")
        try:
            for record in records:
                options_id = self._option_id(record.options) if record.options is not None else self._options_id
                self._write(record, options_id, None, record.seconds)
            if jsonl_committed is not None:
                self._set_meta("jsonl_committed", str(jsonl_committed))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "RunState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
