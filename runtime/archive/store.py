"""An archive database in perch-hoplite's format, written with sqlite3 and usearch (hoplite itself is not needed).

The folder holds ``hoplite.sqlite`` (hoplite's tables: ``hoplite_metadata``, ``deployments``, ``recordings``,
``windows``, ``annotations``), ``usearch.index`` (one vector per window, keyed by window id) and vocalprobe's own
table ``vocalprobe_recordings`` (audio sha256 and window count of every finished recording), which hoplite ignores.
The archive of one ``embed --shard i/n`` run also records each recording's place in the whole input list
(``vocalprobe_positions``, and the shard under the ``vocalprobe_shard`` metadata key): ``merge --db`` needs both to
lay the shards out the way one run numbers them; a one-run archive leaves that table empty.

Safety: a writer holds the folder's lock (``OutputLock``). Every recording is one SQLite transaction: a killed run
leaves either all of a recording's windows or none. The index is saved (atomically) after a commit at most every
``checkpoint_s`` and on close, so it only ever holds committed windows; a recording committed after the last save of
a killed run has windows without vectors, and ``open_writer`` deletes it so that it is embedded again.

Every save notes what the index file holds in ``vocalprobe_index`` (its sha256 and size, the number and a digest of
its window ids; the last two saves are kept, since a kill can fall between the note and the file's replacement).
A reader checks the file and SQLite's window ids against that note on open and refuses an archive whose windows lack
vectors, whose vectors lack windows, or whose index is damaged or another archive's (``ArchiveIndexError``; the
notes and that check are ``index_notes.py``), so a
search never answers short. The note also keeps the file's mtime: a reader hashes the file only when its size and
mtime are not those of a save (hashing costs ~2 s per GB, more than the rest of opening), so a change that keeps
both (bit rot under the file system) is caught by ``embed``, which always hashes it, not by readers. ``embed``
into it repairs: an index it cannot trust is dropped and every recording is embedded again; a trusted one keeps its
vectors and only the recordings it lacks are embedded again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vocalprobe.runtime.archive import index_notes, vectors
from vocalprobe.runtime.archive.errors import ArchiveError
from vocalprobe.runtime.archive.index_notes import INDEX_NAME
from vocalprobe.runtime.core.out_lock import OutputLock

log = logging.getLogger(__name__)

SQLITE_NAME = "hoplite.sqlite"
#: hoplite_metadata keys: hoplite's, and vocalprobe's own (what a reader needs to trust the vectors).
USEARCH_CONFIG_KEY, MODEL_CONFIG_KEY, AUDIO_SOURCES_KEY, VOCALPROBE_KEY, SHARD_KEY, RUN_KEY = (
    "usearch_config", "model_config", "audio_sources", "vocalprobe", "vocalprobe_shard", "vocalprobe_shard_run")
#: A shard's: false from the start of each ``embed --shard`` run until it has tried every input of its shard.
SHARD_FINISHED_KEY = "vocalprobe_shard_finished"
#: hoplite's LabelType values.
NEGATIVE, POSITIVE = 0, 1

# perch-hoplite 1.0.2's schema (perch_hoplite/db/sqlite_usearch_impl.py), verbatim.
_HOPLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS hoplite_metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, project TEXT NOT NULL, latitude REAL, longitude REAL,
    UNIQUE (name, project));
CREATE TABLE IF NOT EXISTS recordings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, filename TEXT NOT NULL, datetime TEXT,
    deployment_id INTEGER REFERENCES deployments(id) ON DELETE CASCADE,
    UNIQUE (id, deployment_id), UNIQUE (filename, deployment_id));
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id INTEGER NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
    offsets FLOAT_LIST NOT NULL, UNIQUE (id, recording_id, offsets));
CREATE TABLE IF NOT EXISTS annotations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id INTEGER NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
    offsets FLOAT_LIST NOT NULL, label TEXT NOT NULL, label_type INTEGER NOT NULL, provenance TEXT NOT NULL,
    UNIQUE (id, recording_id, offsets));
CREATE INDEX IF NOT EXISTS idx_annotations ON annotations(recording_id, offsets, label, label_type, provenance);
CREATE INDEX IF NOT EXISTS idx_labels ON annotations(label, label_type, provenance);
CREATE INDEX IF NOT EXISTS idx_recordings_deployment_id ON recordings(deployment_id);
CREATE INDEX IF NOT EXISTS idx_windows_recording_id ON windows(recording_id);
"""
_VOCALPROBE_SCHEMA = """
CREATE TABLE IF NOT EXISTS vocalprobe_recordings (
    recording_id INTEGER PRIMARY KEY REFERENCES recordings(id) ON DELETE CASCADE,
    sha256 TEXT NOT NULL, n_windows INTEGER NOT NULL, audio_seconds REAL NOT NULL);
CREATE INDEX IF NOT EXISTS idx_vocalprobe_sha256 ON vocalprobe_recordings(sha256);
CREATE TABLE IF NOT EXISTS vocalprobe_positions (
    recording_id INTEGER PRIMARY KEY REFERENCES recordings(id) ON DELETE CASCADE, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vocalprobe_index (
    save INTEGER PRIMARY KEY, n_vectors INTEGER NOT NULL, keys_sha256 TEXT NOT NULL, file_sha256 TEXT NOT NULL,
    file_size INTEGER NOT NULL, file_mtime_ns INTEGER);
"""


