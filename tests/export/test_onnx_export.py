"""ONNX export (export/onnx_export.py, export/parity.py): parity with PyTorch at any length and batch, long clips,
truncation, the graph contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_cases import CASES, CHUNK, CLASSES, SR, random_probe
from signals import tone_clip

from vocalprobe.export.metadata import MetadataError, read_metadata
from vocalprobe.export.parity import ParityError, check_parity
from vocalprobe.runtime.engine.long_clips import predict_long
from vocalprobe.runtime.engine.onnx_model import ModelError, OnnxModel
from vocalprobe.training.backbones import load_backbone
from vocalprobe.training.deployable import ProbePipeline, study_features
from vocalprobe.training.deployable import predict_long as torch_predict_long


@pytest.mark.parametrize("name,layer", CASES)
def test_parity_any_length_and_batch(exported, name, layer):
    pipeline, path = exported(name, layer)
    # lengths unlike the export trace (1 s, batch 2): shorter than the 400-sample frame, shorter than the 5,000-sample
    # padding, odd, 7 s, and longer than the chunk limit (fed chunk by chunk); batches of 1 and 5
    clips = [tone_clip(s, seed=i) for i, s in enumerate((0.02, 0.1, 0.7713, 7.0, 5.3))]
    report = check_parity(pipeline, path, clips, chunk_samples=CHUNK, atol=1e-4, atol_embedding=1e-3,
                          batch_sizes=(1, 5))
    assert report.passed
    assert {c.batch for c in report.cases} == {1, 5} and any(c.chunked for c in report.cases)
    assert report.max_diff("probabilities") < 1e-4
    # the probabilities are not trivially uniform: the check compares something
    probs = OnnxModel(path).predict(np.stack([tone_clip(1.0, s) for s in range(5)]))
    assert probs.shape == (5, len(CLASSES)) and np.allclose(probs.sum(1), 1, atol=1e-5) and probs.std() > 0.01


def test_batch_rows_are_independent(exported):
    _, path = exported("wavlm", 2)
    model = OnnxModel(path)
    batch = np.stack([tone_clip(1.2, seed=s) for s in range(5)])
    together = model.predict(batch)
    alone = np.concatenate([model.predict(row[None]) for row in batch])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_clip_matches_the_study_definition(exported):
    pipeline, path = exported("hubert", 2)
    clip = tone_clip(9.1, seed=3)
    clip[SR:SR + 10] = 1.5  # the whole clip's peak lies in the first chunk: later chunks must use it too
    probs, emb = predict_long(OnnxModel(path), clip, CHUNK)
    features = study_features(pipeline.features, clip, CHUNK)[0]  # float64 merge of per-chunk statistics
    np.testing.assert_allclose(emb, features, atol=1e-4)
    with torch.no_grad():
        expected = torch.softmax(pipeline.probe(torch.from_numpy(features)[None]), -1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    torch_probs, _ = torch_predict_long(pipeline, clip, CHUNK)
    np.testing.assert_allclose(torch_probs, expected, atol=1e-5)
    # chunking matters: the same clip fed whole gives different features (attention and the CNN see all of it)
    whole = OnnxModel(path).predict_with_embedding(clip[None])[1][0]
    assert np.abs(whole - features).max() > 1e-3


def test_validate_hook_feeds_long_clips_in_chunks(exported):
    from vocalprobe.runtime.engine.long_clips import predict_clip

    _, path = exported("hubert", 2)
    model = OnnxModel(path)
    clip = tone_clip(6.3, seed=8)
    np.testing.assert_allclose(predict_clip(model, clip), predict_long(model, clip, CHUNK)[0], atol=1e-7)


def test_stable_layer_norm_graph_gives_hidden_states(exported, tiny_stable_checkpoint):
    pipeline, path = exported("wav2vec2-stable", 1)
    backbone = load_backbone(tiny_stable_checkpoint)
    assert backbone.config.do_stable_layer_norm
    clip = tone_clip(1.3, seed=5)
    x = torch.from_numpy(clip / np.abs(clip).max())[None]
    with torch.no_grad():
        hidden = backbone.model(x, output_hidden_states=True).hidden_states[1][0]  # (frames, D)
    expected = torch.cat([hidden.mean(0), hidden.std(0, unbiased=False)]).numpy()
    emb = OnnxModel(path).predict_with_embedding(clip[None])[1][0]
    np.testing.assert_allclose(emb, expected, atol=1e-4)


def test_truncation_drops_later_layers(exported):
    import onnx

    sizes, counts, names = {}, {}, {}
    for layer in (0, 2):
        _, path = exported("hubert", layer)
        model = onnx.load(str(path))
        sizes[layer] = path.stat().st_size
        counts[layer] = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
        names[layer] = [i.name for i in model.graph.initializer]
    assert sizes[0] < sizes[2] and counts[0] < counts[2]
    # a tiny hubert transformer layer has 4 * (32 * 32 + 32) + 2 * 32 * 64 + 64 + 32 + 4 * 32 = 8,544 parameters
    assert counts[2] - counts[0] >= 2 * 8_000
    assert not any(n.startswith("features.blocks.") for n in names[0])
    assert any(n.startswith("features.blocks.") for n in names[2])


def test_optional_inputs_and_contract(exported):
    _, path = exported("wav2vec2", 1)
    model = OnnxModel(path)
    required = [i.name for i in model.session.get_inputs()]
    optional = sorted(i.name for i in model.session.get_overridable_initializers())
    outputs = [o.name for o in model.session.get_outputs()]
    assert required == ["waveform"]
    assert optional == ["peak", "prior_count", "prior_m2", "prior_mean"]
    assert outputs == ["probabilities", "embedding", "stats_count", "stats_mean", "stats_m2"]
    # feeding the defaults explicitly, at batch 1 (broadcast) or batch 3, changes nothing
    batch = np.stack([tone_clip(0.9, seed=s) for s in range(3)])
    plain = model.session.run(None, {"waveform": batch})
    dim = plain[3].shape[1]
    zeros = {"peak": np.zeros((3, 1), np.float32), "prior_count": np.zeros((3, 1), np.float32),
             "prior_mean": np.zeros((3, dim), np.float32), "prior_m2": np.zeros((3, dim), np.float32)}
    explicit = model.session.run(None, {"waveform": batch, **zeros})
    for a, b in zip(plain, explicit):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # a peak given from outside really replaces the input's own peak: at 1000x the own peak the signal is so quiet
    # that the CNN's normalisation epsilon shows (amplitude alone barely matters: the first conv layer normalises)
    quiet = model.session.run(["embedding"], {"waveform": batch, "peak": 1000 * np.abs(batch).max(1, keepdims=True)})
    assert np.abs(quiet[0] - plain[1]).max() > 1e-2
    own = model.session.run(["embedding"], {"waveform": batch, "peak": np.abs(batch).max(1, keepdims=True)})
    np.testing.assert_allclose(own[0], plain[1], atol=1e-6)


def test_a_plain_session_warns_only_about_the_optional_inputs(exported, capfd):
    """onnxruntime logs "Initializer X appears in graph inputs" for every input with a default: by design exactly the
    contract's optional inputs (peak and the long-clip state), never a weight leaked into the inputs."""
    import re

    import onnx
    import onnxruntime as ort

    from vocalprobe.runtime.core.graph_contract import OPTIONAL_INPUTS

    _, path = exported("hubert", 2)
    graph = onnx.load(str(path)).graph
    initializers = {i.name for i in graph.initializer}
    assert [i.name for i in graph.input if i.name not in initializers] == ["waveform"]
    assert [i.name for i in graph.input if i.name in initializers] == list(OPTIONAL_INPUTS)
    options = ort.SessionOptions()
    options.log_severity_level = 2  # warnings
    capfd.readouterr()
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logged = capfd.readouterr().err
    assert sorted(re.findall(r"Initializer (\S+) appears in graph inputs", logged)) == sorted(OPTIONAL_INPUTS)


