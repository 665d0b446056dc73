"""Fusion graphs (export/fusion.py): classes aligned by name, weights, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_cases import CHUNK, CLASSES
from signals import tone_clip

from vocalprobe.export.onnx_io import get_metadata, save_model, set_metadata
from vocalprobe.runtime.engine.long_clips import predict_long
from vocalprobe.runtime.engine.onnx_model import OnnxModel


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


def test_fusion_refuses_to_overwrite_a_member(tmp_path):
    """`export fusion a.onnx b.onnx --out a.onnx` used to replace member a silently; any spelling of a is refused."""
    import os

    from runtime_graphs import build_band_graph
    from typer.testing import CliRunner

    from vocalprobe.cli import app
    from vocalprobe.export.fusion import FusionError, fuse_models

    a, b = build_band_graph(tmp_path / "a.onnx"), build_band_graph(tmp_path / "b.onnx")
    before = a.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.onnx").symlink_to(a)
    os.link(a, tmp_path / "hard.onnx")
    for out in (a, tmp_path / "sub" / ".." / "a.onnx", tmp_path / "link.onnx", tmp_path / "hard.onnx"):
        with pytest.raises(FusionError, match="would overwrite it"):
            fuse_models([a, b], out)
    result = CliRunner().invoke(app, ["export", "fusion", str(a), str(b), "--out", str(a)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: --out") and len(result.output.strip().splitlines()) == 1
    assert a.read_bytes() == before


def _with_metadata(src, dst, **changes):
    import onnx

    model = onnx.load(str(src))
    meta = {k: v for k, v in get_metadata(model).items() if k != "int8_weights"}
    set_metadata(model, {**meta, **changes})
    return save_model(model, dst)


def test_fusion_carries_the_widest_int8_weight_codes(exported, tmp_path):
    """A fusion with one member written before the key (8-bit codes) is flagged like that member."""
    from vocalprobe.export.fusion import fuse_models

    _, a = exported("hubert", 0)
    new = _with_metadata(a, tmp_path / "new.onnx", quantization="int8-conv", int8_weights="pair-safe")
    old = _with_metadata(a, tmp_path / "old.onnx", quantization="int8")
    assert "int8_weights" not in OnnxModel(fuse_models([a, a], tmp_path / "f0.onnx")).info.metadata
    assert OnnxModel(fuse_models([a, new], tmp_path / "f1.onnx")).info.metadata["int8_weights"] == "pair-safe"
    assert OnnxModel(fuse_models([new, old], tmp_path / "f2.onnx")).info.metadata["int8_weights"] == "8-bit"
