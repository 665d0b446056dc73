"""An archive checks itself on open (issue 24): a run killed before or after an index save, a deleted, damaged,
truncated or foreign ``usearch.index``, a corrupt or missing ``hoplite.sqlite`` make every reader (search, search
--exact, label import, merge) fail in one line saying what to run, never answer short with exit 0; ``embed`` again
repairs, re-embedding what is missing and dropping foreign vectors, to the archive one uninterrupted run writes."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vocalprobe.runtime.archive.store import INDEX_NAME, SQLITE_NAME, ArchiveDB

ROOT = Path(__file__).resolve().parents[3]
QUERY = ("REC01", "20210501_040000.WAV")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT.parent),
                                                                      os.environ.get("PYTHONPATH")) if p)}


def _embed(run_cli, audio, graph, db, *extra):
    result = run_cli(["embed", audio, "-m", graph, "--db", db, "--hop", "0.25", *extra])
    assert result.exit_code == 0, result.output
    return result


def _search(run_cli, audio, db, out, *extra):
    return run_cli(["search", Path(audio, *QUERY), "--start", "0.5", "--end", "1.0", "--db", db, "-k", "5",
                    "-o", out, *extra])


def _refused(result, *words):
    """Exit 1, one line naming the problem and `vocalprobe embed`, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = result.output.strip()
    assert "Traceback" not in text and "embed" in text
    for word in words:
        assert word in text, text


def _contents(db) -> dict:
    """(file, start, end) -> vector of every window, whatever its id."""
    with ArchiveDB.open_reader(db) as archive:
        recordings = archive.recordings()
        rows = archive.windows()
        vecs = archive.vectors([w.id for w in rows])
        assert archive.index.size == len(rows)
    return {(recordings[w.recording_id].filename, w.start_s, w.end_s): v.tobytes() for w, v in zip(rows, vecs)}


def _readers_refuse(run_cli, audio, db, tmp_path, *words):
    for extra in ([], ["--exact"]):
        _refused(_search(run_cli, audio, db, tmp_path / "hits.txt", *extra), *words)
        assert not (tmp_path / "hits.txt").exists()
    table = tmp_path / "labels.txt"
    table.write_text(f"Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tLabel\n1\t0.5\t1.0\t"
                     f"{Path(audio, *QUERY).resolve()}\tlow\n", encoding="utf-8")
    _refused(run_cli(["label", "import", table, "--db", db]), *words)


@pytest.fixture
def fresh(tmp_path, graph, tone_folder, run_cli):
    """(audio, db): an archive of three recordings, and a copy of it (``reference``) no one touches."""
    audio = tone_folder(tmp_path / "audio", n_files=3)
    _embed(run_cli, audio, graph, tmp_path / "db")
    shutil.copytree(tmp_path / "db", tmp_path / "reference")
    return audio, tmp_path / "db"


def _repairs(run_cli, audio, graph, db, tmp_path):
    _embed(run_cli, audio, graph, db)
    assert _contents(db) == _contents(tmp_path / "reference")
    found = _search(run_cli, audio, db, tmp_path / "hits.txt")
    assert found.exit_code == 0, found.output
    rows = list(csv.DictReader((tmp_path / "hits.txt").open(encoding="utf-8"), delimiter="\t"))
    assert len(rows) == 5 and float(rows[0]["Score"]) > 0.999


def test_a_deleted_index_is_refused_then_embed_repairs(fresh, tmp_path, graph, run_cli):
    audio, db = fresh
    (db / INDEX_NAME).unlink()
    _readers_refuse(run_cli, audio, db, tmp_path, f"{INDEX_NAME} is missing")
    _repairs(run_cli, audio, graph, db, tmp_path)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "garbage"])
def test_a_damaged_index_is_refused_then_embed_repairs(fresh, tmp_path, graph, run_cli, damage):
    audio, db = fresh
    path = db / INDEX_NAME
    data = bytearray(path.read_bytes())
    if damage == "flipped":  # a few bytes inside the stored vectors: loads fine, answers wrong
        for at in range(len(data) - 400, len(data) - 380):
            data[at] ^= 0x5A
    elif damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data = bytearray(os.urandom(len(data)))
    path.write_bytes(bytes(data))
    _readers_refuse(run_cli, audio, db, tmp_path, "is not the index this archive saved")
    _repairs(run_cli, audio, graph, db, tmp_path)


