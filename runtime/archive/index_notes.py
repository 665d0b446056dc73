"""What the archive's vector index holds, noted in SQLite at every save, and the check every reader makes of it.

Each save writes a row of ``vocalprobe_index`` (the file's sha256, size and mtime, the number and a digest of its
window ids; the last two saves are kept, since a kill can fall between the note and the file's replacement). A
reader compares the file and SQLite's window ids with those notes (``check_index``); ``embed`` trusts an index file
only when it is one of the saves (``saved_note`` with ``hash_always``). Why the file is hashed only when its size or
mtime changed: ``runtime/archive/store.py``'s module docstring.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vocalprobe.runtime.archive import vectors
from vocalprobe.runtime.archive.errors import ArchiveIndexError
from vocalprobe.runtime.core.digests import file_sha256

INDEX_NAME = "usearch.index"


@dataclass(frozen=True)
class IndexNote:
    """What one save of the index wrote: ``vocalprobe_index``'s row."""

    n_vectors: int
    keys_sha256: str
    file_sha256: str
    file_size: int
    file_mtime_ns: int | None = None  # None: noted before mtimes were (the file is hashed)


def index_notes(db: sqlite3.Connection) -> list[IndexNote]:
    """The notes of the last saves of the index, latest first (none: never saved, or an older vocalprobe)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(vocalprobe_index)")}
    if not columns:  # no such table: written before the notes
        return []
    mtime = "file_mtime_ns" if "file_mtime_ns" in columns else "NULL"
    rows = db.execute(f"SELECT n_vectors, keys_sha256, file_sha256, file_size, {mtime} FROM vocalprobe_index "
                      "ORDER BY save DESC").fetchall()
    return [IndexNote(*row) for row in rows]


def note_index(db: sqlite3.Connection, keys: np.ndarray, tmp: Path) -> None:
    """Note the saved file (``tmp``, complete and synced; renaming it keeps its size and mtime)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(vocalprobe_index)")}
    if "file_mtime_ns" not in columns:  # an archive noted before mtimes were
        db.execute("ALTER TABLE vocalprobe_index ADD COLUMN file_mtime_ns INTEGER")
    stat = tmp.stat()
    db.execute("BEGIN")
    db.execute("INSERT INTO vocalprobe_index (n_vectors, keys_sha256, file_sha256, file_size, file_mtime_ns) "
               "VALUES (?, ?, ?, ?, ?)", (len(keys), vectors.keys_sha256(keys), file_sha256(tmp), stat.st_size,
                                          stat.st_mtime_ns))
    db.execute("DELETE FROM vocalprobe_index WHERE save < (SELECT MAX(save) FROM vocalprobe_index) - 1")
    db.execute("COMMIT")


def saved_note(db: sqlite3.Connection, path: Path, *, hash_always: bool = False) -> IndexNote | None:
    """The note of the save the index file ``path`` is, or None: no file, or one this archive did not save. The
    file is hashed unless its size and mtime are a save's (``hash_always``: hashed all the same, as ``embed`` does)."""
    if not path.is_file():
        return None
    stat = path.stat()
    notes = [n for n in index_notes(db) if n.file_size == stat.st_size]
    if not notes:
        return None
    same = next((n for n in notes if n.file_mtime_ns == stat.st_mtime_ns), None)
    if same is not None and not hash_always:
        return same
    sha = file_sha256(path)
    return next((n for n in notes if n.file_sha256 == sha), None)


def window_ids(db: sqlite3.Connection) -> np.ndarray:
    return np.array([r[0] for r in db.execute("SELECT id FROM windows ORDER BY id")], dtype=np.int64)


def check_index(db: sqlite3.Connection, folder: Path, config: dict[str, Any]) -> None:
    """Refuse (``ArchiveIndexError``) an archive whose windows and index disagree, saying what repairs it."""
    ids = window_ids(db)
    again = (f"run `vocalprobe embed` with the same inputs and --db {folder} again: it embeds again exactly "
             "the recordings whose vectors are missing")
    path = folder / INDEX_NAME
    if not index_notes(db):
        if ids.size:
            raise ArchiveIndexError(f"{folder}: {ids.size} window(s) have no checked vectors (the `embed` "
                                    f"run stopped before it first saved {INDEX_NAME}, or wrote it before index "
                                    f"checksums); {again}")
        return
    if not path.is_file():
        raise ArchiveIndexError(f"{path} is missing: the archive's {ids.size} window(s) have no vectors; {again}")
    note = saved_note(db, path)
    if note is None:
        raise ArchiveIndexError(f"{path} is not the index this archive saved (damaged, or copied from another "
                                f"archive); run `vocalprobe embed` with the same inputs and --db {folder} "
                                "again: it drops that index and embeds every recording again")
    if vectors.keys_sha256(ids) != note.keys_sha256:
        stored = vectors.index_keys(vectors.view_index(path, config))
        missing, extra = np.setdiff1d(ids, stored).size, np.setdiff1d(stored, ids).size
        raise ArchiveIndexError(f"{folder}: {missing} window(s) have no vectors and {extra} vector(s) no "
                                f"window (an `embed` run stopped after its last index save); {again}")
