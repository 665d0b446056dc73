"""WhisperLayers (training/whisper/encoder.py) against transformers' WhisperFeatureExtractor and WhisperModel on
the real tiny.en weights: a 30 s clip must give the same log-mel and hidden states; shorter clips run on their own
frames."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

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
    np.testing.assert_allclose(mel, reference, rtol=0, atol=1e-5)
    assert len(ours) == len(theirs) == model.config.encoder_layers + 1
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5, k


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
