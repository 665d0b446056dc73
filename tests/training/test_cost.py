"""training.cost: the analytic MAC count against torch's FlopCounterMode on the real transformers modules."""

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from vocalprobe.training.backbones import tiny_config  # noqa: E402
from vocalprobe.training.cost import (  # noqa: E402
    CostError,
    cheapest_within,
    macs_per_second,
    pareto_front,
    probe_macs,
    window_macs,
)
from vocalprobe.training.features import LayerFeatures  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = {"wav2vec2": "Wav2Vec2Model", "hubert": "HubertModel", "wavlm": "WavLMModel"}


def _counted_macs(fn) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2  # the counter reports 2 FLOPs per multiply-accumulate


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("layer", [0, 2])
def test_waveform_families_match_the_flop_counter(family, layer):
    config = tiny_config(family, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128)
    config._attn_implementation = "eager"  # the counter does not see the CPU's fused attention kernel
    model = getattr(transformers, MODELS[family])(config).eval()
    features = LayerFeatures(model, layers=[layer], max_layer=layer)  # the study's and export's truncation
    counted = _counted_macs(lambda: features.hidden_states(torch.randn(1, 24_000)))
    formula = window_macs(config.to_dict(), layer, window_seconds=1.5)
    assert formula == pytest.approx(counted, rel=0.02)


def test_whisper_encoder_matches_the_flop_counter():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = transformers.WhisperConfig(num_mel_bins=80, d_model=64, encoder_ffn_dim=128, encoder_layers=3,
                                        encoder_attention_heads=4, decoder_attention_heads=4, decoder_layers=1,
                                        max_source_positions=100, attn_implementation="eager")
    encoder = WhisperEncoder(config).eval()
    counted = _counted_macs(lambda: encoder(torch.randn(1, 80, 200)))  # 2 s of mel frames (100 per second)
    formula = window_macs(config.to_dict(), 3, window_seconds=2.0, include_front_end=False)
    assert formula == pytest.approx(counted, rel=0.02)
    # the log-mel front end adds its DFT and filterbank on top, per 10 ms frame
    assert window_macs(config.to_dict(), 3, window_seconds=2.0) - formula == 200 * (400 * 201 * 2 + 201 * 80)


def test_cost_grows_with_layer_and_probe_is_added():
    config = tiny_config("hubert", num_layers=4).to_dict()
    costs = [macs_per_second(config, k) for k in range(5)]
    assert costs == sorted(costs) and len(set(costs)) == 5
    with_probe = macs_per_second(config, 2, probe=(64, (16,), 3))
    assert with_probe - costs[2] == probe_macs(64, (16,), 3) == 64 * 16 + 16 * 3


def test_bad_configs_and_layers_are_errors():
    config = tiny_config("wavlm", num_layers=2).to_dict()
    with pytest.raises(CostError, match="out of range 0..2"):
        window_macs(config, 3)
    with pytest.raises(CostError, match="model_type 'bert'"):
        window_macs({"model_type": "bert"}, 0)
    with pytest.raises(CostError, match="no 'conv_dim'"):
        window_macs({k: v for k, v in config.items() if k != "conv_dim"}, 0)


def test_pareto_front_and_cheapest_within():
    points = [(1.0, 0.50), (2.0, 0.70), (3.0, 0.65), (4.0, 0.72), (4.0, 0.60)]
    assert pareto_front(points) == [True, True, False, True, False]
    layers, costs, scores = [0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], [50.0, 70.0, 65.0, 72.0]
    assert cheapest_within(layers, costs, scores, 0.0) == 3
    assert cheapest_within(layers, costs, scores, 2.0) == 1
    assert cheapest_within(layers, costs, scores, 30.0) == 0
    with pytest.raises(CostError, match=">= 0"):
        cheapest_within(layers, costs, scores, -1.0)
