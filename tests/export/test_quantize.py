"""The product's int8 modes (export/quantize.py, declared in export/quant_modes.py): the graph's parts that stay
fp32, dynamic int8, the mode table behind the CLI, and --quantize auto. Accuracy (the UAR change) is measured with
``vocalprobe validate`` and the benchmarks, not here; the static research recipes: test_static_qdq.py."""

from __future__ import annotations

from export_cases import CHUNK
from test_export_cli import tiny_study  # noqa: F401  (the tiny study, for --quantize auto)
from signals import tone_clip
from test_static_qdq import hubert_l2  # noqa: F401  (a tiny HuBERT graph with a CNN, positional conv and head)

from vocalprobe.export.metadata import read_metadata
from vocalprobe.export.parity import check_parity
from vocalprobe.export.quantize import graph_parts


def test_graph_parts_finds_input_conv_positional_conv_and_head(hubert_l2):  # noqa: F811
    import onnx

    _, path = hubert_l2
    graph = onnx.load(str(path)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    parts = graph_parts(onnx.load(str(path)))
    assert parts.input_convs == [convs[0].name]  # the CNN's first layer, the one that sees the waveform
    [positional] = parts.positional_convs
    assert any(a.name == "group" and a.i > 1 for a in next(n for n in convs if n.name == positional).attribute)
    assert len(parts.cnn_convs) == 7 and parts.cnn_convs[0] == parts.input_convs[0]
    head_ops = {n.op_type for n in graph.node if n.name in parts.head}
    assert {"Gemm", "Softmax"} <= head_ops and "Conv" not in head_ops  # MLP + softmax, no backbone node


def test_the_mode_table_drives_the_cli():
    """The CLI's --quantize help names every mode of the table and no measured figure; --quant-tolerance gives each
    quantized mode's bar; auto's candidates are the table's."""
    import re

    import typer

    from vocalprobe.cli import app
    from vocalprobe.export.quant_modes import MODES, auto_candidates

    export = typer.main.get_command(app).commands["export"]
    for command in ("study", "fusion"):
        helps = {p.name: p.help for p in export.commands[command].params}
        for mode in MODES:
            assert f"{mode.name} " in helps["quantize"] or helps["quantize"].startswith(mode.name)
        assert "int8-static" not in helps["quantize"] and not re.search(r"\d+(\.\d+)?x|\d+-\d+%", helps["quantize"])
    tolerance = next(p.help for p in export.commands["study"].params if p.name == "quant_tolerance")
    assert all(f"{m.atol:g} for" in tolerance for m in MODES if m.atol is not None)
    assert auto_candidates() == ("none", "int8", "int8-conv")
    assert all(m.applies_to("hubert") for m in MODES)


def test_an_unknown_mode_is_refused_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    result = CliRunner().invoke(app, ["export", str(tmp_path), "--quantize", "int8-static", "--out",
                                      str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "--quantize must be one of none, int8, int8-conv" in result.output
    assert not (tmp_path / "x.onnx").exists()


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


def test_auto_keeps_the_fastest_mode_within_the_decision_bound():
    from vocalprobe.export.auto_mode import ModeTrial, choose

    trials = [ModeTrial("none", 20.0, 0.0), ModeTrial("int8", 18.0, 0.005), ModeTrial("int8-conv", 40.0, 0.015)]
    assert choose(trials) == "int8-conv"
    assert choose(trials, max_changed=0.01) == "none"  # int8-conv changes too much, int8 is slower than fp32
    trials[2] = ModeTrial("int8-conv", None, None, "refused by the parity guard")
    assert choose(trials) == "none"
    assert choose([ModeTrial("none", 5.0, 0.0), ModeTrial("int8", 9.0, 0.01)]) == "int8"


def test_export_quantize_auto_through_the_cli(tiny_study):  # noqa: F811  (the imported fixture)
    import json

    from typer.testing import CliRunner

    from vocalprobe.cli import app

    root, _, study_dir, _ = tiny_study
    out = root / "auto.onnx"
    result = CliRunner().invoke(app, ["export", str(study_dir), "--dataset", "synthetic", "--backbone", "hubert",
                                      "--quantize", "auto", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    chosen = next(line for line in lines if line.startswith("--quantize auto: ")).split()[2]
    assert chosen in ("none", "int8", "int8-conv")
    table = {line.split()[0]: line for line in lines
             if line.split() and line.split()[0] in ("none", "int8", "int8-conv")}
    assert set(table) == {"none", "int8", "int8-conv"} and "<- chosen" in table[chosen]
    assert read_metadata(out)["quantization"] == chosen
    assert json.loads(out.with_suffix(".parity.json").read_text())[0]["passed"]
    assert not list(out.parent.glob(".export-auto-*"))  # the candidates' folder is gone


def test_fusion_refuses_quantize_auto_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    result = CliRunner().invoke(app, ["export", "fusion", "--from-study", str(tmp_path), "--quantize", "auto",
                                      "--out", str(tmp_path / "f.onnx")])
    assert result.exit_code == 1 and "--quantize auto applies to" in result.output