def offsets_blob(start_s: float, end_s: float) -> bytes:
    """hoplite's FLOAT_LIST: little-endian float64 values."""
    return np.array([start_s, end_s], dtype="<f8").tobytes()


def offsets_of(blob: bytes) -> tuple[float, float]:
    start, end = np.frombuffer(blob, dtype="<f8")[:2]
    return float(start), float(end)


@dataclass(frozen=True)
class WindowRow:
    id: int
    recording_id: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class RecordingRow:
    id: int
    filename: str
    deployment: str
    project: str
    path: Path  # the audio file: the project's base_path (audio_sources) / filename


@dataclass(frozen=True)
class FinishedRecording:
    """A recording whose windows are all stored, with what replaying it into another archive needs."""

    id: int
    filename: str
    datetime: str | None
    deployment: str
    project: str
    sha256: str
    n_windows: int
    audio_seconds: float
    position: int | None  # its place in the whole input list (a shard's archive); None in a one-run archive


@dataclass(frozen=True)
class AnnotationRow:
    recording_id: int
    start_s: float
    end_s: float
    label: str
    label_type: int  # NEGATIVE | POSITIVE
    provenance: str


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.is_file():
            more = f" but {INDEX_NAME} is" if (path.parent / INDEX_NAME).exists() else ""
            raise ArchiveError(f"{path.parent}: no archive database here ({SQLITE_NAME} missing{more}); "
                               "restore it from a copy, or embed into a new --db folder with `vocalprobe embed`")
        db = sqlite3.connect(f"file:{path.as_posix()}?mode=ro", uri=True)
    else:
        db = sqlite3.connect(path.as_posix(), isolation_level=None)  # explicit BEGIN/COMMIT
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # a file that is not SQLite fails here
    return db


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> ArchiveError:
    return ArchiveError(f"{path}: not a readable archive database ({exc}); restore it from a copy, or embed into a "
                        "new --db folder")


