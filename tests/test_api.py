"""The Python API (api.py): `vocalprobe.predict` gives every window's probabilities as `stream` computes them, with
the command's errors; `import vocalprobe` stays cheap (the API loads on first use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, build_band_graph, tone_track

import vocalprobe
from vocalprobe.runtime.core.detections.layout import read_detections
from vocalprobe.runtime.core.errors import VocalprobeError

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000
#: (start_s, end_s, frequency) of the tones in rec.wav: low then high, in 1 s windows.
TONES = ((0.1, 0.9, 600.0), (2.1, 2.9, 4200.0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    graph = build_band_graph(root / "band.onnx")
    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "rec.wav", tone_track(TONES, 3.5, RATE, seed=1), RATE, subtype="FLOAT")
    return graph, audio


def test_predict_gives_every_window_with_one_column_per_class(setup):
    graph, audio = setup
    frame = vocalprobe.predict(audio, graph)
    import pandas

    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == ["file", "start", "end", *DEFAULT_CLASSES]
    assert list(frame["start"]) == [0.0, 1.0, 2.0, 3.0] and frame["end"].iloc[-1] == pytest.approx(3.5)
    assert set(frame["file"]) == {str(audio / "rec.wav")}
    best = frame[list(DEFAULT_CLASSES)].to_numpy().argmax(axis=1)
    assert DEFAULT_CLASSES[best[0]] == "low" and DEFAULT_CLASSES[best[2]] == "high"


def test_predict_matches_stream_and_works_without_pandas(setup, tmp_path, monkeypatch):
    graph, audio = setup
    summary = vocalprobe.stream(audio, graph, tmp_path / "out", formats="csv", min_conf=0.0)
    assert summary.done and summary.exit_code == 0
    streamed = {(d.start_s, d.label): d.confidence for d in read_detections(tmp_path / "out")}
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    columns = vocalprobe.predict([audio / "rec.wav"], [graph])
    assert isinstance(columns, dict) and isinstance(columns["low"], np.ndarray)
    predicted = {(s, c): float(columns[c][i]) for i, s in enumerate(columns["start"]) for c in DEFAULT_CLASSES}
    assert streamed.keys() == predicted.keys()
    for key, confidence in streamed.items():
        assert predicted[key] == pytest.approx(confidence, abs=1e-4)


def test_the_api_refuses_what_the_command_refuses(setup, tmp_path):
    graph, audio = setup
    with pytest.raises(VocalprobeError, match="final-window"):
        vocalprobe.predict(audio, graph, final_window="wrap")
    with pytest.raises(VocalprobeError, match="no .wav/.flac/.ogg"):
        vocalprobe.predict(tmp_path, graph)
    with pytest.raises(VocalprobeError, match="batch"):
        vocalprobe.predict(audio, graph, batch=0)
    with pytest.raises(VocalprobeError):
        vocalprobe.predict(audio, tmp_path / "missing.onnx")
    with pytest.raises(VocalprobeError, match="not stdin"):
        vocalprobe.predict("-", graph)


def test_import_vocalprobe_loads_no_numpy():
    code = ("import sys, vocalprobe, vocalprobe.cli\n"
            "assert 'predict' in dir(vocalprobe)\n"
            "print(sorted(m for m in sys.modules if m == 'numpy' or m.startswith(('numpy.', 'vocalprobe.api'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
    with pytest.raises(AttributeError):
        vocalprobe.no_such_function


def test_embed_and_export_graph_do_and_refuse_what_their_commands_do(setup, tmp_path):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    graph, audio = setup
    command = CliRunner().invoke(app, ["export", str(tmp_path / "no-study"), "--out", str(tmp_path / "m.onnx")])
    assert command.exit_code == 1
    with pytest.raises(VocalprobeError) as api_error:
        vocalprobe.export_graph(tmp_path / "no-study", tmp_path / "m.onnx")
    assert str(api_error.value) in command.output.replace("\n", " ")
    with pytest.raises(VocalprobeError, match="final-window"):
        vocalprobe.embed(audio, graph, tmp_path / "db", final_window="wrap")
    summary = vocalprobe.embed(audio, graph, tmp_path / "db")
    assert len(summary.done) == 1 and summary.windows == 4 and not summary.failed
    assert vocalprobe.embed(audio, graph, tmp_path / "db").windows == 0  # resumable: embedded once
