"""Packed frames (``packed_features``) against the one definition, ``LayerFeatures`` on each clip alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from vocalprobe.runtime.core.preprocess import MIN_SAMPLES
from vocalprobe.training.backbones import tiny_config
from vocalprobe.training.features import LayerFeatures, num_frames
from vocalprobe.training.packed_features import PackedFeatures

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 0.05 s is below MIN_SAMPLES (tiled up to it); the rest are of different lengths, one long enough for many frames
LENGTHS = [7_000, 800, 16_000, 5_000, 11_113, 24_321]
MODELS = {"hubert": transformers.HubertModel, "wav2vec2": transformers.Wav2Vec2Model,
          "wavlm": transformers.WavLMModel}
# relative L2 per clip and layer: GEMM rounding is ~1e-7; a clip attending to its pack neighbours moves by >1e-2
TOLERANCE = 1e-5


def _model(family: str, stable: bool = False, seed: int = 0, layers: int = 3):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[family](tiny_config(family, stable_layer_norm=stable, num_layers=layers)).eval()
        for parameter in model.parameters():  # larger than the init's 0.02 so attention is far from uniform
            parameter.data.add_(0.1 * torch.randn_like(parameter))
    return model


def _clips(seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy((rng.standard_normal(n) * rng.uniform(0.1, 2.0)).astype(np.float32)) for n in LENGTHS]


def _alone(module: LayerFeatures, clips) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [module(clip[None])[0] for clip in clips]


def _worst(got, reference) -> float:
    return max(float(((g - r).norm(dim=-1) / r.norm(dim=-1)).max()) for g, r in zip(got, reference))


class _LeakyAttention(PackedFeatures):
    """What packing must not do: attention over the whole pack. The tolerance must catch it."""

    def _attention(self, index, attn, hidden, bounds):
        return super()._attention(index, attn, hidden, [(0, hidden.shape[0])])


@pytest.mark.parametrize("family,stable", [("hubert", False), ("hubert", True), ("wav2vec2", False),
                                           ("wav2vec2", True), ("wavlm", False)])
def test_packed_equals_each_clip_alone(family, stable):
    module = LayerFeatures(_model(family, stable))
    clips = _clips()
    packed = PackedFeatures(module, max_frames=10_000)  # all clips in one pack
    assert packed.packed == (family != "wavlm")  # WavLM runs clip by clip
    with torch.inference_mode():
        got = packed.features(clips)
    reference = _alone(module, clips)
    assert [g.shape for g in got] == [r.shape for r in reference] == [(4, 64)] * len(clips)
    assert _worst(got, reference) < TOLERANCE
    if packed.packed:
        with torch.inference_mode():
            leaky = _LeakyAttention(module, max_frames=10_000).features(clips)
        assert _worst(leaky, reference) > 100 * TOLERANCE  # a leak across clips would fail the check above


def test_pack_neighbours_and_budget_do_not_matter():
    """A clip's features do not depend on which clips share its pack, nor on the frame budget."""
    module = LayerFeatures(_model("hubert", seed=1))
    clips = _clips(seed=1)
    with torch.inference_mode():
        one_pack = PackedFeatures(module, max_frames=10_000).features(clips)
        small_packs = PackedFeatures(module, max_frames=40).features(clips)  # most clips alone, the long one too
        reversed_order = PackedFeatures(module, max_frames=10_000).features(clips[::-1])[::-1]
    for other in (small_packs, reversed_order):
        assert _worst(other, one_pack) < TOLERANCE


def test_layer_subset_and_truncation():
    model = _model("wav2vec2", stable=True, seed=2)
    clips = _clips(seed=2)
    for module in (LayerFeatures(model, layers=[2, 0]), LayerFeatures(model, layers=[1], max_layer=1),
                   LayerFeatures(model, layers=[0], max_layer=0)):
        with torch.inference_mode():
            got = PackedFeatures(module).features(clips)
        assert _worst(got, _alone(module, clips)) < TOLERANCE


def test_frames_and_stats_counts():
    model = _model("hubert", seed=3)
    packed = PackedFeatures(LayerFeatures(model))
    for n in (MIN_SAMPLES, 5_321, 16_000, 400, 399):
        assert packed.frames(n) == num_frames(n, model.config)
    clips = [LayerFeatures(model).preprocess(c[None])[0] for c in _clips(seed=3)]
    with torch.inference_mode():
        stats = packed.frame_stats(clips)
    assert [s.count for s in stats] == [num_frames(max(n, MIN_SAMPLES), model.config) for n in LENGTHS]


def test_backbone_is_left_as_it_was():
    """The positional conv's weight is materialised in the runner; the shared model keeps its weight norm."""
    model = _model("hubert", seed=4)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    PackedFeatures(LayerFeatures(model))
    conv = model.encoder.pos_conv_embed.conv
    assert hasattr(conv, "parametrizations") and hasattr(conv.parametrizations, "weight")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_training_mode_is_not_packed():
    module = LayerFeatures(_model("hubert", seed=5))
    module.train()
    assert not PackedFeatures.supports(module)
