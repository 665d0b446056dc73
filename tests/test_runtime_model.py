"""Runtime pieces without streaming: the ONNX wrapper, fusion, window plans, writers, event scoring, run state."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import numpy as np
import pytest

from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from vocalprobe.runtime.ensemble import Ensemble, ModelMismatchError, load_models, parse_weights
from vocalprobe.runtime.events import Event, chance_score, read_events, score_events
from vocalprobe.runtime.onnx_model import ModelError, OnnxModel, choose_providers
from vocalprobe.runtime.state import RunState, StateError
from vocalprobe.runtime.windows import Window, WindowPlan, WindowSpecError, plan_windows
from vocalprobe.runtime.writers import (
    CSV_COLUMNS,
    RAVEN_COLUMNS,
    Detection,
    JsonlWriter,
    parse_formats,
    parse_recorder_timestamp,
    write_csv,
    write_raven,
)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return build_band_graph(tmp_path_factory.mktemp("graphs") / "band.onnx")


def three_tones(sr=16_000):
    x = tone_track([(0, 1, DEFAULT_FREQS[0]), (1, 2, DEFAULT_FREQS[1]), (2, 3, DEFAULT_FREQS[2])], 4, sr)
    return x.reshape(4, sr)


# ---------------------------------------------------------------- the ONNX wrapper


def test_model_reads_contract_and_predicts(graph):
    model = OnnxModel(graph)
    assert model.classes == DEFAULT_CLASSES
    assert (model.sample_rate, model.sample_duration) == (16_000, 1.0)
    assert model.info.test_uar == pytest.approx(0.9)
    assert model.providers == ["CPUExecutionProvider"]
    probs = model.predict(three_tones())
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[:3].argmax(axis=1).tolist() == [0, 1, 2]
    assert probs[3].max() < 0.5  # noise only
    probs2, emb = model.predict_with_embedding(three_tones())
    np.testing.assert_allclose(probs2, probs)
    assert emb.shape == (4, 6)


def test_missing_metadata_keys_are_all_named(tmp_path):
    path = build_band_graph(tmp_path / "bare.onnx", drop_keys=("classes", "sample_rate", "sample_duration"))
    with pytest.raises(ModelError) as info:
        OnnxModel(path)
    message = str(info.value)
    for key in ("classes", "sample_rate", "sample_duration"):
        assert key in message
    assert "bare.onnx" in message


def test_malformed_metadata_and_class_count(tmp_path):
    path = build_band_graph(tmp_path / "bad.onnx", metadata={"classes": "low,mid,high", "test_uar": "93.1"})
    with pytest.raises(ModelError, match="JSON list") as info:
        OnnxModel(path)
    assert "test_uar" in str(info.value)
    path = build_band_graph(tmp_path / "count.onnx", metadata={"classes": json.dumps(["a", "b"])})
    with pytest.raises(ModelError, match="3 classes but metadata lists 2"):
        OnnxModel(path)
    path = build_band_graph(tmp_path / "key.onnx", metadata={"class_outputs_key": "logits"})
    with pytest.raises(ModelError, match="'logits' is not an output"):
        OnnxModel(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="corrupt.onnx: not a loadable ONNX model"):
        OnnxModel(corrupt)


def test_bad_batches_are_refused(graph):
    model = OnnxModel(graph)
    with pytest.raises(ModelError, match=r"\[batch, samples\]"):
        model.predict(np.zeros(16_000, dtype=np.float32))


def test_provider_choice():
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="no CUDA provider"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="unknown provider"):
        choose_providers("tpu", ["CPUExecutionProvider"])


# ---------------------------------------------------------------- fusion


def test_fusion_aligns_classes_by_name(tmp_path, graph):
    # The same filters with classes (and their columns) in another order: fusing must undo the permutation.
    shuffled = build_band_graph(tmp_path / "shuffled.onnx", classes=("high", "low", "mid"),
                                freqs=(DEFAULT_FREQS[2], DEFAULT_FREQS[0], DEFAULT_FREQS[1]))
    a, b = OnnxModel(graph), OnnxModel(shuffled)
    x = three_tones()
    assert not np.allclose(a.predict(x), b.predict(x))
    fused = Ensemble([a, b])
    assert fused.classes == DEFAULT_CLASSES
    np.testing.assert_allclose(fused.predict(x), a.predict(x), atol=1e-6)


def test_fusion_weights_average(tmp_path, graph):
    other = build_band_graph(tmp_path / "soft.onnx", scale=0.5)
    a, b = OnnxModel(graph), OnnxModel(other)
    x = three_tones()
    fused = Ensemble([a, b], weights=[3, 1])
    np.testing.assert_allclose(fused.predict(x), 0.75 * a.predict(x) + 0.25 * b.predict(x), atol=1e-6)
    assert parse_weights("3,1", 2) == (3.0, 1.0)
    with pytest.raises(ModelMismatchError, match="2 value"):
        parse_weights("1,1", 3)
    with pytest.raises(ModelMismatchError, match="positive sum"):
        Ensemble([a, b], weights=[0, 0])


def test_fusion_of_mismatched_models_is_refused(tmp_path, graph):
    other_classes = build_band_graph(tmp_path / "other.onnx", classes=("low", "mid", "bark"))
    with pytest.raises(ModelMismatchError) as info:
        load_models([str(graph), str(other_classes)])
    assert "lacks ['high']" in str(info.value) and "adds ['bark']" in str(info.value)
    other_rate = build_band_graph(tmp_path / "rate.onnx", metadata={"sample_rate": "22050"})
    with pytest.raises(ModelMismatchError, match="22050 Hz"):
        load_models([str(graph), str(other_rate)])
    other_window = build_band_graph(tmp_path / "window.onnx", sample_duration=2.0)
    fused = load_models([str(graph), str(other_window)])
    with pytest.raises(ModelMismatchError, match="--window"):
        _ = fused.sample_duration


# ---------------------------------------------------------------- windows


def test_window_plans():
    plan = WindowPlan(window=10, hop=10)
    assert [(w.start, w.end) for w in plan_windows(35, plan)] == [(0, 10), (10, 20), (20, 30), (30, 35)]
    assert [(w.start, w.end) for w in plan_windows(30, plan)] == [(0, 10), (10, 20), (20, 30)]
    drop = WindowPlan(10, 10, "drop")
    assert [(w.start, w.end) for w in plan_windows(35, drop)] == [(0, 10), (10, 20), (20, 30)]
    assert list(plan_windows(7, drop)) == []
    assert list(plan_windows(7, plan)) == [Window(0, 0, 7)]
    overlap = WindowPlan(10, 4)
    assert [(w.start, w.end) for w in plan_windows(23, overlap)] == [(0, 10), (4, 14), (8, 18), (12, 22), (16, 23)]
    gaps = WindowPlan(4, 10)
    assert [(w.start, w.end) for w in plan_windows(23, gaps)] == [(0, 4), (10, 14), (20, 23)]
    assert [(w.start, w.end) for w in plan_windows(25, gaps)] == [(0, 4), (10, 14), (20, 24)]
    assert WindowPlan.from_seconds(1.0, 0.25, 16_000) == WindowPlan(16_000, 4_000, "pad")
    with pytest.raises(WindowSpecError, match="final-window"):
        WindowPlan(10, 10, "wrap")
    with pytest.raises(WindowSpecError):
        WindowPlan.from_seconds(0.0, None, 16_000)


# ---------------------------------------------------------------- writers

DETECTIONS = [Detection("site1/20210502_040000.WAV", 1.5, 3.0, "low", 0.91234),
              Detection("site1/20210502_040000.WAV", 62.25, 63.0, "high", 0.5)]


def test_raven_table_columns_exact(tmp_path):
    path = tmp_path / "t.selection.table.txt"
    write_raven(DETECTIONS, path, begin_file="20210502_040000.WAV", high_freq_hz=8000)
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                    "Low Freq (Hz)", "High Freq (Hz)", "Begin File", "File Offset (s)", "Class",
                                    "Confidence"]
    assert list(RAVEN_COLUMNS) == lines[0].split("\t")
    assert lines[1].split("\t") == ["1", "Spectrogram 1", "1", "1.500", "3.000", "0.0", "8000.0",
                                    "20210502_040000.WAV", "1.500", "low", "0.9123"]
    assert lines[2].split("\t")[0] == "2" and len(lines) == 3


def test_csv_with_recorder_time(tmp_path):
    path = tmp_path / "d.csv"
    write_csv(DETECTIONS, path, recording_start=parse_recorder_timestamp(DETECTIONS[0].file))
    rows = list(csv.reader(path.open()))
    assert rows[0] == list(CSV_COLUMNS) + ["start_time"]
    assert rows[2] == ["site1/20210502_040000.WAV", "62.250", "63.000", "high", "0.5000", "2021-05-02T04:01:02.250"]
    write_csv(DETECTIONS, path)
    assert next(csv.reader(path.open())) == list(CSV_COLUMNS)


def test_recorder_timestamps():
    assert parse_recorder_timestamp("20210502_040000.WAV") == datetime(2021, 5, 2, 4, 0, 0)
    assert parse_recorder_timestamp("SMA01234_20210502_235959.wav") == datetime(2021, 5, 2, 23, 59, 59)
    assert parse_recorder_timestamp("20210502T040000.flac") == datetime(2021, 5, 2, 4)
    assert parse_recorder_timestamp("recording_12.wav") is None
    assert parse_recorder_timestamp("99999999_999999.wav") is None


def test_jsonl_drops_events_of_unfinished_files(tmp_path):
    path = tmp_path / "e.jsonl"
    with JsonlWriter(path, set()) as writer:
        writer.write(Detection("a.wav", 0, 1, "low", 0.9))
        writer.write(Detection("b.wav", 0, 1, "low", 0.9))
    with path.open("a") as handle:
        handle.write('{"file": "b.wav", "start_s')  # a line cut by a kill
    JsonlWriter(path, {"a.wav"}).close()
    assert [json.loads(line)["file"] for line in path.read_text().splitlines()] == ["a.wav"]


def test_formats():
    assert parse_formats("csv, RAVEN,csv") == ("csv", "raven")
    with pytest.raises(Exception, match="unknown format"):
        parse_formats("csv,xlsx")


# ---------------------------------------------------------------- event scoring


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


# ---------------------------------------------------------------- run state


def test_run_state_resumes_and_refuses_other_settings(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 10)
    state = RunState(tmp_path / "out", {"window": 1})
    assert not state.is_done(audio)
    state.mark_done(audio, "a.wav", 3, ["a.detections.csv"])
    again = RunState(tmp_path / "out", {"window": 1})
    assert again.is_done(audio) and again.done_names() == {"a.wav"}
    audio.write_bytes(b"y" * 20)  # replaced since: analysed again
    assert not again.is_done(audio)
    with pytest.raises(StateError, match="changed: window"):
        RunState(tmp_path / "out", {"window": 2})
