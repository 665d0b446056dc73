"""The static int8 QDQ research recipes (benchmarks/static_qdq.py, what bench_export.py re-measures) on a tiny real
checkpoint: which nodes stay fp32, what gets quantized, and that every recipe option produces a graph onnxruntime
runs close to PyTorch. The product's modes are tested in test_quantize.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from export_cases import CHUNK, SR
from signals import tone_clip

from vocalprobe.export.metadata import build_metadata, read_metadata
from vocalprobe.export.onnx_export import export_pipeline
from vocalprobe.export.parity import check_parity
from vocalprobe.export.quantize import QuantizationError
from vocalprobe.training.backbones import load_backbone
from vocalprobe.training.deployable import ProbePipeline
from vocalprobe.training.probe import MLPProbe

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from static_qdq import DEFAULT_STATIC_RECIPE, StaticRecipe, quantize_static_qdq, static_plan  # noqa: E402

QDQ = {"QuantizeLinear", "DequantizeLinear"}


def calibration_tone(seconds: float, seed: int) -> np.ndarray:
    """The shared test tone without its fade in/out (the calibration and parity clips these tests were tuned on)."""
    return tone_clip(seconds, seed, envelope=False)


class Clips:
    """Calibration reader over tone clips of DIFFERENT lengths (histogram calibrators must cope with that)."""

    def __init__(self, seconds=(0.4, 1.0, 1.9)):
        self.items = iter([{"waveform": calibration_tone(s, seed=i)[None]} for i, s in enumerate(seconds)])

    def get_next(self):
        return next(self.items, None)


@pytest.fixture(scope="module")
def hubert_l2(tmp_path_factory, tiny_checkpoints):
    """Tiny HuBERT truncated at its last layer (CNN, positional conv, attention, MLP head): (pipeline, path)."""
    torch.set_num_threads(1)
    backbone = load_backbone(tiny_checkpoints["hubert"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = MLPProbe(2 * backbone.dim, 3, (16, 8))
        probe.set_normalization(torch.randn(2 * backbone.dim) * 0.1, torch.rand(2 * backbone.dim) + 0.05)
    pipeline = ProbePipeline(backbone.model, probe.eval(), 2)
    meta = build_metadata(classes=["a", "b", "c"], sample_rate=SR, sample_duration=1.0, max_chunk_samples=CHUNK)
    return pipeline, export_pipeline(pipeline, tmp_path_factory.mktemp("quantize") / "hubert_L2.onnx", metadata=meta)


def _graph(path):
    import onnx

    return onnx.load(str(path)).graph


def _producers(graph):
    return {out: node for node in graph.node for out in node.output}


def test_static_plan_finds_input_conv_positional_conv_and_head(hubert_l2):
    _, path = hubert_l2
    import onnx

    graph = _graph(path)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    plan = static_plan(onnx.load(str(path)), DEFAULT_STATIC_RECIPE)
    assert plan.parts.input_convs == [convs[0].name]  # the CNN's first layer, the one that sees the waveform
    [positional] = plan.parts.positional_convs
    assert any(a.name == "group" and a.i > 1 for a in next(n for n in convs if n.name == positional).attribute)
    head_ops = {n.op_type for n in graph.node if n.name in plan.parts.head}
    assert {"Gemm", "Softmax"} <= head_ops and "Conv" not in head_ops  # MLP + softmax, no backbone node
    assert set(plan.excluded) == set(plan.parts.input_convs) | set(plan.parts.head)
    everything = static_plan(onnx.load(str(path)), StaticRecipe(fp32_input_conv=False, fp32_head=False,
                                                                fp32_positional_conv=True))
    assert everything.excluded == plan.parts.positional_convs


def test_default_recipe_keeps_input_conv_and_head_fp32(hubert_l2, tmp_path):
    import onnx

    pipeline, path = hubert_l2
    out = quantize_static_qdq(path, tmp_path / "static.onnx", Clips())
    graph = _graph(out)
    producers = _producers(graph)
    initializers = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    first, rest = convs[0], convs[1:]
    # the first conv reads the (padded) waveform in fp32 and has fp32 weights
    assert all(producers[name].op_type not in QDQ for name in first.input if name in producers)
    assert initializers[first.input[1]].data_type == onnx.TensorProto.FLOAT
    # every other conv (the positional one included) is static int8 QDQ, every MatMul with weights dynamic int8
    assert rest and all(producers[n.input[0]].op_type == "DequantizeLinear"
                        and producers[n.input[1]].op_type == "DequantizeLinear" for n in rest)
    assert {n.op_type for n in graph.node} & {"DynamicQuantizeMatMul", "MatMulInteger"}
    # the head (merge, z-score, MLP, softmax) stays fp32: no quantized node in it, and nothing quantized feeds its
    # linear layers (onnxruntime's dynamic quantizer rewrites the MLP's Gemm as fp32 MatMul + Add)
    head_names = set(static_plan(onnx.load(str(out))).parts.head)  # found structurally in the quantized graph
    head = [n for n in graph.node if n.name in head_names]
    assert {"Softmax"} <= {n.op_type for n in head}
    assert not [n for n in head if n.op_type in QDQ | {"MatMulInteger", "DynamicQuantizeLinear",
                                                        "DynamicQuantizeMatMul", "QLinearMatMul"}]
    linear = [n for n in head if n.op_type in ("Gemm", "MatMul")]
    assert len(linear) == 3  # the probe's two hidden layers (16, 8) and its output layer, all fp32
    assert all(initializers[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in linear)
    # ... and those are the only fp32 MatMuls with weights
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers
                and n.name not in head_names]
    meta = read_metadata(out)
    assert meta["quantization"] == "int8-static" and meta["quantization_recipe"] == DEFAULT_STATIC_RECIPE.describe()
    report = check_parity(pipeline, out, [calibration_tone(1.3, seed=5), calibration_tone(4.5, seed=6)],
                          chunk_samples=CHUNK, atol=0.5, label="int8-static")
    assert report.max_diff("probabilities") > 0  # really a different (quantized) computation


def test_quantizing_the_input_conv_changes_its_inputs(hubert_l2, tmp_path):
    """The opposite recipe really quantizes the first conv: the fp32 property above is the recipe's doing."""
    _, path = hubert_l2
    out = quantize_static_qdq(path, tmp_path / "all.onnx", Clips(), StaticRecipe(fp32_input_conv=False))
    assert StaticRecipe() == DEFAULT_STATIC_RECIPE
    graph = _graph(out)
    first = next(n for n in graph.node if n.op_type == "Conv")
    assert _producers(graph)[first.input[0]].op_type == "DequantizeLinear"


