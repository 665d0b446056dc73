"""Costs that must not grow with the archive (issue 24): `label import` reads each recording's windows once and
finds a row's windows by offset (not all of the recording's windows per row), matching exactly what a scan of every
window matches; `probe apply` writes each recording's tables as soon as its windows are scored (detections
streamed, not held for the whole archive). Archives are built through the store's writer with synthetic vectors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vocalprobe.runtime.archive.apply import apply_head
from vocalprobe.runtime.archive.head import Head, HeadRecord
from vocalprobe.runtime.archive.labels import import_tables, matching_windows
from vocalprobe.runtime.archive.store import ArchiveDB

DIM = 4
HOP, WINDOW = 0.5, 1.0


def build_archive(folder: Path, n_recordings: int, n_windows: int, seed: int = 0) -> None:
    """Recordings of ``n_windows`` 1-s windows every 0.5 s, the last one shorter (a recording's end)."""
    rng = np.random.default_rng(seed)
    settings = {"graph_sha256": "0" * 64, "window_samples": 16000, "hop_samples": 8000, "final_window": "pad",
                "sample_rate": 16000, "embedding_dim": DIM, "graph_file": "synthetic.onnx"}
    with ArchiveDB.open_writer(folder, checkpoint_s=1e9) as archive:
        archive.initialise(settings, {"model_key": "synthetic"})
        archive.add_audio_source("synthetic", folder)
        for r in range(n_recordings):
            rid = archive.begin_recording(f"rec{r}.wav", "d", "synthetic", None)
            offsets = [(i * HOP, i * HOP + WINDOW) for i in range(n_windows)]
            offsets[-1] = (offsets[-1][0], offsets[-1][0] + 0.3)
            archive.add_windows(rid, offsets, rng.standard_normal((n_windows, DIM)).astype(np.float32))
            archive.commit_recording(rid, f"{r:064d}", n_windows, offsets[-1][1])


def test_label_import_reads_each_recording_once_and_matches_what_a_scan_matches(tmp_path):
    build_archive(tmp_path / "db", 3, 400)
    rng = np.random.default_rng(1)
    rows, hits = [], []
    for r in range(3):
        for _ in range(60):  # spans of every length, some past the ends, some exactly a window (a reviewed hit)
            start = float(rng.uniform(-1.0, 201.0))
            rows.append((f"rec{r}.wav", start, start + float(rng.choice([0.05, 0.4, 1.0, 2.5, 7.0]))))
        for i in rng.integers(0, 400, 20):
            hits.append((f"rec{r}.wav", i * HOP, i * HOP + (WINDOW if i < 399 else 0.3)))
    plain = tmp_path / "reviewed.selections.txt"
    plain.write_text("Selection\tBegin File\tBegin Time (s)\tEnd Time (s)\tLabel\n" + "".join(
        f"{n}\t{f}\t{a:.4f}\t{b:.4f}\tcall\n" for n, (f, a, b) in enumerate(rows, start=1)))
    hit_table = tmp_path / "hits.selections.txt"
    hit_table.write_text("Selection\tBegin File\tBegin Time (s)\tEnd Time (s)\tScore\tRank\tLabel\n" + "".join(
        f"{n}\t{f}\t{a:.3f}\t{b:.3f}\t0.9\t{n}\tcall\n" for n, (f, a, b) in enumerate(hits, start=1)))

    reads = []  # the SQL that reads windows
    with ArchiveDB.open_writer(tmp_path / "db", repair=False) as archive:
        archive.db.set_trace_callback(lambda sql: reads.append(sql) if "FROM windows" in sql else None)
        report = import_tables(archive, [plain, hit_table])
        archive.db.set_trace_callback(None)
        got = sorted((a.recording_id, a.start_s, a.end_s, a.provenance) for a in archive.annotation_rows())
    assert len(reads) == 3, reads[:5]  # once per recording, not once per row (180 + 60 rows)

    want = set()
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        ids = {r.filename: r.id for r in archive.recordings().values()}
        every = {rid: archive.recording_windows(rid) for rid in ids.values()}
    for table, spans, hit in ((plain, rows, False), (hit_table, hits, True)):
        for name, a, b in spans:
            a, b = round(a, 4 if not hit else 3), round(b, 4 if not hit else 3)
            for w in matching_windows(every[ids[name]], a, b, hit=hit):
                want.add((ids[name], w.start_s, w.end_s, f"raven:{table.name}"))
    assert got == sorted(want) and len(got) > 240
    assert report.rows == 240 and report.matched + len(report.unmatched) == 240 and report.unmatched


def linear_head(threshold: float) -> Head:
    record = HeadRecord(kind="linear", classes=("call", "background"), hidden_sizes=(),
                        thresholds={"call": threshold, "background": 0.5}, precision_target=0.9,
                        precision_reached={}, graph_sha256="0" * 64, embedding_dim=DIM, seed=0, counts={}, split={},
                        test_uar=0.0, test_uar_ci95=(0.0, 0.0), val_uar=0.0, database="")
    weights = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    return Head(record, np.zeros(DIM, np.float32), np.ones(DIM, np.float32),
                (("linear", (weights, np.zeros(2, np.float32))),))


@pytest.mark.parametrize("batch", [7, 65_536])
def test_probe_apply_writes_each_recording_before_scoring_the_next(tmp_path, batch):
    build_archive(tmp_path / "db", 4, 30)
    head = linear_head(0.5)
    out = tmp_path / "out"
    seen: list[tuple[int, set[str]]] = []  # (first recording of a batch, the tables written by then)
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        real = archive.iter_window_batches

        def batches(size):
            for rows, vecs in real(size):
                seen.append((rows[0].recording_id, {p.name for p in out.glob("*.detections.csv")}))
                yield rows, vecs

        archive.iter_window_batches = batches
        summary = apply_head(head, archive, out, batch=batch)
        every = [(w, v) for rows, vecs in real(1000) for w, v in zip(rows, vecs)]
    probs = head.predict_proba(np.stack([v for _, v in every]))
    assert summary.windows == 120 and summary.recordings == 4
    assert summary.detections == int((probs[:, 0] >= 0.5).sum()) > 0
    table = (out / "detections.csv").read_text().splitlines()
    assert len(table) == 1 + summary.detections
    for rid, written in seen:
        assert written == {f"rec{r}.detections.csv" for r in range(rid - 1)}, (rid, written)
    if batch == 7:
        assert {rid for rid, _ in seen} == {1, 2, 3, 4}  # batches began in every recording: the check saw each


def test_a_reader_hashes_the_index_only_when_it_is_not_as_saved(tmp_path, monkeypatch):
    """Opening hashed the whole usearch.index (~2 s per GB): a reader now trusts a file whose size and mtime are its
    save's, hashes one that changed (a damaged or copied-in index is still refused), and hashes one noted before
    mtimes were; ``embed``'s open always hashes, so damage that keeps size and mtime is dropped there."""
    import sqlite3

    from vocalprobe.runtime.archive import index_notes
    from vocalprobe.runtime.archive.errors import ArchiveIndexError
    from vocalprobe.runtime.archive.store import INDEX_NAME, SQLITE_NAME

    db = tmp_path / "db"
    build_archive(db, 2, 300)
    path = db / INDEX_NAME
    hashed = []
    real = index_notes.file_sha256
    monkeypatch.setattr(index_notes, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    ArchiveDB.open_reader(db).close()
    assert hashed == []
    saved = path.stat()
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(ArchiveIndexError, match="not the index this archive saved"):
        ArchiveDB.open_reader(db)
    assert hashed == [INDEX_NAME]
    os.utime(path, ns=(saved.st_atime_ns, saved.st_mtime_ns))  # damage that keeps size and mtime
    ArchiveDB.open_reader(db).close()  # a reader trusts it ...
    with ArchiveDB.open_writer(db) as archive:  # ... embed does not: the index is dropped, every recording again
        assert archive.count_recordings() == 0
    hashed.clear()
    con = sqlite3.connect(db / SQLITE_NAME)
    con.execute("UPDATE vocalprobe_index SET file_mtime_ns = NULL")  # as an archive noted before mtimes
    con.commit()
    con.close()
    ArchiveDB.open_reader(db).close()
    assert hashed == [INDEX_NAME]
