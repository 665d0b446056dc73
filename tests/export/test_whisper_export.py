"""Whisper encoders through `vocalprobe export`: one graph with the contract (log-mel front end, convs, positions
sliced to the clip's frames, blocks 1..L), fp32 parity with the torch pipeline under the family's relative bars,
int8 within its mode's bound, int8-conv refused; a tiny random Whisper end to end through a study, and the trained
tiny.en weights (tests/whisper_weights.py) with `stream` over real audio."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from export_cases import CLASSES, random_probe
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.export.families import family_of
from vocalprobe.export.metadata import build_metadata, read_metadata
from vocalprobe.export.onnx_export import export_pipeline
from vocalprobe.export.parity import check_parity
from vocalprobe.runtime.core.graph_contract import INPUT_NAMES, OUTPUT_NAMES
from vocalprobe.training.backbones import load_backbone
from vocalprobe.training.deployable import ProbePipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16_000
WHISPER = family_of("whisper")
LENGTHS = (0.3, 1.0, 7.3)  # seconds: shorter than the repeat-pad minimum, one second, several


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    """A tiny randomly initialised WhisperModel (2 encoder blocks, 80 mels), saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-whisper")
    config = transformers.WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                                        num_mel_bins=80, max_source_positions=1500, max_target_positions=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.WhisperModel(config).save_pretrained(folder)
    return folder