def test_parity_failure_is_loud(exported, tiny_checkpoints):
    pipeline, path = exported("hubert", 0)
    backbone = load_backbone(tiny_checkpoints["hubert"])
    other = ProbePipeline(backbone.model, random_probe(pipeline.probe.n_features, seed=99), 0)
    with pytest.raises(ParityError, match=r"- probabilities: max diff = .* > 0\.0001 \(1 s, batch 1\)"):
        check_parity(other, path, [tone_clip(1.0, seed=1)], chunk_samples=CHUNK, atol=1e-4)


def test_corrupted_onnx_gives_clear_errors(exported, tmp_path):
    from vocalprobe.export.fusion import FusionError, fuse_models

    _, path = exported("hubert", 0)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ModelError, match="broken.onnx"):
        OnnxModel(broken)
    with pytest.raises(MetadataError, match="broken.onnx"):
        read_metadata(broken)
    with pytest.raises(FusionError, match="broken.onnx"):
        fuse_models([path, broken], tmp_path / "f.onnx")


def test_every_export_path_takes_opensoundscapes_layout(exported, tmp_path):
    """Found: OpenSoundscape feeds [batch, 1, samples] and the graph refused it (rank 3, expected 2). Export, each
    quantization and fusion write graphs that take it, with the rows of [batch, samples]."""
    from vocalprobe.export.fusion import fuse_models
    from vocalprobe.export.quantize import quantize_dynamic_matmul, quantize_int8_conv

    _, path = exported("hubert", 2)
    _, other = exported("wav2vec2", 1)
    graphs = {"fp32": path, "int8": quantize_dynamic_matmul(path, tmp_path / "int8.onnx"),
              "int8-conv": quantize_int8_conv(path, tmp_path / "int8c.onnx"),
              "fusion": fuse_models([path, other], tmp_path / "fused.onnx")}
    batch = np.stack([tone_clip(1.2, seed=s) for s in range(3)])
    for kind, graph in graphs.items():
        model = OnnxModel(graph)
        assert model.info.waveform_layout == "...,samples", kind
        expected, embedding = model.predict_with_embedding(batch)
        rank3 = model.session.run([model.info.class_outputs_key, model.info.embedding_outputs_key],
                                  {"waveform": batch[:, None, :]})
        np.testing.assert_allclose(rank3[0], expected, atol=1e-6, err_msg=kind)
        np.testing.assert_allclose(rank3[1], embedding, atol=1e-5, err_msg=kind)
        assert "perch_hoplite_config" in model.info.metadata, kind
