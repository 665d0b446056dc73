"""WhisperLayers (training/whisper/encoder.py) against transformers' WhisperFeatureExtractor and WhisperModel on
the real tiny.en weights: a 30 s clip must give the same log-mel and hidden states; shorter clips run on their own
frames."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")

from vocalprobe.training.whisper.encoder import WhisperInputError, WhisperLayers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_thirty_seconds_reproduce_transformers(whisper_tiny_en, speech):
    _, hf_dir = whisper_tiny_en
    samples, _ = speech
    clip = np.zeros(480_000, np.float32)
    clip[: len(samples)] = samples
    clip[len(samples):] = 0.01 * np.random.default_rng(0).standard_normal(480_000 - len(samples))
    reference = transformers.WhisperFeatureExtractor.from_pretrained(str(hf_dir))(
        clip, sampling_rate=16_000, return_tensors="np").input_features
    model = transformers.WhisperModel.from_pretrained(str(hf_dir)).eval()
    layers = WhisperLayers(model).eval()
    with torch.no_grad():
        mel = layers.log_mel(torch.from_numpy(clip)[None]).numpy()
        ours = layers.hidden_states(torch.from_numpy(clip)[None])
        theirs = model.encoder(torch.from_numpy(reference), output_hidden_states=True).hidden_states
    # 2.6e-5: float32 rounding of the DFT-as-Conv1d against the extractor's FFT, at a few low-power bins (20 of
    # 240,000 values above 1e-5; a float64 DFT differs from the extractor as much, and torch.stft in float32 is
    # 2.6e-5 from a float64 reference too)
    np.testing.assert_allclose(mel, reference, rtol=0, atol=5e-5)
    assert len(ours) == len(theirs) == model.config.encoder_layers + 1
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4, k  # 3.2e-5 measured: the log-mel's rounding


def test_short_clips_run_on_their_own_frames(whisper_tiny_en, speech):
    _, hf_dir = whisper_tiny_en
    samples, _ = speech
    layers = WhisperLayers(transformers.WhisperModel.from_pretrained(str(hf_dir))).eval()
    with torch.no_grad():
        states = layers.hidden_states(torch.from_numpy(samples)[None])
        half = layers.hidden_states(torch.from_numpy(samples[:16_000])[None])
    assert [s.shape[1] for s in states] == [(len(samples) // 160 + 1) // 2] * 5
    assert half[0].shape == (1, 50, 384)
    with pytest.raises(WhisperInputError, match="at most 480000 samples"):
        layers.hidden_states(torch.zeros(1, 480_001))


def test_backbone_features_and_truncation(whisper_tiny_en, speech):
    from vocalprobe.training.backbones import load_backbone
    from vocalprobe.training.features import LayerFeatures

    _, hf_dir = whisper_tiny_en
    backbone = load_backbone(hf_dir)
    assert (backbone.family, backbone.num_layers, backbone.dim) == ("whisper", 4, 384)
    samples, _ = speech
    clip = torch.from_numpy(samples)[None]
    with torch.no_grad():
        full = LayerFeatures(backbone.model)(clip)
        cut = LayerFeatures(backbone.model, layers=[0, 2])(clip)
        states = WhisperLayers(backbone.model).hidden_states(clip / clip.abs().max())
    assert full.shape == (1, 5, 768) and cut.shape == (1, 2, 768)
    torch.testing.assert_close(cut, full[:, [0, 2]])  # no final LayerNorm on a truncated module's last layer
    torch.testing.assert_close(full[0, 4, :384], states[4][0].mean(0))  # the last layer is after the LayerNorm
    assert not torch.allclose(states[4], WhisperLayers(backbone.model, max_layer=4).blocks[3](states[3], None))


def test_study_runs_on_a_converted_folder(whisper_tiny_en, synthetic_manifest, tmp_path):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    _, hf_dir = whisper_tiny_en
    manifest = synthetic_manifest(tmp_path / "data", [1.0, 1.5, 2.0, 0.8] * 3)
    runner = CliRunner()
    result = runner.invoke(app, ["study", "--data", f"tones={manifest}", "--backbone", str(hf_dir), "--layers",
                                 "0,4", "--seeds", "1", "--device", "cpu", "--out", str(tmp_path), "--name", "w",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    import csv

    with open(tmp_path / "w" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(row["layer"]) for row in rows) == [0, 4]
    assert all(row["n_train"] == "4" and row["backbone"] == hf_dir.name for row in rows)


def test_chunks_over_thirty_seconds_are_refused(whisper_tiny_en, synthetic_manifest, tmp_path):
    from vocalprobe.runtime.core.errors import VocalprobeError
    from vocalprobe.training.extract import extract_features

    _, hf_dir = whisper_tiny_en
    manifest = synthetic_manifest(tmp_path / "data", [1.0, 1.0, 1.0])
    with pytest.raises(VocalprobeError, match="at most 30 s at once"):
        extract_features(manifest, hf_dir, chunk_seconds=40.0)


def test_registry_names_prefer_the_converted_folder(whisper_tiny_en, tmp_path, monkeypatch):
    from vocalprobe.training.backbones import REGISTRY, BackboneError, load_backbone
    from vocalprobe.training.study.config import backbone_key

    _, hf_dir = whisper_tiny_en
    assert {"whisper-tiny", "whisper-tiny.en", "whisper-base", "whisper-base.en", "whisper-small",
            "whisper-small.en"} <= set(REGISTRY)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneError, match="openai/whisper-tiny.en"):  # no folder: the hub id, offline here
        load_backbone("whisper-tiny.en", local_files_only=True)
    assert "weights_sha256" not in backbone_key("whisper-tiny.en")
    (tmp_path / "artifacts" / "models").mkdir(parents=True)
    (tmp_path / "artifacts" / "models" / "whisper-tiny.en").symlink_to(hf_dir)
    for name in ("whisper-tiny.en", "openai/whisper-tiny.en"):
        backbone = load_backbone(name)
        assert backbone.spec.name == "whisper-tiny.en" and backbone.source == str(hf_dir.resolve())
        assert backbone.family == "whisper" and backbone.num_layers == 4
    assert "weights_sha256" in backbone_key("whisper-tiny.en")


def test_clips_over_thirty_seconds_go_in_chunks(whisper_tiny_en, synthetic_manifest, tmp_path):
    from vocalprobe.training.extract import extract_features

    _, hf_dir = whisper_tiny_en
    manifest = synthetic_manifest(tmp_path / "data", [35.0, 1.0, 2.0])
    features = extract_features(manifest, hf_dir, layers=[0, 4], device="cpu", progress=False)
    assert features.features.shape == (3, 2, 768) and np.isfinite(features.features).all()
    assert not features.failed
