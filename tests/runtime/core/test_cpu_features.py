"""Which CPUs saturate uint8 x int8 pair sums (runtime/core/cpu_features.py), and the warning an old int8 graph gets."""

from __future__ import annotations

import logging

import pytest
from runtime_graphs import build_band_graph

from vocalprobe.runtime.core import cpu_features
from vocalprobe.runtime.core.graph_contract import INT8_WEIGHTS, QUANTIZATION, int8_weights

AVX2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
VNNI = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"


@pytest.mark.parametrize("cpuinfo,saturates", [(AVX2, True), (VNNI, False), ("no flags line\n", False)])
def test_x86_without_vnni_is_recognised(tmp_path, monkeypatch, cpuinfo, saturates):
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_features.int8_pairs_saturate.__wrapped__(str(path)) is saturates


def test_arm_never_saturates(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "aarch64")
    path = tmp_path / "cpuinfo"
    path.write_text(AVX2)
    assert cpu_features.int8_pairs_saturate.__wrapped__(str(path)) is False


def test_weight_bits_of_a_graph():
    assert int8_weights({QUANTIZATION: "none"}) is None and int8_weights({}) is None
    assert int8_weights({QUANTIZATION: "int8-conv"}) == "8-bit"  # written before the key
    assert int8_weights({QUANTIZATION: "int8,none", INT8_WEIGHTS: "pair-safe"}) == "pair-safe"


@pytest.mark.parametrize("bits,warned", [(None, True), ("8-bit", True), ("pair-safe", False), ("7-bit", False)])
def test_an_old_int8_graph_is_flagged_on_a_saturating_cpu(tmp_path, monkeypatch, caplog, bits, warned):
    from vocalprobe.runtime.engine import onnx_model

    monkeypatch.setattr(onnx_model, "int8_pairs_saturate", lambda: True)
    metadata = {QUANTIZATION: "int8-conv", **({INT8_WEIGHTS: bits} if bits else {})}
    path = build_band_graph(tmp_path / "g.onnx", metadata=metadata)
    with caplog.at_level(logging.WARNING, logger=onnx_model.__name__):
        onnx_model.OnnxModel(path)
    assert ("8-bit weight codes" in caplog.text) is warned
