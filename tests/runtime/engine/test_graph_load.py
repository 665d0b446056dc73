"""A graph whose metadata contradicts itself is refused when it is loaded (issue 24, item 5)."""

from __future__ import annotations

import json

import pytest
from runtime_graphs import build_band_graph

from vocalprobe.runtime.core.graph_contract import GraphContractError
from vocalprobe.runtime.engine.onnx_model import OnnxModel


def test_a_graph_whose_rate_contradicts_its_preprocessing_is_refused(tmp_path):
    bad = build_band_graph(tmp_path / "bad.onnx", metadata={
        "sample_rate": "8000", "preprocessing": json.dumps({"sample_rate": 16_000, "peak_normalize": True})})
    with pytest.raises(GraphContractError, match=r"bad\.onnx: .*'sample_rate' is 8000 Hz but 'preprocessing' says "
                                                 r"16000.*vocalprobe export"):
        OnnxModel(bad, threads=1)
    good = build_band_graph(tmp_path / "good.onnx", metadata={
        "preprocessing": json.dumps({"sample_rate": 16_000, "peak_normalize": True})})
    assert OnnxModel(good, threads=1).sample_rate == 16_000