def test_an_index_copied_from_another_archive_is_refused_and_its_vectors_dropped(fresh, tmp_path, graph, tone_folder,
                                                                                 run_cli):
    audio, db = fresh
    other = tone_folder(tmp_path / "other", n_files=4, seconds=3.0)  # other audio, more windows, the same ids
    _embed(run_cli, other, graph, tmp_path / "other_db")
    shutil.copy(tmp_path / "other_db" / INDEX_NAME, db / INDEX_NAME)
    _readers_refuse(run_cli, audio, db, tmp_path, "is not the index this archive saved")
    _repairs(run_cli, audio, graph, db, tmp_path)  # the foreign windows' vectors are gone (index size == windows)


def test_a_corrupt_or_missing_sqlite_is_one_line(fresh, tmp_path, graph, run_cli):
    audio, db = fresh
    sqlite = db / SQLITE_NAME
    sqlite.write_bytes(b"not a database at all" * 200)
    for wal in db.glob(f"{SQLITE_NAME}-*"):
        wal.unlink()
    _readers_refuse(run_cli, audio, db, tmp_path, "not a readable archive database")
    _refused(run_cli(["embed", audio, "-m", graph, "--db", db, "--hop", "0.25"]), "not a readable archive database")
    sqlite.unlink()
    _readers_refuse(run_cli, audio, db, tmp_path, f"{SQLITE_NAME} missing but {INDEX_NAME} is")
    # embed there starts a new archive: the index left beside is not taken for its vectors
    _repairs(run_cli, audio, graph, db, tmp_path)


def _recordings_done(db: Path) -> int:
    try:
        con = sqlite3.connect(f"file:{db / SQLITE_NAME}?mode=ro", uri=True)
        try:
            return con.execute("SELECT COUNT(*) FROM vocalprobe_recordings").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _embed_killed_after(audio, graph, db, done: int) -> list[str]:
    """Run `vocalprobe embed` in a process and SIGKILL it once ``done`` recordings are committed (the index is saved
    only every 60 s and on close, so the last ones have no vectors yet); returns its arguments."""
    args = [sys.executable, "-m", "vocalprobe", "embed", str(audio), "-m", str(graph), "--db", str(db),
            "--window", "0.05", "--batch", "1"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _recordings_done(db) < done:
        time.sleep(0.05)
    assert proc.poll() is None, "embed finished before it could be killed; give it more audio"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return args


def _resume_and_search(args, run_cli, audio, db, tmp_path, n_recordings: int) -> None:
    resumed = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with ArchiveDB.open_reader(db) as archive:
        assert archive.count_recordings() == n_recordings
        assert archive.index.size == archive.count_windows() == n_recordings * 800
    found = _search(run_cli, audio, db, tmp_path / "hits.txt")
    assert found.exit_code == 0, found.output
    assert len((tmp_path / "hits.txt").read_text(encoding="utf-8").splitlines()) == 1 + 5


def test_an_embed_killed_before_its_first_index_save_is_refused_then_repaired(tmp_path, graph, tone_folder,
                                                                             run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=4, seconds=40.0)
    db = tmp_path / "db"
    args = _embed_killed_after(audio, graph, db, done=1)
    assert not (db / INDEX_NAME).exists() and _recordings_done(db) >= 1
    _readers_refuse(run_cli, audio, db, tmp_path, "have no checked vectors", "stopped before it first saved")
    _resume_and_search(args, run_cli, audio, db, tmp_path, 4)


def test_an_embed_killed_after_an_index_save_is_refused_then_repaired(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=1, seconds=40.0)
    db = tmp_path / "db"
    result = run_cli(["embed", audio, "-m", graph, "--db", db, "--window", "0.05", "--batch", "8"])
    assert result.exit_code == 0, result.output  # saved: one recording, and the index's note
    tone_folder(tmp_path / "audio", n_files=5, seconds=40.0)  # four more recordings (the first is the same file)
    args = _embed_killed_after(audio, graph, db, done=3)  # committed after that save, killed before the next one
    _readers_refuse(run_cli, audio, db, tmp_path, "window(s) have no vectors", "stopped after its last index save")
    _resume_and_search(args, run_cli, audio, db, tmp_path, 5)
