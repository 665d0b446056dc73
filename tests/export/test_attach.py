"""`vocalprobe export attach`: the graph's backbone with a probe trained on its archived vectors on top; stream and
validate run it unchanged and its probabilities are `probe apply`'s up to the float16 storage of the vectors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TONES = ((0.5, 1.0, 600.0, "low"), (2.0, 2.5, 4200.0, "high"), (3.0, 3.5, 1800.0, "mid"))
#: |attached graph - probe apply| on the same windows: the head sees float32 embeddings in the graph and their
#: float16 copies in the archive (relative error <= 2^-11 per value), amplified by the z-score and the MLP. About
#: 1e-4 on these tones; the bound leaves a factor 10.
FLOAT16_BOUND = 1e-3


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def fitted_archive(root: Path, graph: Path, n_files: int = 4) -> tuple[Path, Path, Path]:
    audio = root / "audio"
    rows = ["Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tFile Offset (s)\tClass"]
    for i in range(n_files):
        path = audio / f"2021050{i + 1}_040000.WAV"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), tone_track([(s, e, f) for s, e, f, _ in TONES], 4.0, 16_000, seed=i), 16_000,
                 subtype="FLOAT")
        rows += [f"{len(rows)}\t{s}\t{e}\t{path.resolve()}\t{s}\t{label}" for s, e, _, label in TONES]
    (root / "reviewed.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    db, head = root / "db", root / "head"
    assert cli("embed", audio, "-m", graph, "--db", db).exit_code == 0
    assert cli("label", "import", root / "reviewed.txt", "--db", db).exit_code == 0
    fitted = cli("probe", "fit", "--db", db, "--out", head)
    assert fitted.exit_code == 0, fitted.output
    return db, head, audio


def test_attached_graph_equals_probe_apply_and_streams(tmp_path):
    graph = build_band_graph(tmp_path / "band.onnx", sample_duration=0.5)
    db, head, audio = fitted_archive(tmp_path, graph)
    attached = cli("export", "attach", graph, head, "--out", tmp_path / "attached.onnx")
    assert attached.exit_code == 0, attached.output

    from vocalprobe.runtime.archive.apply import archive_probabilities
    from vocalprobe.runtime.archive.head import load_head
    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.sources import FileSource
    from vocalprobe.runtime.engine.batches import window_probabilities
    from vocalprobe.runtime.engine.windows import WindowPlan

    model = OnnxModel(tmp_path / "attached.onnx")
    loaded = load_head(head)
    assert model.classes == loaded.classes == ("high", "low", "mid")
    assert json.loads(model.info.metadata["class_thresholds"]) == loaded.thresholds
    assert json.loads(model.info.metadata["attached_head"])["kind"] == "mlp"
    assert model.info.val_uar is None and model.info.test_uar is None  # the old probe's scores are gone
    plan = WindowPlan.from_seconds(0.5, None, 16_000)
    with ArchiveDB.open_reader(db) as archive:
        names = {rid: r.filename for rid, r in archive.recordings().items()}
        applied = {(names[w.recording_id], w.start_s): p for rows, probs in archive_probabilities(loaded, archive)
                   for w, p in zip(rows, probs)}
    worst = 0.0
    for path in sorted(audio.iterdir()):
        for window, probs in window_probabilities(FileSource(path, path.name).blocks(16_000), model, plan):
            worst = max(worst, float(np.abs(probs - applied[(path.name, window.start / 16_000)]).max()))
    assert len(applied) == 4 * 8 and worst < FLOAT16_BOUND, worst
    assert worst > 0  # the archive really stores float16

    streamed = cli("stream", audio, "-m", tmp_path / "attached.onnx", "-o", tmp_path / "out", "--min-conf", "0.5")
    assert streamed.exit_code == 0, streamed.output
    labels = {(r["file"], float(r["start_s"]), r["label"]) for r in csv.DictReader(
        (tmp_path / "out" / "detections.csv").open())}
    assert ("20210501_040000.WAV", 0.5, "low") in labels


def test_validate_runs_on_an_attached_graph(tmp_path, synthetic_manifest):
    graph = build_band_graph(tmp_path / "band.onnx", sample_duration=0.5)
    _, head, _ = fitted_archive(tmp_path, graph, n_files=3)
    assert cli("export", "attach", graph, head, "--out", tmp_path / "attached.onnx").exit_code == 0
    manifest = synthetic_manifest(tmp_path / "clips", [0.5] * 6, labels=["low", "mid", "high"] * 2,
                                  splits=["test"] * 6)
    result = cli("validate", tmp_path / "attached.onnx", manifest, "--resamples", "50")
    assert result.exit_code == 0, result.output
    assert "ONNX UAR on test" in result.output


def test_a_head_of_another_graph_is_refused(tmp_path):
    graph = build_band_graph(tmp_path / "band.onnx", sample_duration=0.5)
    _, head, _ = fitted_archive(tmp_path, graph, n_files=3)
    other = build_band_graph(tmp_path / "other.onnx", freqs=(500.0, 1500.0, 4000.0), sample_duration=0.5)
    refused = cli("export", "attach", other, head, "--out", tmp_path / "attached.onnx")
    assert refused.exit_code == 1 and "trained on the vectors of another graph" in refused.output
    assert not (tmp_path / "attached.onnx").exists()
    same = cli("export", "attach", graph, head, "--out", graph)
    assert same.exit_code == 1 and "is the input graph" in same.output
