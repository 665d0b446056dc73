"""The positional conv (grouped, long kernel) as block DFT products: the same convolution with ~4x fewer operations.

The transformer's convolutional position embedding is a Conv1d with 768 channels in 16 groups and a kernel of 128
frames. Done directly, every output frame costs 128 x 48 multiply-adds per channel. Overlap-save does it in the
frequency domain: the (padded) input is cut into blocks of ``n`` frames that overlap by ``k - 1``; each block's real
DFT (a matrix product with a constant ``[2f, n]`` basis, f = n/2 + 1 bins) is multiplied, bin by bin and group by
group, with the DFT of the kernel (complex 48 x 48 products, as real matrix products), and the first ``n - k + 1``
frames of each block's inverse DFT (another constant matrix product) are the conv's output frames. Everything is an
fp32 matrix product, so it is the same function (rounding aside); the kernel's spectrum replaces the kernel in the
file (about 1.5x its size at ``n = 192``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vocalprobe.export.graph_rewrites import attribute, replace_nodes

if TYPE_CHECKING:
    import onnx

__all__ = ["spectral_conv_support", "convs_as_block_dft"]

#: DFT block length: one block covers a 1 s window's 50 frames (n - k + 1 = 65 outputs); any n > k works.
BLOCK = 192


def spectral_conv_support(node, initializers) -> str | None:
    """Why ``node`` is not rewritten (None: it is)."""
    if node.op_type != "Conv":
        return "not a Conv"
    weight = initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or len(weight.dims) != 3:
        return "not a 1-D conv with a constant weight"
    if weight.dims[2] < 32:
        return "short kernel (the direct conv is cheaper)"
    if any(s != 1 for s in attribute(node, "strides", [1])) or any(d != 1 for d in attribute(node, "dilations", [1])):
        return "strided or dilated"
    pads = list(attribute(node, "pads", [0, 0]))
    if len(pads) != 2 or attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "padding other than explicit pads"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in initializers:
        return "its bias is not a constant"
    if weight.dims[2] >= BLOCK:
        return f"kernel longer than the DFT block ({BLOCK})"
    return None


def _bases(n: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward real DFT ``[2f, n]`` (cos rows, then -sin rows) and the inverse restricted to the first ``outputs``
    time samples ``[outputs, 2f]``."""
    f = n // 2 + 1
    t = np.arange(n)
    angle = 2 * np.pi * np.outer(np.arange(f), t) / n  # [f, n]
    forward = np.concatenate([np.cos(angle), -np.sin(angle)])
    weight = np.full(f, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    inv_angle = angle[:, :outputs].T  # [outputs, f]
    inverse = np.concatenate([np.cos(inv_angle) * weight, -np.sin(inv_angle) * weight], axis=1) / n
    return forward, inverse


def _rewrite(node, weight: np.ndarray, bias: str | None):
    from vocalprobe.export.conv_int8 import _Builder

    out_channels, per_group, kernel = weight.shape
    groups = int(attribute(node, "group", 1))
    channels = per_group * groups
    pad_left, pad_right = (int(p) for p in attribute(node, "pads", [0, 0]))
    n, hop = BLOCK, BLOCK - kernel + 1
    bins = n // 2 + 1
    out_per_group = out_channels // groups
    forward, inverse = _bases(n, hop)
    # the kernel's spectrum, conjugated (a conv layer correlates): [bins, groups, in, out], real and imaginary parts
    w = weight.reshape(groups, out_per_group, per_group, kernel).astype(np.float64)
    spectrum = np.conj(np.fft.rfft(w, n=n, axis=-1))  # [g, o, c, bins]
    spectrum = spectrum.transpose(3, 0, 2, 1)  # [bins, g, c, o]
    b = _Builder(f"{node.name}/blockdft")
    frames = b.op("Transpose", [node.input[0]], perm=[0, 2, 1])  # [B, T, C]
    length = b.op("Shape", [frames], start=1, end=2)
    out_frames = b.op("Add", [length, b.ints([pad_left + pad_right - kernel + 1])])
    blocks = b.op("Div", [b.op("Add", [out_frames, b.ints([hop - 1])]), b.ints([hop])])
    later = -(-(kernel - 1) // hop)  # a block reaches this many hops past its own
    total = b.op("Mul", [b.op("Add", [blocks, b.ints([later + 1])]), b.ints([hop])])
    right = b.op("Sub", [b.op("Sub", [total, length]), b.ints([pad_left])])
    pads = b.op("Concat", [b.ints([0, pad_left, 0, 0]), right, b.ints([0])], axis=0)
    hops = b.op("Reshape", [b.op("Pad", [frames, pads]), b.ints([0, -1, hop, channels])])  # [B, blocks+later+1, hop, C]
    pieces, missing = [b.op("Slice", [hops, b.ints([0]), blocks, b.ints([1])])], kernel - 1
    for j in range(1, later + 1):  # block i = hop i, then the first kernel - 1 frames after it
        take = min(hop, missing)
        end = b.op("Concat", [b.op("Add", [blocks, b.ints([j])]), b.ints([take])], axis=0)
        pieces.append(b.op("Slice", [hops, b.ints([j, 0]), end, b.ints([1, 2])]))
        missing -= take
    windows = b.op("Concat", pieces, axis=2)  # [B, blocks, n, C]
    spec = b.op("MatMul", [b.const(forward.astype(np.float32), "dft"), windows])  # [B, blocks, 2f, C]
    # [rows, 2, f, g, c] -> [f, g, 2 * rows, c]: a batch of (bin, group) matrices with real rows, then imaginary
    rows = b.op("Reshape", [spec, b.ints([-1, 2, bins, groups, per_group])])
    stacked = b.op("Reshape", [b.op("Transpose", [rows], perm=[2, 3, 1, 0, 4]), b.ints([bins, groups, -1, per_group])])
    real = b.op("MatMul", [stacked, b.const(spectrum.real.astype(np.float32), "spectrum_real")])
    imag = b.op("MatMul", [stacked, b.const(spectrum.imag.astype(np.float32), "spectrum_imag")])
    half = b.op("Div", [b.op("Shape", [stacked], start=2, end=3), b.ints([2])])
    top = lambda x: b.op("Slice", [x, b.ints([0]), half, b.ints([2])])  # noqa: E731  the real rows
    bottom = lambda x: b.op("Slice", [x, half, b.ints([2 ** 62]), b.ints([2])])  # noqa: E731  the imaginary rows
    y_real = b.op("Sub", [top(real), bottom(imag)])  # (Xr + iXi)(Wr + iWi)
    y_imag = b.op("Add", [top(imag), bottom(real)])
    both = b.op("Concat", [y_real, y_imag], axis=2)  # [f, g, 2 * rows, o]
    unstacked = b.op("Reshape", [both, b.ints([bins, groups, 2, -1, out_per_group])])
    back = b.op("Transpose", [unstacked], perm=[3, 2, 0, 1, 4])  # [rows, 2, f, g, o]
    spec_out = b.op("Reshape", [back, b.op("Concat", [b.op("Shape", [spec], start=0, end=2),
                                                      b.ints([2 * bins, out_channels])], axis=0)])
    y = b.op("MatMul", [b.const(inverse.astype(np.float32), "idft"), spec_out])  # [B, blocks, hop, O]
    y = b.op("Reshape", [y, b.ints([0, -1, out_channels])])
    y = b.op("Slice", [y, b.ints([0]), out_frames, b.ints([1])])
    if bias:
        y = b.op("Add", [y, bias])
    b.op("Transpose", [y], node.output[0], perm=[0, 2, 1])
    return b


def convs_as_block_dft(model: "onnx.ModelProto", names=None) -> list[str]:
    """Rewrite the long-kernel Convs (``names``, or every one ``spectral_conv_support`` accepts) in place."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    nodes, constants, done = [], [], []
    for node in graph.node:
        wanted = names is None or node.name in names
        if not wanted or spectral_conv_support(node, initializers) is not None:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        builder = _rewrite(node, weight, bias)
        nodes.extend(builder.nodes)
        constants.extend(builder.constants)
        done.append(node.name)
    if not done:
        return done
    replace_nodes(graph, nodes, constants)
    return done
