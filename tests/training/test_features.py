"""The per-layer pooled-feature module, on tiny real checkpoints of all three families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vocalprobe.runtime.core.preprocess import MIN_SAMPLES, preprocess
from vocalprobe.training.backbones import load_backbone
from vocalprobe.training.features import (
    LayerFeatures,
    chunk_bounds,
    clip_features,
    combine_stats,
    num_frames,
    pool_stats,
    select_layers,
)

FAMILIES = ("hubert", "wav2vec2", "wavlm")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference(model, waveform: torch.Tensor) -> torch.Tensor:
    """What the paper's pipeline computes with plain transformers: hidden_states, mean and population std."""
    x = torch.from_numpy(np.stack([preprocess(w) for w in waveform.numpy()]))
    with torch.no_grad():
        states = model(x, output_hidden_states=True).hidden_states
    return torch.stack([torch.cat([h.mean(1), h.std(1, correction=0)], -1) for h in states], 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_module_equals_transformers_hidden_states(tiny_checkpoints, family):
    model = load_backbone(tiny_checkpoints[family]).model
    module = LayerFeatures(model)
    assert module.layers == (0, 1, 2)
    x = torch.randn(2, 9000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = module(x)
    assert got.shape == (2, 3, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(model, x), rtol=1e-5, atol=1e-5)


def test_stable_layer_norm_truncation_reproduces_hidden_states(tiny_stable_checkpoint):
    model = load_backbone(tiny_stable_checkpoint).model
    assert model.config.do_stable_layer_norm
    x = torch.randn(1, 12000, generator=torch.Generator().manual_seed(1))
    reference = _reference(model, x)
    for layer in (0, 1, 2):
        truncated = LayerFeatures(model, layers=[layer], max_layer=layer)
        with torch.no_grad():
            got = truncated(x)
        torch.testing.assert_close(got[:, 0], reference[:, layer], rtol=1e-5, atol=1e-5)
    # the final encoder LayerNorm (applied after the last layer only) is not part of any truncated module
    names = LayerFeatures(model, layers=[2]).state_dict().keys()
    assert not any(n.startswith("encoder.layer_norm") or n == "input_layer_norm.weight" for n in names)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_pass_equals_one_pass_per_layer(tiny_checkpoints, family):
    model = load_backbone(tiny_checkpoints[family]).model
    x = torch.randn(1, 7000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        all_layers = LayerFeatures(model)(x)
        for layer in (0, 1, 2):
            single = LayerFeatures(model, layers=[layer], max_layer=layer)(x)
            torch.testing.assert_close(single[:, 0], all_layers[:, layer], rtol=0, atol=0)


def test_truncation_drops_later_layers(tiny_checkpoints):
    model = load_backbone(tiny_checkpoints["wavlm"]).model
    module = LayerFeatures(model, layers=[0, 1], max_layer=1)
    assert len(module.blocks) == 1
    assert not any(".1." in n and n.startswith("blocks.") for n in module.state_dict())
    assert LayerFeatures(model, layers=[1]).max_layer == 1
    with pytest.raises(ValueError, match="out of range"):
        LayerFeatures(model, layers=[2], max_layer=1)
    with pytest.raises(ValueError, match="out of range"):
        LayerFeatures(model, layers=[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_equal_lengths_equals_alone(tiny_checkpoints, family):
    module = LayerFeatures(load_backbone(tiny_checkpoints[family]).model)
    x = torch.randn(4, 6400, generator=torch.Generator().manual_seed(3)) * torch.tensor([[0.1], [1.0], [3.0], [0.5]])
    with torch.no_grad():
        batched = module(x)
        alone = torch.cat([module(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_zero_padding_would_change_features(tiny_checkpoints):
    """Why extraction never pads: with GroupNorm in the CNN, a padded clip's features move."""
    module = LayerFeatures(load_backbone(tiny_checkpoints["hubert"]).model)
    x = torch.randn(1, 6400, generator=torch.Generator().manual_seed(4))
    padded = torch.cat([x, torch.zeros(1, 3200)], dim=1)
    with torch.no_grad():
        alone = module(x)
        with_padding = module(padded)
    assert (alone - with_padding).abs().max() > 1e-3


@pytest.mark.parametrize("length", [1, 7, 399, 400, 4999, 5000, 5001, 12345])
def test_preprocessing_equals_runtime_numpy(length):
    module = LayerFeatures.__new__(LayerFeatures)
    module.min_samples = MIN_SAMPLES
    rng = np.random.default_rng(length)
    clips = (rng.standard_normal((2, length)) * np.array([[0.3], [2.0]])).astype(np.float32)
    got = module.preprocess(torch.from_numpy(clips)).numpy()
    expected = np.stack([preprocess(c) for c in clips])
    np.testing.assert_array_equal(got, expected)


def test_silent_clip_stays_finite(tiny_checkpoints):
    module = LayerFeatures(load_backbone(tiny_checkpoints["wav2vec2"]).model)
    assert torch.equal(module.preprocess(torch.zeros(1, 100)), torch.zeros(1, MIN_SAMPLES))
    with torch.no_grad():
        assert torch.isfinite(module(torch.zeros(1, 3000))).all()


def test_single_frame_std_is_zero_not_nan(tiny_checkpoints):
    model = load_backbone(tiny_checkpoints["hubert"]).model
    module = LayerFeatures(model, min_samples=400)
    assert num_frames(400, model.config) == 1
    with torch.no_grad():
        out = module(torch.randn(1, 400))
    assert torch.isfinite(out).all()
    assert torch.equal(out[..., 32:], torch.zeros_like(out[..., 32:]))


def test_num_frames_matches_model(tiny_checkpoints):
    model = load_backbone(tiny_checkpoints["wavlm"]).model
    module = LayerFeatures(model)
    for n in (5000, 5321, 16000):
        with torch.no_grad():
            states = module.hidden_states(torch.randn(1, n))
        assert states[0].shape[1] == num_frames(n, model.config)
    assert num_frames(399, model.config) == 0


@pytest.mark.parametrize("n, chunk", [(10, 10), (11, 10), (320_001, 320_000), (9_600_000, 320_000), (7, 2)])
def test_chunk_bounds(n, chunk):
    bounds = chunk_bounds(n, chunk)
    assert len(bounds) == -(-n // chunk)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) <= chunk and max(sizes) - min(sizes) <= 1
    assert min(sizes) >= chunk // 2 or len(bounds) == 1


def test_chunk_bounds_rejects_bad_input():
    with pytest.raises(ValueError):
        chunk_bounds(0, 10)
    with pytest.raises(ValueError):
        chunk_bounds(10, 0)


def test_combine_stats_equals_pooling_all_frames():
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((50, 3, 4)) * 10 + 100  # offset: would expose a naive sum-of-squares formula
    parts = np.split(frames, [7, 30])
    count, mean, m2 = combine_stats([len(p) for p in parts], [p.mean(0) for p in parts],
                                    [((p - p.mean(0)) ** 2).sum(0) for p in parts])
    assert count == 50
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m2, ((frames - frames.mean(0)) ** 2).sum(0), rtol=1e-10)
    pooled = pool_stats(count, mean, m2)
    np.testing.assert_allclose(pooled, np.concatenate([frames.mean(0), frames.std(0)], -1), rtol=1e-6)


@pytest.mark.parametrize("length", [300, 8000])
def test_clip_features_of_one_chunk_equal_forward(tiny_checkpoints, length):
    module = LayerFeatures(load_backbone(tiny_checkpoints["hubert"]).model)
    x = torch.randn(1, length, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        direct = module(x)[0].numpy()
        pooled = clip_features(module, x[0].numpy(), chunk_samples=16_000)
    assert pooled.shape == direct.shape and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, direct, rtol=1e-5, atol=1e-6)


def test_select_layers():
    assert select_layers(3) == (0, 1, 2, 3)
    assert select_layers(3, [3, 0]) == (3, 0)
    with pytest.raises(ValueError, match="duplicate"):
        select_layers(3, [1, 1])
    with pytest.raises(ValueError, match="no layers"):
        select_layers(3, [])
