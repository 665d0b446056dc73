"""Event scoring (runtime/field/events.py) and the `score-events` command."""

from __future__ import annotations

import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.field.events import Event, chance_score, read_events, score_events


def test_event_scoring(tmp_path):
    truth = [Event("f.WAV", 1, 2, "low"), Event("f.WAV", 5, 6, "mid"), Event("f.WAV", 8, 9, "high")]
    detected = [Event("f.WAV", 1.5, 2.5, "low"), Event("f.WAV", 5.5, 6.5, "high"), Event("f.WAV", 8.2, 8.4, "high")]
    score = score_events(detected, truth)
    assert (score.n_correct, score.n_detected, score.n_found, score.n_truth) == (2, 3, 2, 3)
    assert score.precision == pytest.approx(2 / 3) and score.recall == pytest.approx(2 / 3)
    assert score.per_class["mid"] == (0.0, 0.0, 0, 1)
    assert chance_score(detected, truth)[0] <= score.precision
    table = tmp_path / "t.csv"
    table.write_text("file,start_s,end_s,label\nsome/dir/f.WAV,1,2,low\n")
    assert read_events(table) == [Event("f.WAV", 1.0, 2.0, "low")]


runner = CliRunner()


def test_score_events_cli(tmp_path):
    graph = build_band_graph(tmp_path / "m.onnx")
    truth_events = [(2, 3, "low"), (6, 7, "mid"), (11, 12.5, "high"), (15, 16, "low")]
    freq = dict(zip(DEFAULT_CLASSES, DEFAULT_FREQS))
    x = tone_track([(s, e, freq[label]) for s, e, label in truth_events], 18, 48_000)
    field = tmp_path / "field" / "20250601_053000.WAV"
    field.parent.mkdir()
    sf.write(field, x, 48_000, subtype="PCM_16")
    truth = tmp_path / "truth.csv"
    truth.write_text("file,start_s,end_s,label\n" + "".join(f"{field.name},{s},{e},{lab}\n"
                                                              for s, e, lab in truth_events))
    out = tmp_path / "out"
    streamed = runner.invoke(app, ["stream", str(field.parent), "-m", str(graph), "--window", "0.5", "--merge",
                                   "--min-conf", "0.8", "-o", str(out), "--format", "csv"])
    assert streamed.exit_code == 0, streamed.output
    result = runner.invoke(app, ["score-events", str(out / "detections.csv"), str(truth)])
    assert result.exit_code == 0, result.output
    assert "precision 1.000 (4/4), recall 1.000 (4/4)" in result.output
    assert "chance (labels shuffled)" in result.output
