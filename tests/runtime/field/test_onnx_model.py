"""The ONNX wrapper (runtime/engine/onnx_model.py): the graph contract read at load, clear errors, providers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track

from vocalprobe.runtime.core.graph_contract import GraphContractError
from vocalprobe.runtime.engine.onnx_model import ModelError, OnnxModel, choose_providers


def three_tones(sr=16_000):
    x = tone_track([(0, 1, DEFAULT_FREQS[0]), (1, 2, DEFAULT_FREQS[1]), (2, 3, DEFAULT_FREQS[2])], 4, sr)
    return x.reshape(4, sr)


def test_model_reads_contract_and_predicts(graph):
    model = OnnxModel(graph)
    assert model.classes == DEFAULT_CLASSES
    assert (model.sample_rate, model.sample_duration) == (16_000, 1.0)
    assert model.info.test_uar == pytest.approx(0.9)
    assert model.providers == ["CPUExecutionProvider"]
    probs = model.predict(three_tones())
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs[:3].argmax(axis=1).tolist() == [0, 1, 2]
    assert probs[3].max() < 0.5  # noise only
    probs2, emb = model.predict_with_embedding(three_tones())
    np.testing.assert_allclose(probs2, probs)
    assert emb.shape == (4, 6)


def test_missing_metadata_keys_are_all_named(tmp_path):
    path = build_band_graph(tmp_path / "bare.onnx", drop_keys=("classes", "sample_rate", "sample_duration"))
    with pytest.raises(GraphContractError) as info:
        OnnxModel(path)
    message = str(info.value)
    for key in ("classes", "sample_rate", "sample_duration"):
        assert key in message
    assert "bare.onnx" in message


def test_malformed_metadata_and_class_count(tmp_path):
    path = build_band_graph(tmp_path / "bad.onnx", metadata={"classes": "low,mid,high", "test_uar": "93.1"})
    with pytest.raises(GraphContractError, match="JSON list") as info:
        OnnxModel(path)
    assert "test_uar" in str(info.value)
    path = build_band_graph(tmp_path / "count.onnx", metadata={"classes": json.dumps(["a", "b"])})
    with pytest.raises(GraphContractError, match="3 classes but metadata lists 2"):
        OnnxModel(path)
    path = build_band_graph(tmp_path / "key.onnx", metadata={"class_outputs_key": "logits"})
    with pytest.raises(GraphContractError, match="'logits' is not an output"):
        OnnxModel(path)


def test_absurd_window_is_refused_at_load(tmp_path):
    """A graph without max_chunk_samples and a huge sample_duration used to load and then ask for tens of GiB."""
    path = build_band_graph(tmp_path / "huge.onnx", metadata={"sample_duration": "8e5"})
    with pytest.raises(GraphContractError, match=r"huge.onnx: .*'sample_duration' must be a window of \(0, 3600\]"
                       ) as info:
        OnnxModel(path)
    assert "\n" not in str(info.value) and "vocalprobe export" in str(info.value)
    # through the CLI: one line and exit 1, before any audio is read (no MemoryError traceback)
    import soundfile as sf
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    sf.write(tmp_path / "a.wav", np.zeros(16_000, dtype=np.float32), 16_000)
    result = CliRunner().invoke(app, ["stream", str(tmp_path / "a.wav"), "-m", str(path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "sample_duration" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "nope.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="corrupt.onnx: not a loadable ONNX model"):
        OnnxModel(corrupt)


def test_bad_batches_are_refused(graph):
    model = OnnxModel(graph)
    with pytest.raises(ModelError, match=r"\[batch, samples\]"):
        model.predict(np.zeros(16_000, dtype=np.float32))


def test_provider_choice():
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="no CUDA provider"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="unknown provider"):
        choose_providers("tpu", ["CPUExecutionProvider"])


def _with_layout(source, target, **metadata):
    """``source`` put through export's layout function, with ``metadata`` changes."""
    from vocalprobe.export.onnx_export import apply_waveform_layout
    from vocalprobe.export.onnx_io import get_metadata, load_model, save_model, set_metadata

    model = apply_waveform_layout(load_model(source))
    set_metadata(model, {**get_metadata(model), **metadata})
    return save_model(model, target)


def test_older_batch_samples_graphs_and_any_layout_graphs_both_run(graph, tmp_path):
    old = OnnxModel(graph)
    assert old.info.waveform_layout == "batch,samples"  # no waveform_layout key: written before it existed
    new = OnnxModel(_with_layout(graph, tmp_path / "any.onnx"))
    assert new.info.waveform_layout == "...,samples"
    np.testing.assert_allclose(new.predict(three_tones()), old.predict(three_tones()), rtol=1e-6)
    (rank3,) = new.session.run(["probabilities"], {"waveform": three_tones()[:, None, :]})
    np.testing.assert_allclose(rank3, old.predict(three_tones()), rtol=1e-6)


def test_a_layout_the_graph_does_not_have_is_refused(graph, tmp_path):
    from vocalprobe.export.onnx_io import get_metadata, load_model, save_model, set_metadata

    model = load_model(graph)
    set_metadata(model, {**get_metadata(model), "waveform_layout": "...,samples"})
    with pytest.raises(GraphContractError, match=r"input 'waveform' must be float32 of any rank"):
        OnnxModel(save_model(model, tmp_path / "claims.onnx"))
    with pytest.raises(GraphContractError, match=r"input 'waveform' must be float32 \[batch, samples\]"):
        OnnxModel(_with_layout(graph, tmp_path / "denies.onnx", waveform_layout="batch,samples"))
    with pytest.raises(GraphContractError, match="'waveform_layout' must be one of"):
        OnnxModel(_with_layout(graph, tmp_path / "odd.onnx", waveform_layout="samples"))


def test_onnxruntime_after_usearch_is_an_error_not_a_crash(graph):
    """Found: usearch 2.26.2-2.26.6 imported before onnxruntime segfaults the process (exit -11)."""
    import subprocess
    import sys

    pytest.importorskip("usearch", reason="usearch (archive extra) is not installed")
    script = ("import usearch.index, sys\n"
              "from vocalprobe.runtime.core.imports import usearch_loaded_first\n"
              "from vocalprobe.runtime.engine.onnx_model import OnnxModel\n"
              "if usearch_loaded_first() is None: sys.exit(3)\n"
              "try:\n    OnnxModel(sys.argv[1])\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc); sys.exit(4)\n")
    run = subprocess.run([sys.executable, "-c", script, str(graph)], capture_output=True, text=True, timeout=120)
    if run.returncode == 3:
        pytest.skip("this usearch is older than 2.26.2 and loads either way")
    assert run.returncode == 4, (run.returncode, run.stdout, run.stderr)
    assert run.stdout.startswith("ImportOrderError usearch 2.") and "import onnxruntime" in run.stdout
    fine = subprocess.run([sys.executable, "-c", "import onnxruntime, usearch.index\n"
                           "from vocalprobe.runtime.engine.onnx_model import OnnxModel; import sys\n"
                           "print(OnnxModel(sys.argv[1]).classes)", str(graph)],
                          capture_output=True, text=True, timeout=120)
    assert fine.returncode == 0 and "low" in fine.stdout, fine.stderr
