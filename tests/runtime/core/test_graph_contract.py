"""The graph contract (runtime/core/graph_contract.py): the one metadata parser's errors, defaults and bounds, and
the round trip with what export writes."""

from __future__ import annotations

import json

import pytest

from vocalprobe.runtime.core.graph_contract import (EMBEDDING, INPUT_NAMES, MAX_WINDOW_SECONDS, METADATA_KEYS,
                                                    OUTPUT_NAMES, PROBABILITIES, REQUIRED_KEYS, GraphContractError,
                                                    GraphMetadata, optional_input_defaults, prior_input_for)

GOOD = {"classes": json.dumps(["bark", "hoot"]), "sample_rate": "16000", "sample_duration": "1.5",
        "class_outputs_key": "probabilities"}


def test_names_and_feedback_rule():
    assert INPUT_NAMES == ("waveform", "peak", "prior_count", "prior_mean", "prior_m2")
    assert OUTPUT_NAMES == ("probabilities", "embedding", "stats_count", "stats_mean", "stats_m2")
    assert prior_input_for("stats_m2") == "prior_m2" and prior_input_for("m1_stats_mean") == "m1_prior_mean"
    assert prior_input_for("probabilities") is None
    defaults = optional_input_defaults(4)
    assert list(defaults) == list(INPUT_NAMES[1:])
    assert defaults["prior_mean"].shape == (1, 4) and not defaults["peak"].any()
    assert REQUIRED_KEYS == ("classes", "sample_rate", "sample_duration", "class_outputs_key")
    assert len({k.name for k in METADATA_KEYS}) == len(METADATA_KEYS)


def test_defaults_of_optional_keys():
    info = GraphMetadata.from_map(GOOD, "g.onnx")
    assert info.classes == ("bark", "hoot") and info.sample_rate == 16_000 and info.sample_duration == 1.5
    assert info.class_outputs_key == PROBABILITIES
    assert (info.embedding_outputs_key, info.max_chunk_samples, info.val_uar, info.test_uar) == (None,) * 4
    assert info.metadata == GOOD
    # constructed directly (what export writes), the embedding output is named by default
    assert GraphMetadata(classes=("a",), sample_rate=16_000, sample_duration=1.0).embedding_outputs_key == EMBEDDING


def test_every_problem_is_named_in_one_line():
    bad = {"classes": "bark,hoot", "sample_rate": "16 kHz", "sample_duration": "nan", "max_chunk_samples": "0",
           "test_uar": "93.1", "val_uar": "x"}
    with pytest.raises(GraphContractError) as info:
        GraphMetadata.from_map(bad, "bad.onnx")
    message = str(info.value)
    assert message.startswith("bad.onnx: not a vocalprobe graph: missing metadata key(s) class_outputs_key")
    for key in ("'classes' must be a JSON list", "'sample_rate' must be an integer", "'sample_duration'",
                "'max_chunk_samples' must be 1..", "'test_uar' must be a fraction", "'val_uar' must be a number"):
        assert key in message
    assert "\n" not in message and "vocalprobe export" in message


@pytest.mark.parametrize("duration", ["8e5", "inf", "-1", "0", "1e400"])
def test_absurd_windows_are_refused(duration):
    """A huge window without max_chunk_samples used to reach the runtime and fail with a MemoryError."""
    with pytest.raises(GraphContractError, match=r"'sample_duration' must be a window of \(0, 3600\] seconds"):
        GraphMetadata.from_map({**GOOD, "sample_duration": duration}, "g.onnx")
    assert GraphMetadata.from_map({**GOOD, "sample_duration": str(MAX_WINDOW_SECONDS)}).sample_duration == 3600.0


@pytest.mark.parametrize("changes, problem", [
    ({"classes": json.dumps(["a", "a"])}, "must be unique names"),
    ({"classes": json.dumps([])}, "JSON list of class names"),
    ({"sample_rate": "0"}, "'sample_rate' must be 1..1000000 Hz"),
    ({"sample_rate": "1e12"}, "'sample_rate' must be an integer"),
    ({"sample_rate": "2000000"}, "'sample_rate' must be 1..1000000 Hz"),
    ({"sample_duration": "1e-6"}, "shorter than one sample"),
    ({"class_outputs_key": " "}, "'class_outputs_key' must name an output"),
])
def test_malformed_values(changes, problem):
    with pytest.raises(GraphContractError, match=problem):
        GraphMetadata.from_map({**GOOD, **changes}, "g.onnx")


@pytest.mark.parametrize("key, echo", [("preprocessing", {"sample_rate": 16_000, "peak_normalize": True}),
                                       ("perch_hoplite_config", {"sample_rate": 16_000, "window_size_s": 1.5})])
def test_metadata_that_contradicts_itself_is_refused(key, echo):
    """sample_rate 8000 while the preprocessing says 16000 used to run without a word, at the wrong rate."""
    with pytest.raises(GraphContractError, match=f"'sample_rate' is 8000 Hz but '{key}' says 16000"):
        GraphMetadata.from_map({**GOOD, "sample_rate": "8000", key: json.dumps(echo)}, "g.onnx")
    agreeing = GraphMetadata.from_map({**GOOD, key: json.dumps(echo)}, "g.onnx")
    assert agreeing.sample_rate == 16_000
    # text or an object without a rate says nothing to contradict
    for stored in ("resampled by hand", json.dumps({"peak_normalize": True})):
        assert GraphMetadata.from_map({**GOOD, "sample_rate": "8000", key: stored}).sample_rate == 8000


def test_direct_construction_is_checked_too():
    with pytest.raises(GraphContractError, match="'sample_duration'.*'max_chunk_samples'"):
        GraphMetadata(classes=("a",), sample_rate=16_000, sample_duration=1e9, max_chunk_samples=-1)


def test_round_trip_with_export_metadata():
    from vocalprobe.export.metadata import build_metadata

    meta = build_metadata(classes=("bark", "hoot", "trill"), sample_rate=16_000, sample_duration=1.234567891,
                          max_chunk_samples=320_000, extra={"backbone": "hubert", "layer": "3", "val_uar": "0.75",
                                                           "preprocessing": {"peak_normalize": True}})
    assert list(meta)[:6] == ["classes", "sample_rate", "sample_duration", "class_outputs_key",
                              "embedding_outputs_key", "max_chunk_samples"]
    assert meta["sample_duration"] == "1.23457" and meta["preprocessing"] == '{"peak_normalize": true}'
    info = GraphMetadata.from_map(meta, "export")
    assert info == GraphMetadata(classes=("bark", "hoot", "trill"), sample_rate=16_000, sample_duration=1.23457,
                                 max_chunk_samples=320_000, val_uar=0.75)
    assert info.metadata == meta
    assert GraphMetadata.from_map(info.to_map()) == info
