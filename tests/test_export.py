"""ONNX export of probe pipelines on tiny real checkpoints: parity, dynamic axes, long clips, truncation, metadata,
int8, fusion and broken files. Each (family, layer) graph is exported once per module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from signals import tone_clip
from vocalprobe.export.metadata import MetadataError, build_metadata, get_metadata, read_metadata, set_metadata
from vocalprobe.export.onnx_export import export_pipeline, save_model
from vocalprobe.export.parity import ParityError, check_parity
from vocalprobe.runtime.long_clips import predict_long
from vocalprobe.runtime.onnx_model import ModelError, OnnxModel
from vocalprobe.training.backbones import load_backbone
from vocalprobe.training.pipeline import ProbePipeline, predict_long as torch_predict_long, study_features
from vocalprobe.training.probe import MLPProbe

SR = 16_000
CHUNK = 2 * SR  # a small chunk limit, so the long-clip path is cheap
CLASSES = ("bark", "chirp", "hoot", "trill")
# (checkpoint, layer): layer 0 and the last layer (2), all three families, and a stable-layer-norm model
CASES = [("hubert", 0), ("hubert", 2), ("wav2vec2", 1), ("wavlm", 2), ("wav2vec2-stable", 1)]


def random_probe(n_features: int, seed: int) -> MLPProbe:
    """A probe with non-trivial weights and z-score statistics (an untrained probe outputs near-uniform values)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = MLPProbe(n_features, len(CLASSES), (16, 8))
        for p in probe.parameters():
            p.data.normal_(0, 0.5)
        probe.set_normalization(torch.randn(n_features) * 0.1, torch.rand(n_features) + 0.05)
    return probe.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoints, tiny_stable_checkpoint):
    """Lazily export each CASES entry once: returns get(name, layer) -> (pipeline, path)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("exported")
    cache = {}

    def get(name: str, layer: int):
        if (name, layer) not in cache:
            path = tiny_stable_checkpoint if name == "wav2vec2-stable" else tiny_checkpoints[name]
            backbone = load_backbone(path)
            pipeline = ProbePipeline(backbone.model, random_probe(2 * backbone.dim, seed=layer), layer)
            meta = build_metadata(classes=CLASSES, sample_rate=SR, sample_duration=1.5, max_chunk_samples=CHUNK,
                                  extra={"backbone": name, "layer": str(layer), "test_uar": "0.5"})
            out = export_pipeline(pipeline, folder / f"{name}_L{layer}.onnx", metadata=meta)
            cache[(name, layer)] = (pipeline, out)
        return cache[(name, layer)]

    return get


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
    from vocalprobe.runtime.validate import predict_clip

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
    with pytest.raises(MetadataError, match="unique"):
        build_metadata(classes=["a", "a"], sample_rate=SR, sample_duration=1.0, max_chunk_samples=None)


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


def _with_classes(src, dst, classes):
    import onnx

    model = onnx.load(str(src))
    meta = get_metadata(model)
    meta["classes"] = json.dumps(list(classes))
    set_metadata(model, meta)
    return save_model(model, dst)


def test_fusion_refuses_mismatched_classes(exported, tmp_path):
    from vocalprobe.export.fusion import FusionError, fuse_models

    _, a = exported("hubert", 0)
    b = _with_classes(a, tmp_path / "b.onnx", ("bark", "chirp", "hoot", "whistle"))
    with pytest.raises(FusionError, match=r"different classes.*lacks \['trill'\].*adds \['whistle'\]"):
        fuse_models([a, b], tmp_path / "fused.onnx")
    assert not (tmp_path / "fused.onnx").exists()


def test_fusion_aligns_classes_by_name_and_weights(exported, tmp_path):
    from vocalprobe.export.fusion import fuse_models

    _, a = exported("hubert", 0)
    _, c = exported("wavlm", 2)
    # b: the hubert graph whose columns are declared in reverse order; fusion must realign them by name
    b = _with_classes(a, tmp_path / "b.onnx", CLASSES[::-1])
    fused = fuse_models([c, b], tmp_path / "fused.onnx", weights=[3, 1])
    batch = np.stack([tone_clip(1.1, seed=s) for s in range(3)])
    pc, pb = OnnxModel(c).predict(batch), OnnxModel(b).predict(batch)
    expected = 0.75 * pc + 0.25 * pb[:, [CLASSES[::-1].index(name) for name in CLASSES]]
    model = OnnxModel(fused)
    np.testing.assert_allclose(model.predict(batch), expected, atol=1e-6)
    assert model.classes == CLASSES
    members = json.loads(model.info.metadata["members"])
    assert [m["weight"] for m in members] == [0.75, 0.25] and members[0]["backbone"] == "wavlm"
    # long clips: the fused graph carries each member's statistics (m0_stats_* -> m0_prior_*)
    clip = tone_clip(5.5, seed=4)
    long_expected = 0.75 * predict_long(OnnxModel(c), clip, CHUNK)[0] + 0.25 * predict_long(
        OnnxModel(b), clip, CHUNK)[0][[CLASSES[::-1].index(name) for name in CLASSES]]
    np.testing.assert_allclose(predict_long(model, clip, CHUNK)[0], long_expected, atol=1e-6)


def test_int8_dynamic_quantizes_matmul_only(exported, tmp_path):
    import onnx

    from vocalprobe.export.quantize import quantize_dynamic_matmul

    pipeline, path = exported("hubert", 2)
    out = quantize_dynamic_matmul(path, tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "ConvInteger" not in ops and "Conv" in ops
    meta = read_metadata(out)
    assert meta["quantization"] == "int8" and meta["classes"] == read_metadata(path)["classes"]
    clips = [tone_clip(s, seed=i) for i, s in enumerate((0.5, 1.7, 4.2))]
    report = check_parity(pipeline, out, clips, chunk_samples=CHUNK, atol=0.25, label="int8")
    assert report.max_diff("probabilities") > 0  # really a different (quantized) computation


def test_int8_static_quantizes_convolutions(exported, tmp_path):
    import onnx

    from vocalprobe.export.quantize import quantize_static_qdq

    pipeline, path = exported("hubert", 2)

    class Clips:
        def __init__(self):
            self.items = iter([{"waveform": tone_clip(s, seed=i)[None]} for i, s in enumerate((0.4, 1.0, 1.9))])

        def get_next(self):
            return next(self.items, None)

    out = quantize_static_qdq(path, tmp_path / "int8s.onnx", Clips())
    graph = onnx.load(str(out)).graph
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"][1:]  # the input conv stays fp32 (tests/test_quantize.py)
    assert convs and all(n.input[0] in quantized_inputs and n.input[1] in quantized_inputs for n in convs)
    assert read_metadata(out)["quantization"] == "int8-static"
    check_parity(pipeline, out, [tone_clip(1.3, seed=2), tone_clip(4.5, seed=3)], chunk_samples=CHUNK, atol=0.25,
                 label="int8-static")
