"""study.frontier: cost beside accuracy in a study folder with known results, and export --layer frontier:M."""

from __future__ import annotations

import csv
import json

import pytest

pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")

from typer.testing import CliRunner  # noqa: E402

from vocalprobe.cli import app  # noqa: E402
from vocalprobe.export.onnx_export import select_probe  # noqa: E402
from vocalprobe.training.cost import macs_per_second  # noqa: E402
from vocalprobe.training.study.config import StudyError  # noqa: E402
from vocalprobe.training.study.frontier import (  # noqa: E402
    SPEED_FILE,
    cost_section,
    layer_costs,
    parse_frontier_spec,
)
from vocalprobe.training.study.results import (  # noqa: E402
    CLIPS_FILE,
    DatasetInfo,
    LayerChoice,
    ProbeResult,
    StudySummary,
    run_dir,
    write_json,
    write_summary,
)

VAL = {"hubert": (0.50, 0.80, 0.81), "wav2vec2": (0.40, 0.85, 0.60)}  # mean Val UAR per layer 0, 1, 2


@pytest.fixture
def known_study(tmp_path, tiny_checkpoints):
    """A study folder whose results are written by hand: hubert's best layer is 2, one point above layer 1."""
    choices, results = [], []
    for label, val in VAL.items():
        layers = (0, 1, 2)
        best = max(layers, key=lambda k: (val[k], -k))
        choices.append(LayerChoice("tones", label, str(tiny_checkpoints[label]), "untrained", layers, val,
                                   (0.0,) * 3, val, (0.0,) * 3, best, best, 0, f"probes/tones/{label}.safetensors",
                                   f"probes/tones/{label}.test_posteriors.npy"))
        results += [ProbeResult("tones", label, k, 0, val[k], val[k], 0.0, 1.0, 1, 2, 8, 4, 4) for k in layers]
        write_json(run_dir(tmp_path, "tones", label) / CLIPS_FILE,
                   {"backbone": {"source": str(tiny_checkpoints[label]), "revision": None}})
    summary = StudySummary({"name": "known", "probe": {"hidden_sizes": [16]}},
                           [DatasetInfo("tones", "manifest.csv", ["a", "b", "c"], {}, [])], results, choices, [])
    write_summary(tmp_path, summary)
    return tmp_path, summary


@pytest.mark.parametrize("spec, layer", [("frontier:1.0", 1), ("frontier:0", 2), ("FRONTIER:40", 0),
                                         ("best", 2), ("1", 1)])
def test_frontier_picks_the_cheapest_layer_within_the_margin(known_study, spec, layer):
    study_dir, _ = known_study
    selection = select_probe(study_dir, dataset="tones", backbone="hubert", layer=spec)
    assert selection.layer == layer
    if spec.lower().startswith("frontier"):
        assert f"layer {layer} (" in selection.reason and "cheapest within" in selection.reason
    else:
        assert selection.reason == ""


@pytest.mark.parametrize("spec, message", [("frontier:x", "expected frontier:M"), ("frontier", "expected frontier:M"),
                                           ("frontier:-1", "finite number of UAR points >= 0"),
                                           ("frontier:nan", "finite number")])
def test_bad_frontier_specs_are_one_line_errors(known_study, tmp_path, spec, message):
    study_dir, _ = known_study
    with pytest.raises(StudyError, match=message):
        parse_frontier_spec(spec)
    result = CliRunner().invoke(app, ["export", str(study_dir), "--backbone", "hubert", "--layer", spec,
                                      "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and message.split()[0] in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.onnx").exists()


def test_costs_frontier_and_measured_speed_in_the_report_section(known_study, tiny_checkpoints):
    study_dir, summary = known_study
    rows = layer_costs(study_dir, summary)
    by = {(r.backbone, r.layer): r for r in rows}
    config = json.loads((tiny_checkpoints["hubert"] / "config.json").read_text())
    expected = macs_per_second(config, 2, probe=(2 * config["hidden_size"], [16], 3))
    assert by[("hubert", 2)].macs_per_s == pytest.approx(expected)
    # both tiny backbones cost the same per layer: wav2vec2 L1 (85) dominates hubert L1 and L2; L0s are cheapest
    assert {k for k, r in by.items() if r.on_frontier} == {("hubert", 0), ("wav2vec2", 1)}
    with (study_dir / SPEED_FILE).open("w", newline="") as handle:
        csv.writer(handle).writerows([("dataset", "backbone", "layer", "x_realtime"), ("tones", "hubert", 1, 123.4)])
    text = "\n".join(cost_section(study_dir, summary))
    assert "× real time" in text and "123.4" in text and "not yet" not in text
    assert (study_dir / "figures" / "frontier_tones.png").stat().st_size > 1000
    with (study_dir / "cost.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and {r["on_frontier"] for r in table} == {"0", "1"}
    (study_dir / SPEED_FILE).unlink()
    assert "not yet" in "\n".join(cost_section(study_dir, summary))
