"""Graph metadata (export/metadata.py): round trip and refusal of bad classes."""

from __future__ import annotations

import json

import pytest
from export_cases import CHUNK, CLASSES, SR

from vocalprobe.export.metadata import build_metadata, read_metadata
from vocalprobe.runtime.core.graph_contract import GraphContractError
from vocalprobe.runtime.engine.onnx_model import OnnxModel


def test_metadata_round_trip(exported):
    _, path = exported("wavlm", 2)
    meta = read_metadata(path)
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["sample_rate"] == "16000" and float(meta["sample_duration"]) == 1.5
    assert meta["class_outputs_key"] == "probabilities" and meta["embedding_outputs_key"] == "embedding"
    assert meta["max_chunk_samples"] == str(CHUNK) and meta["layer"] == "2" and meta["backbone"] == "wavlm"
    info = OnnxModel(path).info
    assert info.classes == CLASSES and info.sample_rate == SR and info.max_chunk_samples == CHUNK
    assert info.test_uar == 0.5 and info.val_uar is None


def test_metadata_rejects_bad_classes():
    with pytest.raises(GraphContractError, match="unique"):
        build_metadata(classes=["a", "a"], sample_rate=SR, sample_duration=1.0, max_chunk_samples=None)
    with pytest.raises(GraphContractError, match="sample_duration"):
        build_metadata(classes=["a"], sample_rate=SR, sample_duration=0.0, max_chunk_samples=None)


def test_metadata_extras_may_not_break_the_contract():
    """Export checks what it writes with the runtime's parser: a graph the runtime would refuse is never written."""
    with pytest.raises(GraphContractError, match="'test_uar' must be a fraction"):
        build_metadata(classes=["a", "b"], sample_rate=SR, sample_duration=1.0, max_chunk_samples=None,
                       extra={"test_uar": "93.1"})
