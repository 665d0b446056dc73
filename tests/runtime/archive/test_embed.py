"""`vocalprobe embed`: the archive holds stream's windows and the graph's embeddings of them, resumes after a kill,
never duplicates audio, refuses another graph, and perch-hoplite's own reader opens and searches it."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from runtime_graphs import build_band_graph

from vocalprobe.runtime.archive.store import ArchiveDB, offsets_of
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.engine.sources import FileSource
from vocalprobe.runtime.engine.batches import window_probabilities
from vocalprobe.runtime.engine.windows import WindowPlan

ROOT = Path(__file__).resolve().parents[3]


def test_predict_with_embedding_is_one_run_of_both_outputs(graph):
    model = OnnxModel(graph)
    batch = np.random.default_rng(0).standard_normal((3, 8000)).astype(np.float32)
    probs, emb = model.predict_with_embedding(batch)
    np.testing.assert_array_equal(probs, model.predict(batch))
    (direct,) = model.session.run(["embedding"], {"waveform": batch})
    np.testing.assert_array_equal(emb, direct)


def test_embed_stores_streams_windows_and_the_graphs_embeddings(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=2)
    result = run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db", "--hop", "0.25", "--batch", "3"])
    assert result.exit_code == 0, result.output
    model = OnnxModel(graph)
    plan = WindowPlan.from_seconds(0.5, 0.25, 16_000)
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        recordings = {r.filename: r for r in archive.recordings().values()}
        assert set(recordings) == {"REC01/20210501_040000.WAV", "REC02/20210502_040000.WAV"}
        assert {r.deployment for r in recordings.values()} == {"REC01", "REC02"}
        assert {r.project for r in recordings.values()} == {"audio"}
        for name, rec in recordings.items():
            assert rec.path == (audio / name).resolve()
            source = FileSource(audio / name, name)
            expected = list(window_probabilities(source.blocks(16_000), model, plan, batch=5))
            windows = archive.recording_windows(rec.id)
            assert [(w.start_s, w.end_s) for w in windows] == [win.seconds(16_000) for win, _ in expected]
            blocks = np.concatenate(list(source.blocks(16_000)))
            clips = np.stack([np.pad(blocks[win.start:win.start + plan.window],
                                     (0, max(0, win.start + plan.window - len(blocks)))) for win, _ in expected])
            want = model.predict_with_embedding(clips)[1]
            stored = archive.vectors([w.id for w in windows])
            np.testing.assert_array_equal(stored, want.astype(np.float16).astype(np.float32))  # float16 storage
        settings = archive.settings()
        assert settings["window_samples"] == 8000 and settings["hop_samples"] == 4000
        assert settings["embedding_dim"] == 6 and settings["backbone"] == "test/band-energy"
        assert settings["layer"] == "0" and len(settings["graph_sha256"]) == 64
        meta = archive.metadata()
        assert meta["model_config"]["model_config"]["input_name"] == "waveform"
        assert meta["model_config"]["model_config"]["output_map"] == {"embedding": "embedding",
                                                                      "logits": "probabilities"}
        assert meta["audio_sources"]["audio_globs"][0]["base_path"] == str(audio.resolve())
        assert sqlite3.connect(tmp_path / "db" / "hoplite.sqlite").execute(
            "SELECT datetime FROM recordings ORDER BY filename").fetchall()[0] == ("2021-05-01T04:00:00",)


def test_same_audio_is_never_embedded_twice(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=2)
    args = ["embed", audio, "-m", graph, "--db", tmp_path / "db"]
    assert run_cli(args).exit_code == 0
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        n = archive.count_windows()
    shutil.copy(audio / "REC01" / "20210501_040000.WAV", audio / "REC02" / "copy.wav")
    again = run_cli(args)
    assert again.exit_code == 0, again.output
    assert "already embedded" in again.output and "same audio as REC01/20210501_040000.WAV" in again.output
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        assert archive.count_windows() == n and archive.index.size == n
        assert len(archive.recordings()) == 2


def test_a_changed_recording_is_embedded_again_in_place(tmp_path, graph, tone_folder, run_cli, write_wav):
    audio = tone_folder(tmp_path / "audio", n_files=1)
    args = ["embed", audio, "-m", graph, "--db", tmp_path / "db"]
    assert run_cli(args).exit_code == 0
    write_wav(audio / "REC01" / "20210501_040000.WAV", np.zeros(16_000 * 2, np.float32) + 0.1)
    assert run_cli(args).exit_code == 0
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        assert len(archive.recordings()) == 1 and archive.count_windows() == 4 and archive.index.size == 4


def test_another_graph_is_refused(tmp_path, graph, tone_folder, run_cli):
    audio = tone_folder(tmp_path / "audio", n_files=1)
    assert run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db"]).exit_code == 0
    other = build_band_graph(tmp_path / "other.onnx", freqs=(500.0, 1500.0, 4000.0), sample_duration=0.5)
    result = run_cli(["embed", audio, "-m", other, "--db", tmp_path / "db"])
    assert result.exit_code == 1 and "holds embeddings of another graph" in result.output
    hop = run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db", "--hop", "0.1"])
    assert hop.exit_code == 1 and "embedded with other windows" in hop.output
    search = run_cli(["search", audio / "REC01" / "20210501_040000.WAV", "--db", tmp_path / "db", "-m", other,
                      "-o", tmp_path / "hits.txt"])
    assert search.exit_code == 1 and "is not the graph this archive was embedded with" in search.output


def _env() -> dict:
    """The environment of a vocalprobe subprocess: this checkout first (then whatever PYTHONPATH named)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT.parent),
                                                                      os.environ.get("PYTHONPATH")) if p)}