class ArchiveDB:
    """One archive folder. ``ArchiveDB.open_writer`` (locked, repaired) or ``ArchiveDB.open_reader``."""

    def __init__(self, folder: Path, db: sqlite3.Connection, index, lock: OutputLock | None,
                 checkpoint_s: float = 60.0):
        self.folder = folder
        self.db = db
        self.index = index
        self.lock = lock
        self.checkpoint_s = checkpoint_s
        self._dirty = False
        self._saved_at = time.monotonic()
        self._pending_keys: list[np.ndarray] = []

    # -- opening ---------------------------------------------------------------------------------------------------

    @classmethod
    def open_writer(cls, folder: str | Path, *, checkpoint_s: float = 60.0, repair: bool = True) -> "ArchiveDB":
        """The archive, locked for writing. ``repair``: make SQLite and the index agree first (``embed``); without
        it (adding annotations), an archive whose index does not match is refused as a reader refuses it."""
        folder = Path(folder)
        lock = OutputLock(folder).acquire()
        try:
            try:
                if not repair:  # an archive to annotate, not one to start
                    _connect(folder / SQLITE_NAME, readonly=True).close()
                db = _connect(folder / SQLITE_NAME, readonly=False)
                db.executescript(_HOPLITE_SCHEMA + _VOCALPROBE_SCHEMA)
                archive = cls(folder, db, None, lock, checkpoint_s)
                config = archive.metadata().get(USEARCH_CONFIG_KEY)
                if config is None and not repair:
                    raise ArchiveError(f"{folder}: the database holds no embeddings yet")
                if not repair:
                    index_notes.check_index(db, folder, config)
                    archive.index = vectors.view_index(folder / INDEX_NAME, config)
                elif config is not None:
                    archive._open_trusted_index(config)
                    archive._repair()
            except sqlite3.DatabaseError as exc:
                raise _unreadable(folder / SQLITE_NAME, exc) from exc
        except BaseException:
            lock.release()
            raise
        return archive

    @classmethod
    def open_reader(cls, folder: str | Path) -> "ArchiveDB":
        """The archive read-only, once its index is checked against SQLite's windows (``index_notes.check_index``)."""
        folder = Path(folder)
        try:
            db = _connect(folder / SQLITE_NAME, readonly=True)
            archive = cls(folder, db, None, None)
            config = archive.metadata().get(USEARCH_CONFIG_KEY)
            if config is None:
                raise ArchiveError(f"{folder}: the database holds no embeddings yet")
            index_notes.check_index(db, folder, config)
        except sqlite3.DatabaseError as exc:
            raise _unreadable(folder / SQLITE_NAME, exc) from exc
        archive.index = vectors.view_index(folder / INDEX_NAME, config)
        return archive

    def close(self) -> None:
        if self.lock is not None and self.db.in_transaction:  # a recording left open: it is not kept
            self.abort_recording()
        if self.lock is not None and self._dirty:
            self.save_index()
        self.db.close()
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> "ArchiveDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_trusted_index(self, config: dict[str, Any]) -> None:
        """The index file when this archive saved it; else (none, damaged, foreign) a new empty one, so that every
        recording is embedded again."""
        path = self.folder / INDEX_NAME
        if index_notes.saved_note(self.db, path, hash_always=True) is not None:
            self.index = vectors.load_index(path, config)
            return
        if path.exists():
            log.warning("%s is not the index this archive saved (damaged, copied from another archive, or written "
                        "before index checksums): it is dropped and every recording is embedded again", path)
        self.index = vectors.new_index(config)
        self._dirty = True  # the note and file are written on close, even if nothing is embedded

    def _repair(self) -> None:
        """Make SQLite and the index agree after a killed run: recordings with windows the index lacks are deleted
        (embedded again), vectors of windows SQLite does not hold are dropped."""
        stored = vectors.index_keys(self.index)
        ids = index_notes.window_ids(self.db)
        missing = np.setdiff1d(ids, stored)
        if missing.size:
            placeholders = ",".join("?" * min(len(missing), 900))
            broken: set[int] = set()
            for start in range(0, len(missing), 900):
                chunk = [int(i) for i in missing[start:start + 900]]
                query = f"SELECT DISTINCT recording_id FROM windows WHERE id IN ({placeholders[:2 * len(chunk) - 1]})"
                broken.update(r[0] for r in self.db.execute(query, chunk))
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM recordings WHERE id = ?", [(i,) for i in sorted(broken)])
            self.db.execute("COMMIT")
            log.warning("%d recording(s) of an interrupted run were not indexed; they are embedded again",
                        len(broken))
        extra = np.setdiff1d(stored, ids)
        if extra.size:
            self.index.remove(extra)
            self._dirty = True

    # -- metadata --------------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM hoplite_metadata")}

    def set_metadata(self, key: str, value: Any) -> None:
        self.db.execute("INSERT INTO hoplite_metadata (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    def initialise(self, settings: dict[str, Any], model_config: dict[str, Any]) -> None:
        """First use: write the settings; later uses: refuse other settings (another graph, other windows)."""
        known = self.metadata().get(VOCALPROBE_KEY)
        if known is not None:
            self._refuse_other_settings(known, settings)
            return
        self.db.execute("BEGIN")
        self.set_metadata(USEARCH_CONFIG_KEY, vectors.usearch_config(settings["embedding_dim"]))
        self.set_metadata(VOCALPROBE_KEY, settings)
        self.set_metadata(MODEL_CONFIG_KEY, model_config)
        self.db.execute("COMMIT")
        self.index = vectors.new_index(self.metadata()[USEARCH_CONFIG_KEY])  # a file left here is not this one's
        self._dirty = True

    def _refuse_other_settings(self, known: dict[str, Any], settings: dict[str, Any]) -> None:
        """Vectors of another graph, or of other windows, cannot join the ones this archive holds."""
        theirs, ours = known["graph_sha256"], settings["graph_sha256"]
        if theirs != ours:
            raise ArchiveError(f"{self.folder} holds embeddings of another graph (sha256 {theirs[:12]}..., "
                               f"{known.get('graph_file', '?')}); this graph's sha256 is {ours[:12]}...: use "
                               "another --db folder")
        fixed = ("window_samples", "hop_samples", "final_window", "sample_rate")
        changed = [f"{k} {known[k]} -> {settings[k]}" for k in fixed if known.get(k) != settings[k]]
        if changed:
            raise ArchiveError(f"{self.folder} was embedded with other windows ({'; '.join(changed)}); use the "
                               "same --window/--hop/--final-window, or another --db folder")

    def mark_shard(self, shard: str | None, run: dict[str, Any] | None = None) -> None:
        """Record which ``--shard i/n`` this archive holds (None: all the inputs); a folder holds one of them.
        ``run``: the whole run's identity (its input list's digest and length), which ``merge --db`` compares."""
        known = self.metadata().get(SHARD_KEY)
        if known == shard and shard is not None and run is not None:
            theirs = self.metadata().get(RUN_KEY)
            if theirs is not None and theirs != run:
                raise ArchiveError(f"{self.folder} holds shard {shard} of a run over other inputs ({theirs['inputs']} "
                                   f"file(s), now {run['inputs']}); embed this run's shard into another --db folder")
            self.db.execute("BEGIN")
            if theirs is None:
                self.set_metadata(RUN_KEY, run)
            self.set_metadata(SHARD_FINISHED_KEY, False)
            self.db.execute("COMMIT")
            return
        if known == shard:
            return
        if known is not None or self.count_recordings():
            was = f"shard {known}" if known is not None else "a run over all the inputs"
            now = f"shard {shard}" if shard is not None else "all the inputs"
            raise ArchiveError(f"{self.folder} holds {was}; embed {now} into another --db folder")
        self.db.execute("BEGIN")
        self.set_metadata(SHARD_KEY, shard)
        if shard is not None and run is not None:
            self.set_metadata(RUN_KEY, run)
            self.set_metadata(SHARD_FINISHED_KEY, False)
        self.db.execute("COMMIT")

    def mark_shard_finished(self) -> None:
        """A shard's ``embed`` run tried every input of its shard (embedded, skipped or failed): ``merge --db``
        refuses a shard without this (stopped by Ctrl-C or a kill, and not run again)."""
        if self.metadata().get(SHARD_FINISHED_KEY) is False:
            self.db.execute("BEGIN")
            self.set_metadata(SHARD_FINISHED_KEY, True)
            self.db.execute("COMMIT")

    def settings(self) -> dict[str, Any]:
        meta = self.metadata()
        if VOCALPROBE_KEY not in meta:
            raise ArchiveError(f"{self.folder}: not a vocalprobe archive (no '{VOCALPROBE_KEY}' metadata)")
        return meta[VOCALPROBE_KEY]

    def audio_globs(self) -> list[dict[str, Any]]:
        """hoplite's ``audio_sources``: where each project's files are (its notebooks load audio from there)."""
        return (self.metadata().get(AUDIO_SOURCES_KEY) or {"audio_globs": []})["audio_globs"]

    def set_audio_globs(self, globs: Sequence[dict[str, Any]]) -> None:
        self.db.execute("BEGIN")
        self.set_metadata(AUDIO_SOURCES_KEY, {"audio_globs": list(globs)})
        self.db.execute("COMMIT")

    def add_audio_source(self, dataset_name: str, base_path: Path) -> None:
        """Record (or move) where project ``dataset_name``'s files are."""
        globs = [g for g in self.audio_globs() if g["dataset_name"] != dataset_name]
        globs.append({"dataset_name": dataset_name, "base_path": str(base_path.resolve()), "file_glob": "**/*",
                      "min_audio_len_s": 0.0, "target_sample_rate_hz": -2, "shard_len_s": None,
                      "max_shards_per_file": None})
        self.set_audio_globs(globs)

    # -- writing one recording -------------------------------------------------------------------------------------

    def finished_sha256(self, sha256: str) -> str | None:
        """The filename of a finished recording with this audio, if any."""
        row = self.db.execute("SELECT r.filename FROM vocalprobe_recordings v JOIN recordings r ON r.id = "
                              "v.recording_id WHERE v.sha256 = ? LIMIT 1", (sha256,)).fetchone()
        return None if row is None else row[0]

    def finished(self, filename: str, deployment: str, project: str) -> str | None:
        """The sha256 of the finished recording of that name, or None."""
        row = self.db.execute(
            "SELECT v.sha256 FROM recordings r JOIN deployments d ON d.id = r.deployment_id JOIN "
            "vocalprobe_recordings v ON v.recording_id = r.id WHERE r.filename = ? AND d.name = ? AND d.project = ?",
            (filename, deployment, project)).fetchone()
        return None if row is None else row[0]

    def begin_recording(self, filename: str, deployment: str, project: str, datetime_iso: str | None) -> int:
        """Open the recording's transaction; an earlier version of it (other audio) is replaced."""
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO deployments (name, project) VALUES (?, ?) ON CONFLICT (name, project) "
                        "DO NOTHING", (deployment, project))
        (deployment_id,) = self.db.execute("SELECT id FROM deployments WHERE name = ? AND project = ?",
                                           (deployment, project)).fetchone()
        old = self.db.execute("SELECT id FROM recordings WHERE filename = ? AND deployment_id = ?",
                              (filename, deployment_id)).fetchone()
        if old is not None:
            ids = np.array([r[0] for r in self.db.execute("SELECT id FROM windows WHERE recording_id = ?", old)])
            self.db.execute("DELETE FROM recordings WHERE id = ?", old)
            self._removed = ids
        else:
            self._removed = np.zeros(0, np.int64)
        cursor = self.db.execute("INSERT INTO recordings (filename, datetime, deployment_id) VALUES (?, ?, ?)",
                                 (filename, datetime_iso, deployment_id))
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'windows'").fetchone()
        self._next_id = (row[0] if row else 0) + 1
        self._pending_keys = []
        return int(cursor.lastrowid)

    def add_windows(self, recording_id: int, offsets: Sequence[tuple[float, float]], embeddings: np.ndarray) -> None:
        keys = np.arange(self._next_id, self._next_id + len(offsets), dtype=np.int64)
        self._next_id += len(offsets)
        self.db.executemany("INSERT INTO windows (id, recording_id, offsets) VALUES (?, ?, ?)",
                            [(int(k), recording_id, offsets_blob(s, e)) for k, (s, e) in zip(keys, offsets)])
        # One thread: usearch's concurrent insertion builds another graph on every run, so the approximate
        # search of two archives of the same vectors in the same order could differ (workers, shards, Ray).
        vectors.add_vectors(self.index, keys, np.ascontiguousarray(embeddings, dtype=np.float32))
        self._pending_keys.append(keys)

    def commit_recording(self, recording_id: int, sha256: str, n_windows: int, audio_seconds: float,
                         position: int | None = None) -> None:
        """``position``: the recording's place in the whole input list, kept by a shard's archive."""
        self.db.execute("INSERT INTO vocalprobe_recordings (recording_id, sha256, n_windows, audio_seconds) "
                        "VALUES (?, ?, ?, ?)", (recording_id, sha256, n_windows, audio_seconds))
        if position is not None:
            self.db.execute("INSERT INTO vocalprobe_positions (recording_id, position) VALUES (?, ?)",
                            (recording_id, int(position)))
        self.db.execute("COMMIT")
        if self._removed.size:
            self.index.remove(self._removed)
        self._pending_keys = []
        self._dirty = True
        if time.monotonic() - self._saved_at >= self.checkpoint_s:
            self.save_index()

    def abort_recording(self) -> None:
        self.db.execute("ROLLBACK")
        for keys in self._pending_keys:
            self.index.remove(keys)
        self._pending_keys = []

    def save_index(self) -> None:
        keys = vectors.index_keys(self.index)
        vectors.save_index(self.index, self.folder / INDEX_NAME, lambda tmp: index_notes.note_index(self.db, keys, tmp))
        self._dirty = False
        self._saved_at = time.monotonic()

    # -- reading ---------------------------------------------------------------------------------------------------

    def count_recordings(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM vocalprobe_recordings").fetchone()[0])

    def count_windows(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM windows").fetchone()[0])

    def windows(self, ids: Sequence[int] | None = None) -> list[WindowRow]:
        if ids is None:
            rows = self.db.execute("SELECT id, recording_id, offsets FROM windows ORDER BY id")
            return [WindowRow(i, r, *offsets_of(o)) for i, r, o in rows]
        by_id = {}
        for start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[start:start + 900]]
            query = f"SELECT id, recording_id, offsets FROM windows WHERE id IN ({','.join('?' * len(chunk))})"
            by_id.update({i: WindowRow(i, r, *offsets_of(o)) for i, r, o in self.db.execute(query, chunk)})
        return [by_id[int(i)] for i in ids]

    def iter_window_batches(self, batch: int = 65_536) -> Iterator[tuple[list[WindowRow], np.ndarray]]:
        """Every window with its stored vector, ``batch`` at a time (memory bounded by the batch)."""
        last = 0
        while True:
            rows = [WindowRow(i, r, *offsets_of(o)) for i, r, o in self.db.execute(
                "SELECT id, recording_id, offsets FROM windows WHERE id > ? ORDER BY id LIMIT ?", (last, batch))]
            if not rows:
                return
            last = rows[-1].id
            yield rows, self.vectors([w.id for w in rows])

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return vectors.get_vectors(self.index, np.asarray(ids, dtype=np.int64))

    def recordings(self) -> dict[int, RecordingRow]:
        bases = {g["dataset_name"]: Path(g["base_path"]) for g in self.audio_globs()}
        out = {}
        for rid, filename, name, project in self.db.execute(
                "SELECT r.id, r.filename, d.name, d.project FROM recordings r JOIN deployments d "
                "ON d.id = r.deployment_id"):
            base = bases.get(project)
            out[rid] = RecordingRow(rid, filename, name, project, base / filename if base else Path(filename))
        return out

    def finished_recordings(self) -> list[FinishedRecording]:
        """Every finished recording, by id (the order the archive was written in)."""
        rows = self.db.execute(
            "SELECT r.id, r.filename, r.datetime, d.name, d.project, v.sha256, v.n_windows, v.audio_seconds, "
            "p.position FROM recordings r JOIN deployments d ON d.id = r.deployment_id JOIN vocalprobe_recordings v "
            "ON v.recording_id = r.id LEFT JOIN vocalprobe_positions p ON p.recording_id = r.id ORDER BY r.id")
        return [FinishedRecording(*row) for row in rows]

    def recording_windows(self, recording_id: int) -> list[WindowRow]:
        rows = self.db.execute("SELECT id, recording_id, offsets FROM windows WHERE recording_id = ? ORDER BY id",
                               (recording_id,))
        return [WindowRow(i, r, *offsets_of(o)) for i, r, o in rows]

    def recording_offsets(self, recording_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, start_s, end_s)`` of a recording's windows as arrays, by id (``recording_windows`` without a row
        object per window: a 24-h recording has ~86,000)."""
        rows = self.db.execute("SELECT id, offsets FROM windows WHERE recording_id = ? ORDER BY id",
                               (recording_id,)).fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.frombuffer(b"".join(r[1][:16] for r in rows), dtype="<f8").reshape(len(rows), 2)
        return ids, offsets[:, 0].astype(np.float64), offsets[:, 1].astype(np.float64)

    # -- annotations -----------------------------------------------------------------------------------------------

    def add_annotations(self, rows: Sequence[tuple[int, float, float, str, int]], provenance: str) -> int:
        """``(recording_id, start_s, end_s, label, label_type)`` rows; an identical annotation is not added twice."""
        added = 0
        self.db.execute("BEGIN")
        for recording_id, start, end, label, label_type in rows:
            blob = offsets_blob(start, end)
            exists = self.db.execute("SELECT 1 FROM annotations WHERE recording_id = ? AND offsets = ? AND label = ? "
                                     "AND label_type = ? AND provenance = ?",
                                     (recording_id, blob, label, label_type, provenance)).fetchone()
            if exists is None:
                self.db.execute("INSERT INTO annotations (recording_id, offsets, label, label_type, provenance) "
                                "VALUES (?, ?, ?, ?, ?)", (recording_id, blob, label, label_type, provenance))
                added += 1
        self.db.execute("COMMIT")
        return added

    def annotation_rows(self) -> list[AnnotationRow]:
        """Every annotation as stored (on a recording's offsets), in the order they were added."""
        rows = self.db.execute("SELECT recording_id, offsets, label, label_type, provenance FROM annotations "
                               "ORDER BY id")
        return [AnnotationRow(rid, *offsets_of(blob), label, int(t), p) for rid, blob, label, t, p in rows]

    def annotations(self) -> list[tuple[int, str, int]]:
        """``(window_id, label, label_type)`` of every annotation on a stored window (same recording and offsets,
        the way hoplite's agile notebooks label windows)."""
        rows = self.db.execute("SELECT w.id, a.label, a.label_type FROM annotations a JOIN windows w ON "
                               "w.recording_id = a.recording_id AND w.offsets = a.offsets ORDER BY w.id, a.label")
        return [(int(i), label, int(t)) for i, label, t in rows]
