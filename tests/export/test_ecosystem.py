"""vocalprobe graphs in other tools, unchanged: OpenSoundscape's ``ONNXModel`` and perch-hoplite's
``TaxonomyModelOnnx``, with the real packages (each test skips, saying why, when its package is not installed).

The graph is the band-energy graph of ``runtime_graphs`` (a real ONNX graph with the contract's names) put through
export's own layout function (``apply_waveform_layout``) and metadata (``build_metadata``), so these tests need
neither torch nor a backbone.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.export.metadata import build_metadata
from vocalprobe.export.onnx_export import apply_waveform_layout
from vocalprobe.export.onnx_io import load_model, save_model, set_metadata
from vocalprobe.runtime.core.graph_contract import PERCH_HOPLITE_CONFIG
from vocalprobe.runtime.engine.onnx_model import OnnxModel

SR = 16_000
WINDOW_S = 1.0


@pytest.fixture
def graph(tmp_path):
    """A graph as export writes it: any leading waveform axes, the export metadata."""
    path = build_band_graph(tmp_path / "band.onnx", sample_duration=WINDOW_S)
    model = apply_waveform_layout(load_model(path))
    set_metadata(model, build_metadata(classes=DEFAULT_CLASSES, sample_rate=SR, sample_duration=WINDOW_S,
                                       max_chunk_samples=None, extra={"backbone": "test/band-energy"}))
    return save_model(model, tmp_path / "model.onnx")


@pytest.fixture
def recording(tmp_path):
    """6 s at the graph's rate (no resampling on either side): a tone of each class, then silence."""
    freq = dict(zip(DEFAULT_CLASSES, DEFAULT_FREQS))
    x = tone_track([(0.2, 1.8, freq["low"]), (2.1, 3.9, freq["mid"]), (4.0, 5.0, freq["high"])], 6.0, SR)
    path = tmp_path / "audio" / "night.wav"
    path.parent.mkdir()
    sf.write(path, x, SR, subtype="FLOAT")
    return path


def _stream_scores(graph, recording, out) -> dict[tuple[float, str], float]:
    """Every class's probability in every window, as `vocalprobe stream` writes them (--min-conf 0)."""
    from vocalprobe.cli import app

    result = CliRunner().invoke(app, ["stream", str(recording), "-m", str(graph), "-o", str(out), "--format", "csv",
                                      "--min-conf", "0", "--final-window", "drop"])
    assert result.exit_code == 0, result.output
    with open(out / "detections.csv", newline="") as handle:
        return {(round(float(r["start_s"]), 6), r["label"]): float(r["confidence"]) for r in csv.DictReader(handle)}


def test_opensoundscape_predicts_and_embeds_like_stream(graph, recording, tmp_path):
    """Found: OpenSoundscape feeds [batch, 1, samples] (hard-coded), which a [batch, samples] graph refused."""
    onnx_model = pytest.importorskip("opensoundscape.ml.onnx_model",
                                     reason="opensoundscape is not installed (a separate CI step, see README)")
    oss = onnx_model.ONNXModel(str(graph))  # every setting from the graph's metadata, no flag
    assert oss.add_channel_dim is True and list(oss.classes) == list(DEFAULT_CLASSES)
    scores = oss.predict([str(recording)], batch_size=4, num_workers=0)
    assert len(scores) == 6  # 1 s windows, the same starts as stream's
    streamed = _stream_scores(graph, recording, tmp_path / "out")
    for (_, start, _), row in scores.iterrows():
        for label in DEFAULT_CLASSES:
            # the CSV keeps 4 decimals
            assert row[label] == pytest.approx(streamed[(round(float(start), 6), label)], abs=5e-5 + 1e-7)
    assert scores.iloc[0].idxmax() == "low" and scores.iloc[2].idxmax() == "mid" and scores.iloc[4].idxmax() == "high"

    embeddings = oss.embed([str(recording)], batch_size=4, num_workers=0)
    windows = sf.read(recording, dtype="float32")[0][: 6 * SR].reshape(6, SR)
    _, ours = OnnxModel(graph, provider="cpu").predict_with_embedding(windows)
    np.testing.assert_allclose(np.asarray(embeddings, dtype=np.float32), ours, rtol=1e-5, atol=1e-6)


