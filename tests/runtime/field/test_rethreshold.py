"""`stream --scores` and `vocalprobe rethreshold` (runtime/core/detections/scores.py, runtime/field/rethreshold.py):
every window's scores are kept in OpenSoundscape's score-table shape, bit for bit, through resume, workers and merged
shards; re-thresholding them gives, byte for byte, the tables of a stream run with the same options."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, tone_track
from test_workers import make_recordings, tree
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.detections import scores as scores_module
from vocalprobe.runtime.core.detections.scores import score_chunks
from vocalprobe.runtime.engine.batches import window_probabilities
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.engine.sources import FileSource
from vocalprobe.runtime.engine.windows import WindowPlan
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.field.run_state import RunState, read_settings
from vocalprobe.runtime.field.stream import DetectConfig, run_sources

runner = CliRunner()
ALL_FORMATS = "raven,csv,jsonl,birdnet-csv,audacity,kaleidoscope,parquet"
SCORED = ["--window", "0.5", "--hop", "0.3", "--batch", "3", "--format", ALL_FORMATS]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = make_recordings(tmp_path_factory.mktemp("rec"))
    # recorded below the model's rate: its tables' band is its own Nyquist (the journal keeps the rate)
    sf.write(folder / "night2" / "narrow.wav", tone_track([(0.5, 1.9, DEFAULT_FREQS[0])], 3.3, 6_000, seed=9), 6_000)
    return folder


@pytest.fixture(scope="module")
def scored(recordings, graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "scored"
    result = invoke("stream", recordings, "-m", graph, "-o", out, *SCORED, "--scores", "--no-progress")
    assert result.exit_code == 2, result.output  # broken.WAV is listed in errors.csv
    return out


def scores_tables(out: Path) -> list[Path]:
    return sorted(out.rglob("*.scores.parquet"))


def test_scores_are_the_models_probabilities_in_opensoundscapes_shape(scored, recordings, graph):
    pd = pytest.importorskip("pandas")
    tables = scores_tables(scored)
    assert [str(t.relative_to(scored)) for t in tables] == [
        "night1/20210501_040000.scores.parquet", "night1/20210502_040000.scores.parquet",
        "night2/20210504_040000.scores.parquet", "night2/REC3.scores.parquet", "night2/narrow.scores.parquet"]
    model = OnnxModel(graph, threads=1)
    plan = WindowPlan.from_seconds(0.5, 0.3, model.sample_rate)
    path = recordings / "night2" / "20210504_040000.wav"
    frame = pd.read_parquet(scored / "night2" / "20210504_040000.scores.parquet").set_index(
        ["file", "start_time", "end_time"])
    assert list(frame.columns) == list(DEFAULT_CLASSES)
    expected = list(window_probabilities(FileSource(path, "night2/20210504_040000.wav").blocks(model.sample_rate),
                                         model, plan, batch=3))  # the run's batch: ORT sums per batch
    assert len(frame) == len(expected) > 100
    for (file, start, end), (window, probs) in zip(frame.index, expected):
        assert file == "night2/20210504_040000.wav"
        assert (start, end) == window.seconds(model.sample_rate)
    got = frame.to_numpy()
    assert got.dtype == np.float32
    assert np.array_equal(got, np.stack([p for _, p in expected]))  # bit for bit, not rounded
    # the run's table is the per-file ones one after the other (OpenSoundscape's one table for many files)
    combined = pd.read_parquet(scored / "scores.parquet")
    assert len(combined) == sum(len(pd.read_parquet(t)) for t in tables)
    assert list(combined["file"].unique()) == [str(t.relative_to(scored)).replace(".scores.parquet", "") +
                                               ext for t, ext in zip(tables, (".wav", ".wav", ".wav", ".FLAC",
                                                                               ".wav"))]
    # the journal keeps the run's scores option, and each recording's own rate (its tables' band)
    with RunState(scored, read_settings(scored)) as state:
        rates = {r.name: r.source_rate for r in state.records()}
    assert rates["night2/narrow.wav"] == 6_000 and rates["night1/20210502_040000.wav"] == 16_000


def test_csv_scores_read_back_bit_for_bit_and_are_written_in_chunks(recordings, graph, tmp_path, monkeypatch):
    """Without pyarrow the table is a CSV; either way windows are written a chunk at a time, never held whole."""
    monkeypatch.setattr(scores_module, "CHUNK", 7)
    model = OnnxModel(graph, threads=1)
    config = DetectConfig(WindowPlan.from_seconds(0.5, 0.3, model.sample_rate))
    path = recordings / "night2" / "20210504_040000.wav"
    written = {}
    for fmt in ("csv", "parquet"):
        out = tmp_path / fmt
        outputs = Outputs(out, ("csv",), 8000, scores=fmt, classes=model.classes, sample_rate=model.sample_rate)
        run_sources([FileSource(path, "a.wav")], model, config, outputs)
        table = out / f"a.scores.{fmt}"
        chunks = list(score_chunks(table, model.classes, model.sample_rate))
        written[fmt] = [np.concatenate(c) for c in zip(*chunks)]
    starts, ends, probs = written["parquet"]
    assert all(np.array_equal(a, b) for a, b in zip(written["csv"], written["parquet"]))
    assert probs.dtype == np.float32 and len(starts) > 100 and starts[1] == 0.3 * model.sample_rate
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "parquet" / "a.scores.parquet").num_row_groups == math.ceil(len(starts) / 7)
    for table in ("a.scores.csv", "scores.csv"):
        with open(tmp_path / "csv" / table, newline="") as handle:
            header = next(csv.reader(handle))
        assert header == ["file", "start_time", "end_time", *DEFAULT_CLASSES]
    assert (tmp_path / "csv" / "scores.csv").read_bytes() == (tmp_path / "csv" / "a.scores.csv").read_bytes()


@pytest.mark.parametrize("options", [
    ["--min-conf", "0.3", "--merge"],
    ["--min-conf", "0.7", "--top-k", "1", "--ignore", "mid"],
    ["--min-conf", "TABLE", "--min-conf-default", "0.9"],
], ids=["lower-merged", "top1-ignore", "per-class"])
def test_rethreshold_gives_the_tables_of_a_stream_run_byte_for_byte(scored, recordings, graph, tmp_path, options):
    table = tmp_path / "thresholds.csv"
    table.write_text("class,threshold\nlow,0.2\nhigh,0.65\n")
    options = [str(table) if o == "TABLE" else o for o in options]
    want = tmp_path / "stream"
    result = invoke("stream", recordings, "-m", graph, "-o", want, *SCORED, *options, "--no-progress")
    assert result.exit_code == 2, result.output
    got = tmp_path / "rethreshold"
    result = invoke("rethreshold", scored, "--out", got, *options)
    assert result.exit_code == 0, result.output
    assert "rethreshold: 5 file(s)" in result.output
    mine, theirs = tree(got), tree(want)
    assert sorted(mine) == sorted(theirs)
    for name in ("detections.csv", "detections.jsonl", "detections.selection.table.txt", "detections.parquet",
                 "errors.csv", "analysis_params.csv", "night2/narrow.selection.table.txt"):
        assert name in mine
    assert [k for k in mine if mine[k] != theirs[k]] == []
    assert b"\t3000.0\t" in mine["night2/narrow.selection.table.txt"] or options[1] == "0.7"
    with RunState(got, read_settings(got)) as a, RunState(want, read_settings(want)) as b:
        assert [(r.name, r.status, r.detections, r.outputs) for r in a.records()] == [
            (r.name, r.status, r.detections, r.outputs) for r in b.records()]


def test_options_left_out_keep_the_runs(scored, recordings, graph, tmp_path):
    again = tmp_path / "again"
    assert invoke("rethreshold", scored, "-o", again).exit_code == 0
    original = {k: v for k, v in tree(scored).items() if ".scores." not in k and not k.startswith("scores.")}
    assert tree(again) == original
    busy = invoke("rethreshold", scored, "-o", again, "--min-conf", "0.2")
    assert busy.exit_code == 1 and "is not empty; give a new --out folder" in busy.output
    unknown = invoke("rethreshold", scored, "-o", tmp_path / "x", "--ignore", "owl")
    assert unknown.exit_code == 1 and "--ignore owl: not a class of the run" in unknown.output
    only_csv = invoke("rethreshold", scored, "-o", tmp_path / "csv", "--format", "csv")
    assert only_csv.exit_code == 0 and (tmp_path / "csv" / "detections.csv").read_bytes() == original[
        "detections.csv"] and not (tmp_path / "csv" / "detections.jsonl").exists()


def test_scores_survive_workers_resume_and_merged_shards(scored, recordings, graph, tmp_path):
    want = tree(scored)
    workers = tmp_path / "workers"
    result = invoke("stream", recordings, "-m", graph, "-o", workers, *SCORED, "--scores", "--workers", "2",
                    "--no-progress")
    assert result.exit_code == 2, result.output
    assert tree(workers) == want
    for i in range(2):
        result = invoke("stream", recordings, "-m", graph, "-o", tmp_path / f"s{i}", *SCORED, "--scores",
                        "--shard", f"{i}/2", "--no-progress")
        assert result.exit_code in (0, 2), result.output
    result = invoke("merge", tmp_path / "merged", tmp_path / "s0", tmp_path / "s1")
    assert result.exit_code == 0, result.output
    assert tree(tmp_path / "merged") == want
    # a run stopped before the last file, resumed once it is there, writes the same bytes
    resumed, narrow = tmp_path / "resumed", recordings / "night2" / "narrow.wav"
    narrow.rename(tmp_path / "narrow.wav")
    try:
        first = invoke("stream", recordings, "-m", graph, "-o", resumed, *SCORED, "--scores", "--no-progress")
        assert first.exit_code == 2, first.output
    finally:
        (tmp_path / "narrow.wav").rename(narrow)
    result = invoke("stream", recordings, "-m", graph, "-o", resumed, *SCORED, "--scores", "--no-progress")
    assert "resuming: 5 of 6 files already done" in result.output
    assert tree(resumed) == want


def test_a_run_without_scores_is_refused_in_one_line(recordings, graph, tmp_path):
    plain = tmp_path / "plain"
    invoke("stream", recordings / "night1", "-m", graph, "-o", plain, "--window", "0.5", "--no-progress")
    result = invoke("rethreshold", plain, "-o", tmp_path / "new", "--min-conf", "0.2")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "error:" in result.output
    assert "re-run `vocalprobe stream` with --scores" in result.output
    assert not (tmp_path / "new" / "detections.csv").exists()
    stdin = invoke("stream", "-", "-m", graph, "-o", tmp_path / "live", "--sample-rate", "16000", "--scores")
    assert stdin.exit_code == 1 and "--scores needs files" in stdin.output


@pytest.mark.slow
def test_scores_of_a_ray_run_with_cut_recordings_are_the_local_runs(ray_cluster, scored, recordings, graph,
                                                                     tmp_path):
    from test_ray_engine import ray_settings

    out = tmp_path / "ray"
    with ray_settings(chunk_windows=6):  # batch-aligned cuts (batch 3) inside the 16 kHz recording
        result = invoke("stream", recordings, "-m", graph, "-o", out, *SCORED, "--scores", "--engine", "ray",
                        "--concurrency", "2", "--threads", "1", "--no-progress")
    assert result.exit_code == 2, result.output
    assert tree(out) == tree(scored)


def test_the_python_api_rethresholds_as_the_command_does(scored, tmp_path):
    import vocalprobe

    summary = vocalprobe.rethreshold(scored, tmp_path / "api", min_conf=0.3, merge=True, formats="csv,raven")
    assert summary.done == 5 and summary.failed == 1 and summary.detections > 0
    assert invoke("rethreshold", scored, "-o", tmp_path / "cli", "--min-conf", "0.3", "--merge", "--format",
                  "csv,raven").exit_code == 0
    assert tree(tmp_path / "api") == tree(tmp_path / "cli")