def _db_state(db: Path) -> tuple[list, list]:
    con = sqlite3.connect(db / "hoplite.sqlite")
    complete = con.execute("SELECT r.id, v.n_windows, (SELECT COUNT(*) FROM windows w WHERE w.recording_id = r.id) "
                           "FROM recordings r LEFT JOIN vocalprobe_recordings v ON v.recording_id = r.id").fetchall()
    offsets = con.execute("SELECT recording_id, offsets FROM windows").fetchall()
    con.close()
    return complete, offsets


def test_sigkill_mid_embed_then_resume_leaves_no_partial_and_no_duplicate(tmp_path, graph, tone_folder):
    audio = tone_folder(tmp_path / "audio", n_files=6, seconds=40.0)
    db = tmp_path / "db"
    env = _env()
    args = [sys.executable, "-m", "vocalprobe", "embed", str(audio), "-m", str(graph), "--db", str(db),
            "--window", "0.05", "--batch", "1"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill once a recording is committed
        try:
            con = sqlite3.connect(f"file:{db / 'hoplite.sqlite'}?mode=ro", uri=True)
            done = con.execute("SELECT COUNT(*) FROM vocalprobe_recordings").fetchone()[0]
            con.close()
        except sqlite3.Error:
            done = 0
        if done >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "embed finished before it could be killed; give it more audio"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete, _ = _db_state(db)
    assert complete and all(n is not None and n == count for _, n, count in complete)  # no partial recording
    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    complete, offsets = _db_state(db)
    assert len(complete) == 6 and all(n == count == 800 for _, n, count in complete)
    assert len(offsets) == len(set(offsets)) == 6 * 800  # no duplicate window
    with ArchiveDB.open_reader(db) as archive:
        ids = [w.id for w in archive.windows()]
        assert archive.index.size == len(ids)
        assert archive.index.contains(np.array(ids)).all()


def test_perch_hoplite_opens_and_searches_the_database(tmp_path, graph, tone_folder, run_cli):
    from vocalprobe.runtime.archive.vectors import usearch_index

    usearch_index()  # onnxruntime before usearch, as in vocalprobe
    sqlite_impl = pytest.importorskip(
        "perch_hoplite.db.sqlite_usearch_impl",
        reason="perch-hoplite is not installed (CI installs it: pip install --no-deps perch-hoplite==1.0.2 && "
               "pip install 'absl-py<2' 'etils[epath]' 'ml-collections<0.2')")
    audio = tone_folder(tmp_path / "audio", n_files=2)
    assert run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "db", "--hop", "0.25"]).exit_code == 0
    table = tmp_path / "20210501_040000.Table.1.selections.txt"
    table.write_text("Selection\tBegin Time (s)\tEnd Time (s)\tLabel\n1\t0.5\t1.0\tlow\n", encoding="utf-8")
    assert run_cli(["label", "import", table, "--db", tmp_path / "db"]).exit_code == 0
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        target = archive.windows()[5]
        query = archive.vectors([target.id])[0]
        n = archive.count_windows()
    hoplite = sqlite_impl.SQLiteUSearchDB.create(str(tmp_path / "db"))
    assert hoplite.count_embeddings() == n and hoplite.get_embedding_dim() == 6
    assert {d.name for d in hoplite.get_all_deployments()} == {"REC01", "REC02"}
    window = hoplite.get_window(target.id)
    assert tuple(window.offsets) == (target.start_s, target.end_s)
    np.testing.assert_array_equal(np.asarray(hoplite.get_embedding(target.id), np.float32), query)
    for approximate in (True, False):
        results = hoplite.search(query, search_list_size=5, approximate=approximate, score_fn_name="cos")
        found = {int(r.window_id): float(r.sort_score) for r in results}
        assert target.id in found and found[target.id] == pytest.approx(1.0, abs=1e-3)  # itself, to float16
    assert hoplite.get_metadata("model_config").model_config.input_name == "waveform"
    assert hoplite.get_metadata("audio_sources").audio_globs[0]["dataset_name"] == "audio"
    annotations = hoplite.get_all_annotations()
    assert {a.label for a in annotations} == {"low"}  # on every window the call covers half of, by its offsets
    assert sorted(offsets_of(np.array(a.offsets, "<f8").tobytes()) for a in annotations) == [
        (0.25, 0.75), (0.5, 1.0), (0.75, 1.25)]
    hoplite.db.close()


def test_a_resumed_embed_with_workers_sends_only_what_is_left_to_the_pool(tmp_path, graph, tone_folder, monkeypatch,
                                                                          run_cli):
    import soundfile as sf
    from runtime_graphs import tone_track

    from vocalprobe.runtime.engine import pool

    folder = tone_folder(tmp_path / "audio", n_files=3, seconds=2.0)
    args = ["embed", folder, "-m", graph, "--db", tmp_path / "db", "--workers", "2", "--threads", "1"]
    assert run_cli(args).exit_code == 0
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        before, recordings = archive.count_windows(), len(archive.recordings())
    extra = folder / "REC01" / "20210512_040000.WAV"
    sf.write(extra, tone_track([(0.2, 0.6, 600.0)], 2.0, 16_000, seed=11), 16_000, subtype="FLOAT")

    read_ahead = []

    class Recording(pool._Reader):
        def __init__(self, workers, sources, *args, **kwargs):
            read_ahead.extend(s.name for s in sources)
            super().__init__(workers, sources, *args, **kwargs)

    monkeypatch.setattr(pool, "_Reader", Recording)
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    assert read_ahead == ["REC01/20210512_040000.WAV"]  # the archived recordings are not predicted again
    assert result.output.count("already embedded") == recordings
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        assert len(archive.recordings()) == recordings + 1 and archive.count_windows() == before + 4
        ids = [w.id for w in archive.windows()]
        assert archive.index.size == len(ids) == len(set(ids))