def test_perch_hoplite_runs_the_graph_from_its_metadata(graph, recording):
    """Found: hoplite needed a hand-written config; now it is in the graph (``perch_hoplite_config``)."""
    from vocalprobe.runtime.core.imports import import_onnxruntime

    import_onnxruntime()  # before anything of hoplite's that may load usearch
    models_onnx = pytest.importorskip("perch_hoplite.zoo.models_onnx", reason="perch-hoplite is not installed")
    from ml_collections import config_dict

    meta = OnnxModel(graph, provider="cpu").info.metadata
    config = json.loads(meta[PERCH_HOPLITE_CONFIG])
    assert config == {"sample_rate": SR, "window_size_s": WINDOW_S, "hop_size_s": WINDOW_S, "target_peak": None,
                      "input_name": "waveform", "output_map": {"embedding": "embedding", "logits": "probabilities"}}
    hoplite = models_onnx.TaxonomyModelOnnx.from_config(config_dict.ConfigDict({**config, "model_path": str(graph)}))
    audio = sf.read(recording, dtype="float32")[0]
    outputs = hoplite.embed(audio)
    probabilities, embedding = OnnxModel(graph, provider="cpu").predict_with_embedding(audio.reshape(6, SR))
    assert outputs.embeddings.shape == (6, 1, embedding.shape[1])
    np.testing.assert_allclose(outputs.embeddings[:, 0], embedding, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outputs.logits["label"], probabilities, rtol=1e-6, atol=1e-7)


def test_the_layout_and_hoplite_config_are_written_by_export(graph):
    """Found: [batch, 1, samples] was refused. The graph takes every layout those tools feed, giving one row per
    window; vocalprobe's runtime still runs it (and the older [batch, samples] graphs, see test_onnx_model)."""
    model = OnnxModel(graph, provider="cpu")
    assert model.info.waveform_layout == "...,samples"
    windows = np.random.default_rng(0).normal(size=(3, SR)).astype(np.float32)
    expected = model.predict(windows)
    session = model.session
    for shaped in (windows[:, None, :], windows[None], windows[None, :, None, :]):
        (got,) = session.run(["probabilities"], {"waveform": shaped})
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    (one,) = session.run(["probabilities"], {"waveform": windows[0]})
    np.testing.assert_allclose(one, expected[:1], rtol=1e-6)
    assert model.session.get_inputs()[0].shape == []  # no declared rank


def test_stream_scores_are_opensoundscapes_score_table(graph, recording, tmp_path):
    """`stream --scores` writes what OpenSoundscape's ``predict`` returns: the same index (file, start_time,
    end_time), one column per class, the same scores on the same windows."""
    onnx_model = pytest.importorskip("opensoundscape.ml.onnx_model",
                                     reason="opensoundscape is not installed (a separate CI step, see README)")
    import pandas as pd

    from vocalprobe.cli import app

    theirs = onnx_model.ONNXModel(str(graph)).predict([str(recording)], batch_size=4, num_workers=0)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["stream", str(recording), "-m", str(graph), "-o", str(out), "--scores",
                                      "--final-window", "drop"])
    assert result.exit_code == 0, result.output
    (table,) = out.glob("night.scores.*")  # Parquet where pyarrow is installed, else CSV (OpenSoundscape's venv)
    ours = (pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table)).set_index(
        ["file", "start_time", "end_time"])
    assert list(ours.index.names) == list(theirs.index.names) and list(ours.columns) == list(theirs.columns)
    for level in ("start_time", "end_time"):
        assert np.allclose(ours.index.get_level_values(level), theirs.index.get_level_values(level))
    assert np.allclose(ours.to_numpy(), theirs.to_numpy(), atol=1e-5)


def test_opensoundscape_reads_the_raven_tables_back(graph, recording, tmp_path):
    """OpenSoundscape's own Raven reader (``BoxedAnnotations``) reads the per-file and the combined Raven tables of
    `vocalprobe stream` back: the same events, times, classes and band as the CSV."""
    annotations = pytest.importorskip("opensoundscape.annotations",
                                      reason="opensoundscape is not installed (a separate CI step, see README)")
    from vocalprobe.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["stream", str(recording), "-m", str(graph), "-o", str(out), "--format",
                                      "raven,csv", "--min-conf", "0.5", "--merge"])
    assert result.exit_code == 0, result.output
    with open(out / "detections.csv", newline="") as handle:
        expected = [(float(r["start_s"]), float(r["end_s"]), r["label"]) for r in csv.DictReader(handle)]
    assert len(expected) >= 3
    for table in (out / "night.selection.table.txt", out / "detections.selection.table.txt"):
        boxes = annotations.BoxedAnnotations.from_raven_files([str(table)], annotation_column="Class",
                                                             audio_files=[str(recording)]).df
        got = [(round(r.start_time, 3), round(r.end_time, 3), r.annotation) for r in boxes.itertuples()]
        assert got == [(round(s, 3), round(e, 3), label) for s, e, label in expected], table.name
        assert (boxes["high_f"] == SR / 2).all() and (boxes["low_f"] == 0).all()
