"""Fusion of separate graphs at run time (runtime/engine/ensemble.py): classes aligned by name, weights, refusals."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track

from vocalprobe.runtime.engine.ensemble import Ensemble, ModelMismatchError, load_models, parse_weights
from vocalprobe.runtime.engine.onnx_model import OnnxModel


def three_tones(sr=16_000):
    x = tone_track([(0, 1, DEFAULT_FREQS[0]), (1, 2, DEFAULT_FREQS[1]), (2, 3, DEFAULT_FREQS[2])], 4, sr)
    return x.reshape(4, sr)


def test_fusion_aligns_classes_by_name(tmp_path, graph):
    # The same filters with classes (and their columns) in another order: fusing must undo the permutation.
    shuffled = build_band_graph(tmp_path / "shuffled.onnx", classes=("high", "low", "mid"),
                                freqs=(DEFAULT_FREQS[2], DEFAULT_FREQS[0], DEFAULT_FREQS[1]))
    a, b = OnnxModel(graph), OnnxModel(shuffled)
    x = three_tones()
    assert not np.allclose(a.predict(x), b.predict(x))
    fused = Ensemble([a, b])
    assert fused.classes == DEFAULT_CLASSES
    np.testing.assert_allclose(fused.predict(x), a.predict(x), atol=1e-6)


def test_fusion_weights_average(tmp_path, graph):
    other = build_band_graph(tmp_path / "soft.onnx", scale=0.5)
    a, b = OnnxModel(graph), OnnxModel(other)
    x = three_tones()
    fused = Ensemble([a, b], weights=[3, 1])
    np.testing.assert_allclose(fused.predict(x), 0.75 * a.predict(x) + 0.25 * b.predict(x), atol=1e-6)
    assert parse_weights("3,1", 2) == (3.0, 1.0)
    with pytest.raises(ModelMismatchError, match="2 value"):
        parse_weights("1,1", 3)
    with pytest.raises(ModelMismatchError, match="positive sum"):
        Ensemble([a, b], weights=[0, 0])


def test_fusion_of_mismatched_models_is_refused(tmp_path, graph):
    other_classes = build_band_graph(tmp_path / "other.onnx", classes=("low", "mid", "bark"))
    with pytest.raises(ModelMismatchError) as info:
        load_models([str(graph), str(other_classes)])
    assert "lacks ['high']" in str(info.value) and "adds ['bark']" in str(info.value)
    other_rate = build_band_graph(tmp_path / "rate.onnx", metadata={"sample_rate": "22050"})
    with pytest.raises(ModelMismatchError, match="22050 Hz"):
        load_models([str(graph), str(other_rate)])
    other_window = build_band_graph(tmp_path / "window.onnx", sample_duration=2.0)
    fused = load_models([str(graph), str(other_window)])
    with pytest.raises(ModelMismatchError, match="--window"):
        _ = fused.sample_duration
