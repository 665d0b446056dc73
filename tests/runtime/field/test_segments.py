"""`vocalprobe segments` (runtime/field/segments.py): a stream run's detections cut into clips per class, the top N
per class, the per-class summary, and unreadable recordings listed."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

import vocalprobe
from vocalprobe.cli import app
from vocalprobe.runtime.core.detections.layout import read_detections
from vocalprobe.runtime.field.segments import SegmentsError, cut_segments

runner = CliRunner()
RATE = 48_000
CALLS = [(1, 2, "low"), (3, 4, "mid"), (5, 6, "high"), (8, 9, "low"), (10, 11, "mid"), (12, 13, "high")]


@pytest.fixture
def night(tmp_path):
    """A 48 kHz recording with two calls of each class, run through `vocalprobe stream`."""
    graph = build_band_graph(tmp_path / "m.onnx")
    freq = dict(zip(DEFAULT_CLASSES, DEFAULT_FREQS))
    audio = tmp_path / "recordings" / "site A" / "20250601_053000.WAV"
    audio.parent.mkdir(parents=True)
    sf.write(audio, tone_track([(s, e, freq[c]) for s, e, c in CALLS], 14, RATE), RATE, subtype="PCM_16")
    out = tmp_path / "out"
    result = runner.invoke(app, ["stream", str(tmp_path / "recordings"), "-m", str(graph), "-o", str(out),
                                 "--window", "1", "--min-conf", "0.6", "--format", "csv"])
    assert result.exit_code == 0, result.output
    return tmp_path / "recordings", out, audio


def test_segments_cuts_every_detection_into_its_class_folder(night):
    recordings, out, audio = night
    result = runner.invoke(app, ["segments", str(out), "--audio", str(recordings)])
    assert result.exit_code == 0, result.output
    folder = out / "segments"
    index = list(csv.DictReader((folder / "segments.csv").open()))
    assert {(float(r["start_s"]), r["label"]) for r in index} == {(float(s), c) for s, _, c in CALLS}
    original, _ = sf.read(audio, dtype="float32")
    for row in index:
        clip, rate = sf.read(folder / row["clip"], dtype="float32")
        assert rate == RATE and row["clip"].startswith(row["label"] + "/") and row["clip"].endswith("s.wav")
        start = int(float(row["start_s"]) * RATE)
        assert len(clip) == RATE  # the 1 s window, no padding
        np.testing.assert_allclose(clip, original[start:start + RATE], atol=1 / 32768)  # the recording's samples
    summary = {r["label"]: r for r in csv.DictReader((folder / "summary.csv").open())}
    assert set(summary) == set(DEFAULT_CLASSES)
    low = summary["low"]
    assert (low["count"], low["clips"], low["first_s"], low["last_s"]) == ("2", "2", "1", "8")
    assert float(low["mean_confidence"]) <= float(low["max_confidence"]) <= 1.0
    assert low["first_file"] == "site A/20250601_053000.WAV"
    assert "low: 2 detection(s), 2 clip(s)" in result.output and "6 clip(s) ->" in result.output


def test_segments_top_pad_and_unreadable(night, tmp_path):
    recordings, out, audio = night
    report = vocalprobe.segments(out, tmp_path / "top1", audio=recordings, top=1, pad=0.5)
    assert sorted(d.label for _, d in report.clips) == sorted(DEFAULT_CLASSES)  # one per class
    every = read_detections(out)
    for clip, detection in report.clips:
        assert len(sf.read(clip)[0]) == 2 * RATE  # 1 s window + 0.5 s each side
        assert detection.confidence == max(d.confidence for d in every if d.label == detection.label)
    assert all(s.count == 2 and s.clips == 1 for s in report.summary)  # the summary counts every detection
    with pytest.raises(SegmentsError, match="--top"):
        cut_segments(out, tmp_path / "x", audio_root=recordings, top=0)
    audio.write_bytes(b"RIFF....WAVE")  # the recording is gone bad: listed once, nothing cut, summary still written
    result = runner.invoke(app, ["segments", str(out), "--audio", str(recordings), "-o", str(tmp_path / "bad")])
    assert result.exit_code == 0, result.output
    assert result.output.count("unreadable: site A/20250601_053000.WAV") == 1
    assert "0 clip(s)" in result.output and (tmp_path / "bad" / "summary.csv").is_file()


def test_segments_needs_a_detections_table(tmp_path):
    result = runner.invoke(app, ["segments", str(tmp_path)])
    assert result.exit_code == 1 and "no detections table" in result.output