@pytest.mark.parametrize("recipe", [
    DEFAULT_STATIC_RECIPE.with_(matmul="static"),
    DEFAULT_STATIC_RECIPE.with_(calibration="Percentile", percentile=99.99),
    DEFAULT_STATIC_RECIPE.with_(calibration="Entropy", reduce_range=True, matmul="fp32"),
], ids=["matmul-static", "percentile", "entropy"])
def test_recipe_options_give_runnable_graphs(hubert_l2, tmp_path, recipe):
    pipeline, path = hubert_l2
    out = quantize_static_qdq(path, tmp_path / "q.onnx", Clips(), recipe)
    graph = _graph(out)
    ops = {n.op_type for n in graph.node}
    assert "DequantizeLinear" in ops
    producers = _producers(graph)
    weight_matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in producers
                      and producers[n.input[1]].op_type == "DequantizeLinear"]
    assert bool(weight_matmuls) == (recipe.matmul == "static")  # QDQ MatMuls exactly when asked for
    assert bool(ops & {"DynamicQuantizeMatMul", "MatMulInteger"}) == (recipe.matmul == "dynamic")
    check_parity(pipeline, out, [calibration_tone(1.1, seed=7)], chunk_samples=CHUNK, atol=0.5, label="int8-static")


def _is_static(node, producers) -> bool:
    return producers[node.input[0]].op_type == "DequantizeLinear" if node.input[0] in producers else False


