"""`validate` (runtime/field/validate.py): UAR on a labelled split, unreadable clips listed, exit codes, --reference."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import ManifestRow, read_manifest, write_manifest
from vocalprobe.runtime.engine.onnx_model import ModelError, OnnxModel
from vocalprobe.runtime.engine.long_clips import predict_clip
from vocalprobe.runtime.field.validate import validate, write_report

runner = CliRunner()


@pytest.fixture()
def manifest(tmp_path):
    """Two test clips per class (one of them wrongly labelled on purpose) and one unreadable clip."""
    rows = []
    for i, (label, freq) in enumerate(zip(DEFAULT_CLASSES, DEFAULT_FREQS)):
        for j in range(2):
            path = tmp_path / "clips" / f"{label}{j}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, tone_track([(0.05, 0.35, freq)], 0.4 + 0.1 * j, 22_050, seed=i * 2 + j), 22_050)
            rows.append(ManifestRow(f"clips/{label}{j}.wav", label, split="test"))
    rows[-1] = ManifestRow(rows[-1].path, "low", split="test")  # a "high" tone labelled low: predicted wrong
    (tmp_path / "clips" / "broken.wav").write_bytes(b"RIFF....WAVE")
    rows.append(ManifestRow("clips/broken.wav", "mid", split="test"))
    rows.append(ManifestRow("clips/low0.wav", "low", split="train"))
    write_manifest(tmp_path / "manifest.csv", rows)
    return tmp_path / "manifest.csv"


# UAR of the fixture: low recall 2/3 (one high tone is labelled low), mid 2/2, high 1/1 -> (2/3 + 1 + 1) / 3.
EXPECTED_UAR = (2 / 3 + 1 + 1) / 3


def test_validate_scores_and_lists_unreadable_clips(tmp_path, manifest):
    graph = build_band_graph(tmp_path / "m.onnx", metadata={"test_uar": f"{EXPECTED_UAR:.6f}"})
    report = validate(OnnxModel(graph), manifest, split="test", n_resamples=200)
    assert report.n_clips == 7 and report.n_scored == 6
    assert report.uar == pytest.approx(EXPECTED_UAR)
    assert report.uar_ci95[0] <= report.uar <= report.uar_ci95[1]
    assert report.difference_points == pytest.approx(0.0, abs=1e-3)
    assert report.passed is True
    assert [u["path"] for u in report.unreadable] == ["clips/broken.wav"]
    assert report.manifest_matches_study is False  # the test graph carries a dummy manifest hash
    assert np.asarray(report.confusion).sum() == 6
    json_path, png_path, note = write_report(report, tmp_path / "report")
    assert json.loads(json_path.read_text())["unreadable"][0]["problem"]
    assert png_path is not None and png_path.read_bytes()[:4] == b"\x89PNG" and note is None


def test_validate_cli_exit_codes(tmp_path, manifest):
    good = build_band_graph(tmp_path / "good.onnx", metadata={"test_uar": f"{EXPECTED_UAR:.6f}"})
    result = runner.invoke(app, ["validate", str(good), str(manifest), "--resamples", "100"])
    assert result.exit_code == 0, result.output
    assert f"ONNX UAR on test: {EXPECTED_UAR * 100:.2f}" in result.output and "over 6 of 7 clips" in result.output
    assert "unreadable: clips/broken.wav" in result.output
    assert (tmp_path / "good.validate-test" / "report.json").is_file()
    off = build_band_graph(tmp_path / "off.onnx", metadata={"test_uar": "0.95"})
    result = runner.invoke(app, ["validate", str(off), str(manifest), "--resamples", "100",
                                 "-o", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "differs from the study's by" in result.output
    loose = runner.invoke(app, ["validate", str(off), str(manifest), "--tolerance", "10", "--resamples", "100",
                                "-o", str(tmp_path / "r")])
    assert loose.exit_code == 0, loose.output


def test_validate_without_reference_or_matplotlib(tmp_path, manifest, monkeypatch):
    graph = build_band_graph(tmp_path / "m.onnx", drop_keys=("test_uar", "val_uar", "manifest_sha256"))
    report = validate(OnnxModel(graph), manifest, n_resamples=50)
    assert report.passed is None and report.reference_uar is None
    assert any("nothing to compare" in n for n in report.notes)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    _, png, note = write_report(report, tmp_path / "r")
    assert png is None and "matplotlib" in note


def test_validate_refuses_labels_the_model_does_not_know(tmp_path, manifest):
    graph = build_band_graph(tmp_path / "m.onnx", classes=("low", "mid", "bark"))
    with pytest.raises(ModelError, match="high"):
        validate(OnnxModel(graph), manifest)


def test_predict_clip_hook_respects_max_chunk_samples(tmp_path):
    graph = build_band_graph(tmp_path / "m.onnx", metadata={"max_chunk_samples": "8000"})
    model = OnnxModel(graph)
    assert predict_clip(model, np.zeros(8000, dtype=np.float32)).shape == (3,)
    with pytest.raises(ModelError, match="max_chunk_samples"):
        predict_clip(model, np.zeros(8001, dtype=np.float32))


def test_validate_against_a_reference_graph(tmp_path, manifest):
    graph = build_band_graph(tmp_path / "m.onnx")
    # the same detector with its classes in another order: same decisions once classes are matched by name
    same = build_band_graph(tmp_path / "same.onnx", classes=DEFAULT_CLASSES[::-1], freqs=DEFAULT_FREQS[::-1])
    report = validate(OnnxModel(graph), manifest, reference_model=OnnxModel(same), n_resamples=50)
    assert report.reference_model.endswith("same.onnx") and report.decisions_changed == 0
    assert report.reference_uar == pytest.approx(EXPECTED_UAR) and report.passed is True
    assert report.manifest_matches_study is None  # the study's manifest is not what is compared
    # a detector that confuses low and mid: 4 of the 6 readable clips change class, its UAR is lower
    swapped = build_band_graph(tmp_path / "swapped.onnx", freqs=(DEFAULT_FREQS[1], DEFAULT_FREQS[0], DEFAULT_FREQS[2]))
    report = validate(OnnxModel(graph), manifest, reference_model=OnnxModel(swapped), n_resamples=50)
    assert report.decisions_changed == 4
    assert report.reference_uar == pytest.approx((0 + 0 + 1) / 3)
    assert report.difference_points == pytest.approx((EXPECTED_UAR - 1 / 3) * 100) and report.passed is False
    result = runner.invoke(app, ["validate", str(graph), str(manifest), "--reference", str(swapped),
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "decisions changed: 4 of 6" in result.output
    assert "differs from the reference's" in result.output
    other = build_band_graph(tmp_path / "other.onnx", classes=("a", "b", "c"))
    with pytest.raises(ModelError, match="other classes"):
        validate(OnnxModel(graph), manifest, reference_model=OnnxModel(other))


def test_validate_split_all_scores_a_manifest_without_split_column(tmp_path, manifest):
    """A user's own labelled set has no split column: `--split all` scores every clip; train/val/test say so."""
    rows = [ManifestRow(r.path, r.label) for r in read_manifest(manifest).rows if r.split == "test"]
    plain = tmp_path / "plain.csv"
    write_manifest(plain, rows)
    graph = build_band_graph(tmp_path / "m.onnx")
    report = validate(OnnxModel(graph), plain, split="all", n_resamples=50)
    assert report.n_clips == 7 and report.n_scored == 6 and report.uar == pytest.approx(EXPECTED_UAR)
    with pytest.raises(ManifestError, match="--split all"):
        validate(OnnxModel(graph), plain, split="test", n_resamples=50)
    result = runner.invoke(app, ["validate", str(graph), str(plain), "--split", "all", "--resamples", "50",
                                 "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "ONNX UAR on all" in result.output and "over 6 of 7 clips" in result.output
    refused = runner.invoke(app, ["validate", str(graph), str(plain), "-o", str(tmp_path / "r2")])
    assert refused.exit_code == 1 and "--split all" in refused.output


def test_validate_detects_at_the_graphs_class_thresholds_without_the_background_class(tmp_path, manifest):
    """As `stream` does: the graph's own class_thresholds (from `export attach`) unless --min-conf says otherwise,
    and the background class left out unless --report-background."""
    from vocalprobe.runtime.core.clips import load_row

    classes = (*DEFAULT_CLASSES, "background")
    graph = build_band_graph(tmp_path / "t.onnx", classes=classes, freqs=(*DEFAULT_FREQS, 3000.0),
                             metadata={"class_thresholds": json.dumps({"low": 0.9, "mid": 0.2})})
    model = OnnxModel(graph)
    report = validate(model, manifest, split="test", n_resamples=50)
    assert {c: d["threshold"] for c, d in report.detection.items()} == {"low": 0.9, "mid": 0.2, "high": 0.5}
    assert report.ignored == ["background"] and "the graph's class_thresholds (2 class(es))" in report.thresholds_source
    table = read_manifest(manifest)
    scored = [(row, predict_clip(model, load_row(table, row, model.sample_rate))) for row in table.split("test")
              if row.path != "clips/broken.wav"]
    for i, name in enumerate(DEFAULT_CLASSES):
        threshold = report.detection[name]["threshold"]
        hits = [(row.label == name, probs[i] >= threshold) for row, probs in scored]
        assert report.detection[name]["true_positives"] == sum(t and h for t, h in hits)
        assert report.detection[name]["false_positives"] == sum(h and not t for t, h in hits)
        assert report.detection[name]["false_negatives"] == sum(t and not h for t, h in hits)
    assert sum(d["true_positives"] + d["false_positives"] for d in report.detection.values()) > 0
    result = runner.invoke(app, ["validate", str(graph), str(manifest), "--resamples", "50", "--min-conf", "0.3",
                                 "--report-background", "-o", str(tmp_path / "r")])
    assert "detections at thresholds: --min-conf 0.3" in result.output, result.output
    assert "background >= 0.3:" in result.output and "low >= 0.3:" in result.output
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["ignored"] == [] and saved["detection"]["low"]["threshold"] == 0.3
