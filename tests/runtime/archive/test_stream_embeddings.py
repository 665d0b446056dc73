"""`stream --embeddings --db`: one pass gives stream's detections and embed's archive, and refuses what one archive
writer cannot serve."""

from __future__ import annotations

import sqlite3

import numpy as np

from vocalprobe.runtime.archive.store import ArchiveDB

WINDOWS = ["--hop", "0.25", "--batch", "3"]


def archive_contents(db):
    with ArchiveDB.open_reader(db) as archive:
        recordings = {r.id: (r.filename, r.deployment, r.project, str(r.path)) for r in archive.recordings().values()}
        windows = [(recordings[w.recording_id], w.start_s, w.end_s) for w in archive.windows()]
        vectors = archive.vectors([w.id for w in archive.windows()])
        settings = archive.settings()
        meta = archive.metadata()
    with sqlite3.connect(db / "hoplite.sqlite") as raw:
        finished = sorted(raw.execute("SELECT r.filename, v.sha256, v.n_windows, v.audio_seconds FROM "
                                      "vocalprobe_recordings v JOIN recordings r ON r.id = v.recording_id"))
    return sorted(recordings.values()), windows, vectors, settings, meta, finished


def test_stream_embeddings_is_stream_plus_embed_in_one_pass(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=3)
    alone = run_cli(["stream", audio, "-m", graph, "-o", tmp_path / "alone", "--merge", *WINDOWS])
    assert alone.exit_code == 0, alone.output
    both = run_cli(["stream", audio, "-m", graph, "-o", tmp_path / "both", "--merge", "--embeddings", "--db",
                    tmp_path / "db-stream", *WINDOWS])
    assert both.exit_code == 0, both.output
    assert "embeddings: 3 recording(s)" in both.output
    embedded = run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db-embed", *WINDOWS])
    assert embedded.exit_code == 0, embedded.output

    tables = sorted(p.relative_to(tmp_path / "alone") for p in (tmp_path / "alone").rglob("*")
                    if p.is_file() and p.suffix in (".csv", ".txt", ".jsonl") and p.name != "analysis_params.csv")
    assert len(tables) >= 7  # 3 x (Raven, CSV), the combined tables, the JSONL
    for rel in tables:
        assert (tmp_path / "both" / rel).read_bytes() == (tmp_path / "alone" / rel).read_bytes(), rel

    got, want = archive_contents(tmp_path / "db-stream"), archive_contents(tmp_path / "db-embed")
    assert got[0] == want[0] and got[1] == want[1] and len(got[1]) > 0
    np.testing.assert_array_equal(got[2], want[2])
    assert got[3] == want[3] and got[4] == want[4] and got[5] == want[5]

    again = run_cli(["stream", audio, "-m", graph, "-o", tmp_path / "both", "--merge", "--embeddings", "--db",
                     tmp_path / "db-stream", *WINDOWS])
    assert again.exit_code == 0 and "resuming: 3 of 3 files" in again.output, again.output
    assert archive_contents(tmp_path / "db-stream")[1] == want[1]  # nothing twice

    # files a stream without --embeddings finished are streamed again into the archive (tables unchanged)
    later = run_cli(["stream", audio, "-m", graph, "-o", tmp_path / "alone", "--merge", "--embeddings", "--db",
                     tmp_path / "db-later", *WINDOWS])
    assert later.exit_code == 0 and "embeddings: 3 file(s) done earlier" in later.output, later.output
    assert archive_contents(tmp_path / "db-later")[1] == want[1]
    for rel in tables:
        if rel.suffix != ".jsonl":  # the JSONL retracts and re-adds the rows of a file analysed again
            assert (tmp_path / "both" / rel).read_bytes() == (tmp_path / "alone" / rel).read_bytes(), rel


def test_stream_embeddings_refusals(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=2)
    base = ["stream", audio, "-m", graph, "-o", tmp_path / "out"]
    cases = [(["--embeddings"], "--embeddings and --db DIR go together"),
             (["--db", tmp_path / "db"], "--embeddings and --db DIR go together"),
             (["-m", graph, "--embeddings", "--db", tmp_path / "db"], "a fusion of several has no single"),
             (["--workers", "2", "--embeddings", "--db", tmp_path / "db"], "one archive from one process"),
             (["--shard", "0/2", "--embeddings", "--db", tmp_path / "db"], "one archive from one process")]
    for extra, message in cases:
        result = run_cli([*base, *extra])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
    stdin = run_cli(["stream", "-", "-m", graph, "-o", tmp_path / "live", "--sample-rate", "16000", "--embeddings",
                     "--db", tmp_path / "db"])
    assert stdin.exit_code == 1 and "not stdin" in stdin.output, stdin.output
    assert not (tmp_path / "db" / "hoplite.sqlite").exists()
