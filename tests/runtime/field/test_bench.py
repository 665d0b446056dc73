"""`vocalprobe bench` (runtime/field/bench.py): speed, latency and memory figures of a graph."""

from __future__ import annotations

import pytest
from runtime_graphs import build_band_graph

from vocalprobe.runtime.field.bench import bench_model, bench_stream
from vocalprobe.runtime.engine.onnx_model import OnnxModel


def test_bench_reports_speed_latency_memory(tmp_path):
    model = OnnxModel(build_band_graph(tmp_path / "m.onnx"), threads=1)
    result = bench_model(model, window_s=1.0, batch=4, seconds=8, latency_runs=5)
    assert result.audio_seconds == 8 and result.x_realtime > 0 and result.latency_ms_median > 0
    assert result.peak_rss_mb is not None and result.peak_rss_mb > 10
    stream = bench_stream(model, window_s=1.0, batch=4, seconds=8, work_dir=tmp_path)
    assert stream.audio_seconds == pytest.approx(8, abs=0.01)
    assert 0 < stream.model_seconds < stream.wall_seconds


def test_stream_files_times_every_file_through_the_stream(tmp_path):
    import soundfile as sf

    from vocalprobe.runtime.field.bench import stream_files, synthetic_audio

    model = OnnxModel(build_band_graph(tmp_path / "m.onnx"), threads=1)
    paths = []
    for i, (seconds, rate) in enumerate(((3.0, 48_000), (2.5, 16_000))):
        paths.append(tmp_path / f"f{i}.wav")
        sf.write(paths[-1], synthetic_audio(seconds, rate, seed=i), rate, subtype="PCM_16")
    result = stream_files(model, paths, window_s=1.0, batch=2, work_dir=tmp_path)
    assert result.audio_seconds == pytest.approx(5.5, abs=0.01)
    assert 0 < result.model_seconds < result.wall_seconds


def test_bench_times_graphs_of_different_classes_and_its_overhead_agrees_with_its_figures(tmp_path):
    import re

    from typer.testing import CliRunner

    from vocalprobe.cli import app

    a = build_band_graph(tmp_path / "a.onnx")
    b = build_band_graph(tmp_path / "b.onnx", classes=("x", "y", "z"))
    result = CliRunner().invoke(app, ["bench", str(a), str(b), "--seconds", "4", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "not as a fusion" in result.output and result.output.count("streaming a 48 kHz file") == 2
    for x, model_x, overhead in re.findall(r"file: ([\d.]+)x real time, the model inside it ([\d.]+)x; overhead "
                                           r"([-\d.]+)%", result.output):
        x, model_x, overhead = float(x), float(model_x), float(overhead)  # each rounded to 0.1
        low, high = ((model_x - 0.05) / (x + 0.05) - 1) * 100, ((model_x + 0.05) / max(x - 0.05, 1e-9) - 1) * 100
        assert low - 0.05 <= overhead <= high + 0.05