def test_cnn_layers_quantize_only_the_chosen_convs(hubert_l2, tmp_path):
    import onnx

    pipeline, path = hubert_l2
    plan = static_plan(onnx.load(str(path)))
    assert len(plan.cnn_convs) == 7 and plan.cnn_convs[0] == plan.parts.input_convs[0]  # the CNN, input conv first
    assert not set(plan.cnn_convs) & set(plan.parts.positional_convs)
    recipe = DEFAULT_STATIC_RECIPE.with_(cnn_layers=(5, 1), fp32_positional_conv=True)
    assert recipe.cnn_layers == (1, 5) and "static CNN convs 1,5 only" in recipe.describe()
    assert static_plan(onnx.load(str(path)), recipe).unselected_convs == [plan.cnn_convs[i] for i in (2, 3, 4, 6)]
    out = quantize_static_qdq(path, tmp_path / "partial.onnx", Clips(), recipe)
    graph = _graph(out)
    producers = _producers(graph)
    convs = {n.name: n for n in graph.node if n.op_type == "Conv"}
    found = static_plan(onnx.load(str(out)))  # structurally, in the quantized graph
    assert len(found.cnn_convs) == 7 and found.parts.positional_convs
    assert [i for i, name in enumerate(found.cnn_convs) if _is_static(convs[name], producers)] == [1, 5]
    assert not [name for name in found.parts.positional_convs if _is_static(convs[name], producers)]
    check_parity(pipeline, out, [calibration_tone(1.1, seed=7)], chunk_samples=CHUNK, atol=0.5, label="int8-static")
    with pytest.raises(QuantizationError, match="7 conv layers"):
        quantize_static_qdq(path, tmp_path / "bad.onnx", Clips(), DEFAULT_STATIC_RECIPE.with_(cnn_layers=(7,)))


def test_16_bit_activations(hubert_l2, tmp_path):
    import onnx

    pipeline, path = hubert_l2
    out = quantize_static_qdq(path, tmp_path / "a16.onnx", Clips(), DEFAULT_STATIC_RECIPE.with_(activations="uint16"))
    graph = _graph(out)
    initializers = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    conv = [n for n in graph.node if n.op_type == "Conv"][1]
    activation_dq, weight_dq = producers[conv.input[0]], producers[conv.input[1]]
    assert initializers[activation_dq.input[2]].data_type == onnx.TensorProto.UINT16  # 16-bit zero point
    assert initializers[weight_dq.input[0]].data_type == onnx.TensorProto.INT8  # int8 weights
    report = check_parity(pipeline, out, [calibration_tone(1.3, seed=5)], chunk_samples=CHUNK, atol=0.5, label="a16")
    assert report.max_diff("probabilities") > 0


def test_invalid_recipes_are_refused():
    with pytest.raises(QuantizationError, match="calibration"):
        StaticRecipe(calibration="Median")
    with pytest.raises(QuantizationError, match="matmul"):
        StaticRecipe(matmul="int4")
    with pytest.raises(QuantizationError, match="percentile"):
        StaticRecipe(calibration="Percentile", percentile=101.0)
    with pytest.raises(QuantizationError, match="input conv"):
        StaticRecipe(cnn_layers=(0, 1))
    with pytest.raises(QuantizationError, match="distinct"):
        StaticRecipe(cnn_layers=(1, 1))
    with pytest.raises(QuantizationError, match="distinct"):
        StaticRecipe(cnn_layers=(-1,))
    with pytest.raises(QuantizationError, match="activations"):
        StaticRecipe(activations="int4")
    assert StaticRecipe(cnn_layers=(0, 2), fp32_input_conv=False).cnn_layers == (0, 2)


def test_int8_static_quantizes_convolutions(exported, tmp_path):
    import onnx

    pipeline, path = exported("hubert", 2)

    class Clips:
        def __init__(self):
            self.items = iter([{"waveform": tone_clip(s, seed=i)[None]} for i, s in enumerate((0.4, 1.0, 1.9))])

        def get_next(self):
            return next(self.items, None)

    out = quantize_static_qdq(path, tmp_path / "int8s.onnx", Clips())
    graph = onnx.load(str(out)).graph
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"][1:]  # the input conv stays fp32 (above)
    assert convs and all(n.input[0] in quantized_inputs and n.input[1] in quantized_inputs for n in convs)
    assert read_metadata(out)["quantization"] == "int8-static"
    check_parity(pipeline, out, [tone_clip(1.3, seed=2), tone_clip(4.5, seed=3)], chunk_samples=CHUNK, atol=0.25,
                 label="int8-static")
