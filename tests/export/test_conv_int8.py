"""``--quantize int8-conv`` (export/conv_int8.py, export/graph_rewrites.py): the per-frame int8 convolution is the
algorithm its docs describe (checked against a numpy reference), works for every kernel/stride/length, keeps quiet
frames precise, does not depend on the batch, and the whole quantized pipeline stays close to PyTorch for all three
families (and a layer-norm CNN). Speed is measured by benchmarks/bench_export.py, the UAR change by validate."""

from __future__ import annotations

import numpy as np
import pytest
from export_cases import CASES, CHUNK
from signals import tone_clip

from vocalprobe.export.metadata import read_metadata
from vocalprobe.export.parity import check_parity


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def conv_model(weight: np.ndarray, stride: int, bias: np.ndarray | None = None):
    """One Conv1d graph: x [B, C, T] -> y [B, O, T'] (dynamic B and T)."""
    from onnx import TensorProto, helper, numpy_helper

    out_channels, in_channels, _ = weight.shape
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="conv", strides=[stride])
    graph = helper.make_graph([node], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", in_channels, "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", out_channels, "T2"])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def reference(x: np.ndarray, weight: np.ndarray, stride: int, bias=None) -> np.ndarray:
    """numpy version of the documented algorithm: groups of ``stride`` frames quantized per group (uint8, own range),
    weights int8 per output channel and tap block, then an ordinary convolution of the dequantized values."""
    batch, channels, length = x.shape
    out_channels, _, kernel = weight.shape
    frames = (length - kernel) // stride + 1
    blocks = -(-kernel // stride)
    groups = frames + blocks - 1
    xt = np.zeros((batch, groups * stride, channels), np.float64)
    used = min(length, groups * stride)
    xt[:, :used] = x.transpose(0, 2, 1)[:, :used]
    g = xt.reshape(batch, groups, stride * channels)
    low = np.minimum(g.min(-1, keepdims=True), 0)
    high = np.maximum(g.max(-1, keepdims=True), 0)
    scale = np.maximum((high - low) / 255, 1e-30).astype(np.float32).astype(np.float64)
    zero = np.round(-low / scale)
    deq = (np.clip(np.round(g / scale) + zero, 0, 255) - zero) * scale
    xq = deq.reshape(batch, groups * stride, channels)
    taps = weight.transpose(2, 1, 0).astype(np.float64)  # [k, C, O]
    wq = np.empty_like(taps)
    for i in range(blocks):
        block = taps[i * stride:(i + 1) * stride]
        rows = block.reshape(-1, out_channels)  # the product's K axis: tap-major, then channel
        rows = np.vstack([rows, np.zeros((len(rows) % 2, out_channels))])
        # one scale per output channel: no code above 127, no aligned pair of codes summing above 127 (+ rounding)
        reach = np.maximum(np.abs(rows).max(axis=0), np.abs(rows[0::2] + rows[1::2]).max(axis=0))
        s = (np.maximum(reach, 1e-30) / 127).astype(np.float32).astype(np.float64)
        wq[i * stride:(i + 1) * stride] = np.clip(np.round(block / s), -127, 127) * s
    y = np.zeros((batch, frames, out_channels))
    for j in range(kernel):
        y += xq[:, j:j + stride * (frames - 1) + 1:stride] @ wq[j]
    if bias is not None:
        y += bias
    return y.transpose(0, 2, 1)


def rewritten(weight, stride, bias=None):
    from vocalprobe.export.conv_int8 import convs_as_int8_matmuls

    model = conv_model(weight, stride, bias)
    result = convs_as_int8_matmuls(model, ["conv"])
    assert result.rewritten == ["conv"] and not result.skipped
    ops = {n.name: n.op_type for n in model.graph.node}
    assert "Conv" not in ops.values() and [ops[name] for name in result.fp32_matmuls] == ["MatMul"]
    return model


@pytest.mark.parametrize("kernel,stride", [(3, 2), (2, 2), (10, 5), (3, 1), (4, 3), (1, 1)])
@pytest.mark.parametrize("length", [11, 12, 40, 41])
def test_matches_the_documented_algorithm(kernel, stride, length):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + length)
    weight = rng.standard_normal((5, 4, kernel)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    x = (rng.standard_normal((2, 4, length)) * np.exp(rng.uniform(-4, 1, (2, 1, length)))).astype(np.float32)
    y = _session(rewritten(weight, stride, bias)).run(None, {"x": x})[0]
    expected = reference(x, weight, stride, bias)
    assert y.shape == expected.shape == (2, 5, (length - kernel) // stride + 1)
    assert np.abs(y - expected).max() <= 1e-4 * np.abs(expected).max()
    fp32 = _session(conv_model(weight, stride, bias)).run(None, {"x": x})[0]
    assert 0 < np.abs(y - fp32).max() < 0.05 * np.abs(fp32).max()  # really quantized, and close


def test_quiet_frames_keep_their_precision_and_batching_changes_nothing():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((16, 8, 3)).astype(np.float32)
    loud = rng.standard_normal((1, 8, 200)).astype(np.float32)
    quiet = 1e-3 * rng.standard_normal((1, 8, 200)).astype(np.float32)
    x = np.concatenate([loud, quiet], axis=2)  # a call, then near-silence, in one clip
    session, fp32 = _session(rewritten(weight, 2)), _session(conv_model(weight, 2))
    y, exact = session.run(None, {"x": x})[0], fp32.run(None, {"x": x})[0]
    tail = slice(110, None)  # output frames that only see the quiet half
    relative = np.abs(y[..., tail] - exact[..., tail]).max() / np.abs(exact[..., tail]).max()
    assert relative < 0.02  # one shared range (the loud half's) would round the quiet half to ~0
    batch = np.concatenate([x, loud.repeat(2, axis=2), np.zeros_like(x)])  # a silent clip in the batch, too
    together = session.run(None, {"x": batch})[0]
    assert np.array_equal(together[0], y[0])
    assert np.all(np.isfinite(together)) and np.abs(together[2]).max() == 0


def test_products_are_exact_where_uint8_times_int8_saturates():
    """All-positive activations (codes up to 255) against same-sign weights: CPUs without VNNI add two neighbouring
    uint8 x int8 products into a saturating int16, so plain 8-bit weight codes overflowed there (15% error on a case
    like this one); the pair-safe codes must give the documented algorithm on every CPU."""
    rng = np.random.default_rng(3)
    weight = np.abs(rng.standard_normal((8, 64, 3))).astype(np.float32)  # every tap of a channel the same sign
    x = rng.uniform(0.5, 1.0, (2, 64, 41)).astype(np.float32)  # codes near 255
    y = _session(rewritten(weight, 2)).run(None, {"x": x})[0]
    expected = reference(x, weight, 2)
    assert np.abs(y - expected).max() <= 1e-4 * np.abs(expected).max()


def test_pair_safe_codes_bound_every_aligned_pair():
    from vocalprobe.export.int8_weights import PAIR_LIMIT, pair_safe_codes

    rng = np.random.default_rng(4)
    w = rng.standard_normal((515, 7))  # odd K: the last code pairs with nothing
    w[10:12, 3] = [5.0, 5.0]  # one same-sign pair far above the rest: that column's scale follows it
    for per_column in (True, False):
        codes, scale = pair_safe_codes(w, per_column=per_column)
        c = np.vstack([codes.astype(np.int32), np.zeros((1, 7), np.int32)])
        assert np.abs(c[0::2] + c[1::2]).max() <= PAIR_LIMIT and np.abs(codes.astype(np.int32)).max() <= 127
        assert scale.shape == ((7,) if per_column else ())
        assert np.abs(codes * scale - w).max() <= 0.5 * scale.max() + 1e-6
    codes, scale = pair_safe_codes(w)
    plain = np.abs(w).max(axis=0) / 127  # what a per-column 8-bit scale would be
    assert scale[3] > 1.5 * plain[3] and np.allclose(np.delete(scale, 3), np.delete(plain, 3), rtol=0.6)


def test_weight_codes_of_exported_int8_graphs_are_pair_safe(exported, tmp_path):
    """Every int8 weight that onnxruntime multiplies with uint8 activations keeps each aligned pair of codes within
    +-128 (see above), in the dynamic MatMuls and the rewritten convs alike."""
    import onnx
    from onnx import numpy_helper

    from vocalprobe.export.int8_weights import PAIR_LIMIT
    from vocalprobe.export.quantize import quantize_dynamic_matmul, quantize_int8_conv

    _, fp32 = exported(*CASES[0])
    for quantize, name in ((quantize_int8_conv, "int8conv.onnx"), (quantize_dynamic_matmul, "int8.onnx")):
        model = onnx.load(str(quantize(fp32, tmp_path / name)))
        weights = {init.name: init for init in model.graph.initializer}
        checked = 0
        for node in model.graph.node:
            if node.op_type in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulInteger"):
                codes = numpy_helper.to_array(weights[node.input[1]]).astype(np.int32)
                codes = np.vstack([codes, np.zeros((len(codes) % 2, codes.shape[1]), np.int32)])
                assert np.abs(codes[0::2] + codes[1::2]).max() <= PAIR_LIMIT, node.name
                checked += 1
        assert checked > 0


def test_unsupported_convolutions_are_left_alone():
    from onnx import helper

    from vocalprobe.export.conv_int8 import convs_as_int8_matmuls

    model = conv_model(np.ones((4, 4, 3), np.float32), 1)
    model.graph.node[0].attribute.append(helper.make_attribute("pads", [1, 1]))
    result = convs_as_int8_matmuls(model, ["conv"])
    assert not result.rewritten and result.skipped == {"conv": "padded convolution"}
    assert [n.op_type for n in model.graph.node] == ["Conv"]


def _gelu_graph(order: str, extra_consumer: bool = False):
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"])]
    if order == "half-first":
        nodes += [helper.make_node("Mul", ["half", "a"], ["h"]), helper.make_node("Mul", ["x", "h"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["x", "a"], ["h"]), helper.make_node("Mul", ["h", "half"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])]
    if extra_consumer:  # the erf value is used elsewhere: the chain is not self-contained
        nodes.append(helper.make_node("Neg", ["e"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N"]))
    for i, node in enumerate(nodes):
        node.name = f"n{i}"
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])], outputs,
                              consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("order", ["half-first", "x-first"])
def test_fuse_gelu_is_exact(order):
    from vocalprobe.export.graph_rewrites import fuse_gelu

    x = np.linspace(-6, 6, 101, dtype=np.float32)
    model = _gelu_graph(order)
    before = _session(model).run(None, {"x": x})[0]
    assert fuse_gelu(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Gelu"]
    np.testing.assert_allclose(_session(model).run(None, {"x": x})[0], before, atol=1e-6)
    shared = _gelu_graph(order, extra_consumer=True)
    assert fuse_gelu(shared) == 0 and len(shared.graph.node) == 6


def test_cancel_transposes_only_around_scalar_elementwise_regions():
    from onnx import TensorProto, helper, numpy_helper

    from vocalprobe.export.graph_rewrites import cancel_transposes

    def model(operand):
        inits = [numpy_helper.from_array(np.asarray(operand, np.float32), "c")]
        nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1], name="t1"),
                 helper.make_node("Mul", ["t", "c"], ["m"], name="mul"),
                 helper.make_node("Erf", ["m"], ["e"], name="erf"),
                 helper.make_node("Transpose", ["e"], ["u"], perm=[0, 2, 1], name="t2"),
                 helper.make_node("Relu", ["u"], ["y"], name="relu")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    scalar = model(0.7)
    expected = _session(scalar).run(None, {"x": x})[0]
    assert cancel_transposes(scalar) == 1
    assert [n.op_type for n in scalar.graph.node] == ["Mul", "Erf", "Relu"]
    np.testing.assert_allclose(_session(scalar).run(None, {"x": x})[0], expected, atol=1e-6)
    per_channel = model(np.linspace(0.5, 1.0, 3).reshape(1, 1, 3))  # a layout-dependent operand: keep both
    assert cancel_transposes(per_channel) == 0 and len(per_channel.graph.node) == 5


@pytest.mark.parametrize("name,layer", CASES)
def test_int8_conv_graph_stays_close_to_pytorch(exported, tmp_path, name, layer):
    import onnx

    from vocalprobe.export.quantize import graph_parts, quantize_int8_conv

    pipeline, fp32 = exported(name, layer)
    out = quantize_int8_conv(fp32, tmp_path / "int8conv.onnx")
    meta = read_metadata(out)
    assert meta["quantization"] == "int8-conv" and "per-frame" in meta["quantization_recipe"]
    assert meta["int8_weights"] == "pair-safe"
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    plan = graph_parts(onnx.load(str(fp32)))
    group_norm = name != "wav2vec2-stable"  # the others' input conv has a per-channel GroupNorm: folded
    # only the positional conv (and the input conv, where it has no GroupNorm to fold) stay convolutions
    assert ops.count("Conv") == (1 if group_norm else 2)
    assert "InstanceNormalization" not in ops
    assert ops.count("MatMulIntegerToFloat") >= len(plan.cnn_convs) - 1  # the other CNN convs are int8 products
    assert "Erf" not in ops  # every GELU fused
    # the rewritten convs talk channels-last to each other: at most the first one's input transpose is left
    assert len([n for n in model.graph.node if n.op_type == "Transpose" and "/int8conv/" in n.name]) <= 1
    clips = [tone_clip(s, seed=i) for i, s in enumerate((0.1, 1.0, 2.3, 4.5))]  # 4.5 s > CHUNK: chunked
    report = check_parity(pipeline, out, clips, chunk_samples=CHUNK, atol=0.25, label="int8-conv")
    assert report.max_diff("probabilities") > 0


def _conv_norm_graph(kernel: int, stride: int, affine: bool = True):
    """The exporter's waveform conv + GroupNorm(C groups): Conv -> Reshape -> InstanceNormalization -> Reshape(Shape)
    -> Mul -> Add, then a Relu (something after the chain)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(kernel + 10 * stride)
    channels = 6
    arrays = {"w": rng.standard_normal((channels, 1, kernel)), "bias": rng.standard_normal(channels),
              "groups": np.array([0, channels, -1], np.int64), "s": rng.uniform(0.5, 2, channels),
              "b": rng.standard_normal(channels), "gamma": rng.uniform(0.5, 2, (channels, 1)),
              "beta": rng.standard_normal((channels, 1))}
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in arrays.items()]
    nodes = [helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", strides=[stride]),
             helper.make_node("Reshape", ["c", "groups"], ["g"], name="r1"),
             helper.make_node("InstanceNormalization", ["g", "s", "b"], ["n"], name="norm", epsilon=1e-5),
             helper.make_node("Shape", ["c"], ["shape"], name="shape"),
             helper.make_node("Reshape", ["n", "shape"], ["back"], name="r2")]
    last = "back"
    if affine:
        nodes += [helper.make_node("Mul", ["back", "gamma"], ["m"], name="mul"),
                  helper.make_node("Add", ["m", "beta"], ["a"], name="add")]
        last = "a"
    nodes.append(helper.make_node("Relu", [last], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "conv_norm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, "N"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", channels, "T"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("kernel,stride,affine", [(10, 5, True), (4, 2, False), (3, 3, True), (2, 1, True)])
@pytest.mark.parametrize("length", [50, 53])
def test_fold_input_conv_norm_is_exact(kernel, stride, affine, length):
    from vocalprobe.export.norm_fold import fold_input_conv_norm

    rng = np.random.default_rng(length)
    x = (rng.standard_normal((3, 1, length)) * [[[1.0]], [[1e-3]], [[30.0]]] + 0.1).astype(np.float32)
    model = _conv_norm_graph(kernel, stride, affine)
    before = _session(model).run(None, {"x": x})[0]
    assert fold_input_conv_norm(model) == ["conv"]
    ops = [n.op_type for n in model.graph.node]
    assert "Conv" not in ops and "InstanceNormalization" not in ops and "Shape" in ops
    after = _session(model).run(None, {"x": x})[0]
    assert after.shape == before.shape == (3, 6, (length - kernel) // stride + 1)
    np.testing.assert_allclose(after, before, atol=2e-5 * np.abs(before).max())


def test_fold_input_conv_norm_leaves_other_patterns_alone():
    from vocalprobe.export.norm_fold import fold_input_conv_norm

    uneven = _conv_norm_graph(5, 2)  # kernel not a multiple of the stride
    assert fold_input_conv_norm(uneven) == [] and len(uneven.graph.node) == 8
    from onnx import numpy_helper

    grouped = _conv_norm_graph(10, 5)  # two channels per group: not a per-channel norm
    shape = next(i for i in grouped.graph.initializer if i.name == "groups")
    shape.CopyFrom(numpy_helper.from_array(np.array([0, 3, -1], np.int64), "groups"))
    assert fold_input_conv_norm(grouped) == [] and len(grouped.graph.node) == 8


def _grouped_conv_graph(kernel: int, pads: tuple[int, int], channels: int = 12, groups: int = 3, bias: bool = True):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(kernel)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, channels // groups, kernel)).astype(np.float32),
                                     "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Conv", inputs, ["y"], name="pos", group=groups, pads=list(pads))
    graph = helper.make_graph([node], "pos",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", channels, "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", channels, "T2"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


#: (kernel, pads, bias, length) with at least one output frame: a shorter input has none, and onnxruntime refuses
#: such a Conv (the export never builds one), so those pairs are not cases.
BLOCK_DFT_CASES = [(kernel, pads, bias, length)
                   for kernel, pads, bias in [(128, (64, 64), True), (40, (0, 0), False), (33, (16, 16), True),
                                              (191, (95, 95), True)]
                   for length in [1, 49, 65, 199, 400] if length + sum(pads) >= kernel]


@pytest.mark.parametrize("kernel,pads,bias,length", BLOCK_DFT_CASES)
def test_block_dft_conv_is_the_same_convolution(kernel, pads, bias, length):
    from vocalprobe.export.spectral_conv import convs_as_block_dft

    x = np.random.default_rng(length).standard_normal((2, 12, length)).astype(np.float32)
    model = _grouped_conv_graph(kernel, pads, bias=bias)
    before = _session(model).run(None, {"x": x})[0]
    assert convs_as_block_dft(model) == ["pos"]
    assert "Conv" not in [n.op_type for n in model.graph.node]
    after = _session(model).run(None, {"x": x})[0]
    assert after.shape == before.shape == (2, 12, length + sum(pads) - kernel + 1)
    np.testing.assert_allclose(after, before, atol=1e-5 * np.abs(before).max())


def test_block_dft_leaves_short_strided_and_too_long_kernels_alone():
    from onnx import helper

    from vocalprobe.export.spectral_conv import convs_as_block_dft, spectral_conv_support

    for kernel in (16, 192):
        model = _grouped_conv_graph(kernel, (0, 0))
        assert convs_as_block_dft(model) == [] and [n.op_type for n in model.graph.node] == ["Conv"]
    strided = _grouped_conv_graph(64, (0, 0))
    strided.graph.node[0].attribute.append(helper.make_attribute("strides", [2]))
    inits = {i.name: i for i in strided.graph.initializer}
    assert spectral_conv_support(strided.graph.node[0], inits) == "strided or dilated"
    assert convs_as_block_dft(strided) == []


def test_int8_conv_members_fuse(exported, tmp_path):
    import onnxruntime as ort

    from vocalprobe.export.fusion import fuse_models
    from vocalprobe.export.quantize import quantize_int8_conv

    members = [quantize_int8_conv(exported(name, layer)[1], tmp_path / f"{name}.onnx")
               for name, layer in (("hubert", 0), ("wavlm", 2))]
    fused = fuse_models(members, tmp_path / "fused.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    run = lambda path: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(  # noqa: E731
        ["probabilities"], {"waveform": tone_clip(1.3, seed=5)[None]})[0]
    np.testing.assert_allclose(run(fused), np.mean([run(m) for m in members], axis=0), atol=1e-6)
