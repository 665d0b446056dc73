"""End to end, offline, through the CLI: a tiny study -> `vocalprobe export` (fp32, int8) and `export fusion
--from-study` -> `vocalprobe validate`. The fp32 and fused graphs must score exactly the study's Test UAR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.datasets.synthetic import generate_dataset
from vocalprobe.training.study.runner import DatasetSpec, StudyConfig, run_study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_checkpoints):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export_e2e")
    manifest = generate_dataset(root / "data", seed=1, clips_per_class=12, field_minutes=0)
    # a chunk limit of 0.7 s: the synthetic calls run up to ~2.5 s, so many clips go through the chunked path in
    # the study AND in validate
    config = StudyConfig(name="tiny", datasets=(DatasetSpec("synthetic", manifest),),
                         backbones=(str(tiny_checkpoints["hubert"]), str(tiny_checkpoints["wavlm"])), seeds=1,
                         device="cpu", out_root=root / "studies", cache_dir=root / "cache", chunk_seconds=0.7,
                         bootstrap_resamples=100)
    summary = run_study(config, progress=False)
    return root, manifest, config.out_dir, summary


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def validated(root: Path, graph: Path, manifest: Path) -> dict:
    code, output = run("validate", graph, manifest, "--out", root / f"{graph.stem}-validate", "--threads", "1")
    report = json.loads((root / f"{graph.stem}-validate" / "report.json").read_text())
    return {"code": code, "output": output, **report}


def test_study_export_validate(tiny_study):
    root, manifest, study_dir, summary = tiny_study
    choice = next(c for c in summary.choices if c.backbone == "hubert")
    out = root / "hubert.onnx"
    code, output = run("export", study_dir, "--dataset", "synthetic", "--backbone", "hubert", "--out", out,
                       "--threads", "1")
    assert code == 0, output
    assert out.is_file() and out.with_suffix(".parity.json").is_file()
    parity = json.loads(out.with_suffix(".parity.json").read_text())
    assert parity[0]["passed"] and any(c["chunked"] for c in parity[0]["cases"])
    meta = json.loads(json.dumps(_metadata(out)))
    assert meta["layer"] == str(choice.best_layer) and meta["dataset"] == "synthetic"
    assert meta["max_chunk_samples"] == str(int(0.7 * 16000)) and meta["quantization"] == "none"
    from vocalprobe.runtime.core.manifest import read_manifest

    assert meta["manifest_sha256"] == read_manifest(manifest).content_hash()

    report = validated(root, out, manifest)
    assert report["code"] == 0, report["output"]
    assert report["n_scored"] == report["n_clips"] and report["manifest_matches_study"]
    assert report["uar"] == pytest.approx(float(meta["test_uar"]), abs=1e-12)  # exactly the study's Test UAR
    assert (root / "hubert-validate" / "confusion.png").is_file()

    # int8 (dynamic, MatMul): exported from the same study, validated against the same reference
    out8 = root / "hubert-int8.onnx"
    code, output = run("export", study_dir, "--backbone", "hubert", "--quantize", "int8", "--out", out8)
    assert code == 0, output
    assert _metadata(out8)["quantization"] == "int8"
    report8 = validated(root, out8, manifest)
    assert report8["reference_uar"] == report["reference_uar"] and report8["uar"] is not None

    # int8-conv, validated against the fp32 graph on the same clips (the UAR change quantization costs)
    out_conv = root / "hubert-int8conv.onnx"
    code, output = run("export", study_dir, "--backbone", "hubert", "--quantize", "int8-conv", "--out", out_conv)
    assert code == 0, output
    assert _metadata(out_conv)["quantization"] == "int8-conv"
    code, output = run("validate", out_conv, manifest, "--reference", out, "--tolerance", "100", "--out",
                       root / "conv-vs-fp32")
    assert code == 0, output
    against = json.loads((root / "conv-vs-fp32" / "report.json").read_text())
    assert against["reference_model"] == str(out) and against["reference_uar"] == pytest.approx(report["uar"])
    assert 0 <= against["decisions_changed"] <= against["n_scored"]
    assert f"decisions changed: {against['decisions_changed']} of {against['n_scored']}" in output


def test_layer_choice_and_bad_options(tiny_study, tmp_path):
    root, manifest, study_dir, summary = tiny_study
    code, output = run("export", study_dir, "--backbone", "wavlm", "--layer", "0", "--out", tmp_path / "w0.onnx")
    assert code == 0, output
    meta = _metadata(tmp_path / "w0.onnx")
    result = next(r for r in summary.results if r.backbone == "wavlm" and r.layer == 0)
    assert meta["layer"] == "0" and float(meta["test_uar"]) == pytest.approx(result.test_uar)
    code, output = run("export", study_dir, "--backbone", "wavlm", "--layer", "9", "--out", tmp_path / "x.onnx")
    assert code == 1 and "probed layers [0, 1, 2], not 9" in output
    code, output = run("export", study_dir, "--out", tmp_path / "x.onnx")
    assert code == 1 and "choose one with --backbone" in output
    code, output = run("export", study_dir, "--backbone", "nope", "--out", tmp_path / "x.onnx")
    assert code == 1 and "no backbone 'nope'" in output
    assert not (tmp_path / "x.onnx").exists()


def test_fusion_from_study_validates(tiny_study):
    root, manifest, study_dir, summary = tiny_study
    out = root / "fusion.onnx"
    code, output = run("export", "fusion", "--from-study", study_dir, "--out", out)
    assert code == 0, output
    meta = _metadata(out)
    members = json.loads(meta["members"])
    assert [m["backbone"] for m in members] == ["hubert", "wavlm"]
    assert [int(m["layer"]) for m in members] == [c.best_layer for c in summary.choices]
    report = validated(root, out, manifest)
    assert report["code"] == 0, report["output"]
    assert report["uar"] == pytest.approx(float(meta["test_uar"]), abs=1e-12)


def test_a_quantized_export_reuses_the_probes_fp32_graph(tiny_study, tmp_path):
    """What the demo does for each int8 mode: quantize the fp32 graph exported (and checked) before, not export the
    same graph again; a graph of anything else is refused before anything is written."""
    from vocalprobe.export import quant_modes
    from vocalprobe.export.onnx_export import ExportError, export_from_study
    from vocalprobe.export.onnx_io import load_model, save_model, set_metadata

    _, _, study_dir, _ = tiny_study
    fp32 = tmp_path / "hubert.onnx"
    export_from_study(study_dir, fp32, backbone="hubert", parity=False)
    steps: list[str] = []
    result = export_from_study(study_dir, tmp_path / "h8.onnx", backbone="hubert", quantize="int8", fp32_graph=fp32,
                               log=steps.append)
    assert not any("torch.onnx" in step for step in steps), steps  # not exported again
    assert result.quantized_parity.passed and result.metadata["quantization"] == "int8"
    quant_modes.mode("int8").quantize(fp32, tmp_path / "direct.onnx")
    assert (tmp_path / "h8.onnx").read_bytes() == (tmp_path / "direct.onnx").read_bytes()

    other = load_model(fp32)
    meta = _metadata(fp32)
    set_metadata(other, {**meta, "layer": str(int(meta["layer"]) + 1)})
    save_model(other, tmp_path / "other-layer.onnx")
    with pytest.raises(ExportError, match="not the fp32 export of this probe: its metadata differ in layer"):
        export_from_study(study_dir, tmp_path / "x.onnx", backbone="hubert", quantize="int8",
                          fp32_graph=tmp_path / "other-layer.onnx")
    assert not (tmp_path / "x.onnx").exists()


def _metadata(path: Path) -> dict:
    from vocalprobe.export.metadata import read_metadata

    return read_metadata(path)
