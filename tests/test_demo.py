"""`vocalprobe demo` end to end on a shrunken embedded default: every step runs and the report holds real numbers."""

from __future__ import annotations

import re

import pytest

from vocalprobe import demo as demo_module
from vocalprobe.training.study import default as default_study


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path, whisper_tiny_en):
    # A smaller demo: 2-layer backbones, 10 clips per class, a 1-minute field recording, 1 seed; Whisper tiny.en
    # converted from the tests' copy of its pinned wheel (the demo itself downloads it into artifacts/downloads).
    small = default_study.DefaultInputs(shape=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                                   conv_channels=32), clips_per_class=10, field_minutes=1.0,
                                        whisper_source=str(whisper_tiny_en[0]))
    report = demo_module.run_demo(tmp_path, log=lambda m: None, progress=False,
                                  config=demo_module.DemoConfig(inputs=small, seeds=1))
    text = report.read_text()
    models = tmp_path / "artifacts" / "demo" / "models"
    names = sorted(p.name for p in models.glob("*.onnx"))
    assert names == ["fusion.onnx", "tiny-hubert.int8-conv.onnx", "tiny-hubert.int8.onnx", "tiny-hubert.onnx",
                     "tiny-wav2vec2.int8-conv.onnx", "tiny-wav2vec2.int8.onnx", "tiny-wav2vec2.onnx",
                     "tiny-wavlm.int8-conv.onnx", "tiny-wavlm.int8.onnx", "tiny-wavlm.onnx",
                     "whisper-tiny.en.int8.onnx", "whisper-tiny.en.onnx"]  # no int8-conv: Whisper has no waveform CNN
    assert "3 tiny **untrained** backbones" in text and "1 **trained** (whisper-tiny.en" in text
    rows = [line for line in text.splitlines() if line.startswith(("| tiny-", "| whisper-", "| fusion"))]
    fp32_rows = [line for line in rows if "int8" not in line]
    assert len(fp32_rows) == 5
    for row in fp32_rows:  # fp32 graphs score exactly what the study promised
        assert "| +0.00 | yes |" in row, row
    quantized_rows = [line for line in rows if "int8" in line]
    assert len(quantized_rows) == 7  # int8 of each backbone, int8-conv of the CNN ones, each against its fp32 graph
    assert all(re.search(r"\| \d+ of \d+ \|$", row) for row in quantized_rows), quantized_rows
    assert "{rel(" not in text
    stream = tmp_path / "artifacts" / "demo" / "stream"
    assert (stream / "detections.csv").is_file() and list(stream.rglob("*.selection.table.txt"))
    field_row = re.search(r"\| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text)
    assert field_row and int(field_row.group(2)) > 0
    assert "F1 (DCASE event-based)" in text and float(field_row.group(6)) <= float(field_row.group(5))  # stricter
    assert "so it differs from Table III's mean over seeds" in text  # which UAR the study column is
    check_agile_section(text, tmp_path / "artifacts" / "demo" / "agile")


def check_agile_section(text, agile):
    """Step 5: every file of the loop is there, the reviewed hits became the archive's annotations, and the new graph
    (the query's class + background) streamed the recording and was scored next to the study's graphs."""
    import csv

    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.runtime.engine.onnx_model import OnnxModel

    assert "## The agile loop on the field recording" in text
    label = re.search(r"\| `label import --class (\w+)` \|", text).group(1)
    for rel in ("archive/hoplite.sqlite", "archive/usearch.index", "hits.txt", "hits.csv", "hits.reviewed.txt",
                "head/head.json", "head/probe.safetensors", "head/thresholds.csv", "apply/detections.csv",
                f"{label}.onnx", "stream/detections.csv", "stream-study/detections.csv"):
        assert (agile / rel).is_file(), rel
    reviewed = list(csv.DictReader((agile / "hits.reviewed.txt").open(encoding="utf-8"), delimiter="\t"))
    verdicts = [r["Label"] for r in reviewed]
    assert set(verdicts) == {"positive", "negative"} and verdicts.count("positive") >= 3
    with ArchiveDB.open_reader(agile / "archive") as archive:
        assert len(archive.annotations()) == len(reviewed)  # one window per reviewed hit
        assert archive.count_windows() > len(reviewed) > 0
    assert OnnxModel(agile / f"{label}.onnx").classes == (label, "background")
    rows = re.findall(r"\| `(\S+)` \((study|attached probe)\) \| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", text)
    assert [(name, kind) for name, kind, *_ in rows][-1] == (f"{label}.onnx", "attached probe"), rows
    assert len(rows) == 3 and all(int(truth) > 0 for *_, truth, _, _ in rows), rows


def test_demo_threads_below_one_is_a_usage_error_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "artifacts").exists()