def clips_of(samples: np.ndarray, seconds) -> list[np.ndarray]:
    """``samples`` tiled or cut to each length."""
    out = []
    for s in seconds:
        n = int(round(s * SR))
        out.append(np.ascontiguousarray(np.tile(samples, -(-n // samples.size))[:n], dtype=np.float32))
    return out


def export_layer(checkpoint: Path, layer: int, path: Path, *, chunk_samples: int) -> tuple[ProbePipeline, Path]:
    backbone = load_backbone(checkpoint)
    pipeline = ProbePipeline(backbone.model, random_probe(2 * backbone.dim, seed=layer), layer).float()
    meta = build_metadata(classes=CLASSES, sample_rate=SR, sample_duration=1.0, max_chunk_samples=chunk_samples,
                          extra={"backbone": "whisper", "family": "whisper", "layer": str(layer)})
    return pipeline, export_pipeline(pipeline, path, metadata=meta, opset=WHISPER.opset)


def layer_norms(path: Path) -> int:
    return sum(node.op_type == "LayerNormalization" for node in onnx.load(str(path)).graph.node)


def test_whisper_family_and_modes():
    from vocalprobe.export import quant_modes

    assert WHISPER.relative and "positional table sliced" in WHISPER.truncation
    assert quant_modes.auto_candidates("whisper") == ("none", "int8")
    assert quant_modes.auto_candidates("hubert") == ("none", "int8", "int8-conv")
    assert not quant_modes.mode("int8-conv").applies_to("whisper")
    assert quant_modes.refusal("int8-conv", "whisper") == (
        "--quantize int8-conv does not apply to whisper backbones: it quantizes the convolutions of a waveform CNN, "
        "which this backbone does not have; use one of none, int8 or auto")


def test_tiny_random_whisper_parity_and_truncation(tiny_whisper, speech, tmp_path):
    samples, _ = speech
    chunk = 2 * SR
    clips = clips_of(samples, LENGTHS) + clips_of(samples, [2.6])  # the last one is fed chunk by chunk
    norms = {}
    for layer in (1, 2):
        pipeline, graph = export_layer(tiny_whisper, layer, tmp_path / f"L{layer}.onnx", chunk_samples=chunk)
        report = check_parity(pipeline, graph, clips, chunk_samples=chunk, atol=WHISPER.atol,
                              atol_embedding=WHISPER.atol_embedding, relative=True)
        assert report.passed and any(c.chunked for c in report.cases) and all(c.relative for c in report.cases)
        assert {c.samples for c in report.cases} == {c.size for c in clips}
        norms[layer] = layer_norms(graph)
        model = onnx.load(str(graph))
        assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
        assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    # layer 2 is the last: one more block (2 LayerNorms) and the final encoder LayerNorm
    assert norms[2] - norms[1] == 3

    # clips of different content in one batch: each gets its own log-mel floor (max - 8 over its own mels and frames)
    from vocalprobe.runtime.engine.onnx_model import OnnxModel

    tone = np.sin(2 * np.pi * 1000 * np.arange(SR) / SR).astype(np.float32)
    rows = np.stack([clips_of(samples, [1.0])[0], tone])
    _, got = OnnxModel(graph, provider="cpu").predict_with_embedding(rows)
    for row, embedding in zip(rows, got):
        alone = pipeline.predict(torch.from_numpy(row)[None]).embedding[0].numpy()
        assert np.abs(embedding - alone).max() / np.abs(alone).max() < WHISPER.atol_embedding


@pytest.fixture(scope="module")
def whisper_study(tmp_path_factory, tiny_whisper):
    from vocalprobe.runtime.datasets.synthetic import generate_dataset
    from vocalprobe.training.study.runner import DatasetSpec, StudyConfig, run_study

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("whisper_study")
    manifest = generate_dataset(root / "data", seed=3, clips_per_class=6, field_minutes=0)
    config = StudyConfig(name="whisper", datasets=(DatasetSpec("synthetic", manifest),),
                         backbones=(str(tiny_whisper),), seeds=1, device="cpu", out_root=root / "studies",
                         cache_dir=root / "cache", chunk_seconds=2.0, bootstrap_resamples=50)
    summary = run_study(config, progress=False)
    return root, manifest, config.out_dir, summary


def test_vocalprobe_export_of_a_whisper_study(whisper_study):
    root, manifest, study_dir, summary = whisper_study
    runner = CliRunner()
    out = root / "whisper.onnx"
    result = runner.invoke(app, ["export", str(study_dir), "--layer", "1", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["family"] == "whisper" and meta["layer"] == "1" and meta["truncation"] == WHISPER.truncation
    assert meta["max_chunk_samples"] == str(2 * SR) and meta["quantization"] == "none"
    parity = json.loads(out.with_suffix(".parity.json").read_text())
    assert parity[0]["passed"] and any(c["chunked"] for c in parity[0]["cases"])
    assert all(c["relative"] for c in parity[0]["cases"])

    validated = root / "validate"
    result = runner.invoke(app, ["validate", str(out), str(manifest), "--out", str(validated), "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((validated / "report.json").read_text())
    assert report["n_scored"] == report["n_clips"]
    assert report["uar"] == pytest.approx(float(meta["test_uar"]), abs=1e-12)  # exactly the study's Test UAR

    refused = root / "refused.onnx"
    result = runner.invoke(app, ["export", str(study_dir), "--layer", "1", "--quantize", "int8-conv",
                                 "--out", str(refused)])
    assert result.exit_code != 0
    assert "int8-conv does not apply to whisper backbones" in result.output and "waveform CNN" in result.output
    assert not refused.exists()


@pytest.fixture(scope="module")
def tiny_en_graph(whisper_tiny_en, tmp_path_factory):
    """The trained tiny.en cut after block 2 of 4, a random probe, the study's default 20 s chunk limit."""
    _, hf_dir = whisper_tiny_en
    folder = tmp_path_factory.mktemp("tiny_en")
    pipeline, graph = export_layer(hf_dir, 2, folder / "tiny_en_L2.onnx", chunk_samples=20 * SR)
    return pipeline, graph


def test_trained_tiny_en_parity_and_int8(tiny_en_graph, speech, tmp_path):
    from vocalprobe.export import quant_modes
    from vocalprobe.export.quantize import quantize_dynamic_matmul

    pipeline, graph = tiny_en_graph
    samples, _ = speech
    clips = clips_of(samples, LENGTHS)
    report = check_parity(pipeline, graph, clips, chunk_samples=20 * SR, atol=WHISPER.atol,
                          atol_embedding=WHISPER.atol_embedding, relative=True)
    assert report.passed and len(report.cases) == 2 * 2 * len(LENGTHS)
    assert all(c.relative and c.max_diff > 0 for c in report.cases)  # onnxruntime really computed something

    int8 = quantize_dynamic_matmul(graph, tmp_path / "int8.onnx")
    mode = quant_modes.mode("int8")
    quantized = check_parity(pipeline, int8, clips, chunk_samples=20 * SR, atol=mode.atol, label="int8")
    assert quantized.passed
    assert 0 < quantized.max_diff() < mode.atol  # int8 changes the result, within its bound


def test_stream_over_real_audio_with_a_whisper_graph(tiny_en_graph, speech, tmp_path):
    pipeline, graph = tiny_en_graph
    samples, _ = speech
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    noise = 0.01 * np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32)
    files = {"speech.wav": samples, "speech_noise.wav": np.concatenate([noise, samples, noise])}
    for name, audio in files.items():
        sf.write(recordings / name, audio, SR, subtype="FLOAT")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["stream", str(recordings), "-m", str(graph), "-o", str(out), "--window", "1",
                                      "--min-conf", "0", "--format", "csv", "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "detections.csv", newline="")))
    assert {r["file"] for r in rows} == set(files)
    for name, audio in files.items():
        mine = [r for r in rows if r["file"] == name]
        assert len(mine) >= int(audio.size // SR)  # at least one row per whole window
        for row in mine:
            start = int(round(float(row["start_s"]) * SR))
            window = np.zeros(SR, np.float32)  # the final window is zero-padded (--final-window pad)
            window[: audio[start: start + SR].size] = audio[start: start + SR]
            torch_p = pipeline.predict(torch.from_numpy(window)[None]).probabilities[0]
            assert float(row["confidence"]) == pytest.approx(float(torch_p[CLASSES.index(row["label"])]), abs=1e-4)

    # the usual tables, byte-identical with two worker processes
    both = tmp_path / "workers"
    result = CliRunner().invoke(app, ["stream", str(recordings), "-m", str(graph), "-o", str(both), "--window", "1",
                                      "--min-conf", "0", "--format", "raven,csv,jsonl", "--workers", "2"])
    assert result.exit_code == 0, result.output
    one = tmp_path / "one"
    result = CliRunner().invoke(app, ["stream", str(recordings), "-m", str(graph), "-o", str(one), "--window", "1",
                                      "--min-conf", "0", "--format", "raven,csv,jsonl"])
    assert result.exit_code == 0, result.output
    tables = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert any(t.suffix == ".txt" for t in tables) and any(t.suffix == ".jsonl" for t in tables)
    for table in tables:
        if not table.name.endswith(".sqlite"):  # the journal records when each file was done
            assert (both / table).read_bytes() == (one / table).read_bytes(), table


def test_quantize_auto_tries_only_the_modes_of_the_family(whisper_study):
    root, _, study_dir, _ = whisper_study
    out = root / "auto.onnx"
    result = CliRunner().invoke(app, ["export", str(study_dir), "--layer", "1", "--quantize", "auto", "--out",
                                      str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "int8-conv not tried (does not apply to whisper backbones)" in result.output
    table = {line.split()[0] for line in result.output.splitlines()
             if line.split() and line.split()[0] in ("none", "int8", "int8-conv")}
    assert table == {"none", "int8"}
    assert read_metadata(out)["quantization"] in ("none", "int8")


def test_outlier_matmuls_are_kept_fp32(tiny_whisper, speech, tmp_path):
    from vocalprobe.export.outliers import matmul_ranges, outlier_matmuls
    from vocalprobe.export.quantize import quantize_dynamic_matmul

    samples, _ = speech
    _, graph = export_layer(tiny_whisper, 2, tmp_path / "L2.onnx", chunk_samples=2 * SR)
    clips = clips_of(samples, [1.0, 1.7])
    ranges = matmul_ranges(graph, clips)
    assert len(ranges) == 2 * 6 and all(r.ratio >= 1 for r in ranges)  # q, k, v, out, fc1, fc2 per block
    assert outlier_matmuls(graph, clips, ratio=float("inf")) == []
    kept = sorted(ranges, key=lambda r: -r.ratio)[:3]
    assert {r.node for r in kept} <= set(outlier_matmuls(graph, clips, ratio=kept[-1].ratio - 1e-9))

    def weight_matmuls(path):
        nodes = onnx.load(str(path)).graph.node
        return sum(n.op_type == "MatMulInteger" for n in nodes), {n.name for n in nodes if n.op_type == "MatMul"}

    all_int8, _ = weight_matmuls(quantize_dynamic_matmul(graph, tmp_path / "int8.onnx"))
    some_int8, fp32_names = weight_matmuls(quantize_dynamic_matmul(graph, tmp_path / "ex.onnx",
                                                                   exclude=tuple(r.node for r in kept)))
    assert some_int8 == all_int8 - 3 and {r.node for r in kept} <= fp32_names
