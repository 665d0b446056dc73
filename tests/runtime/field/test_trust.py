"""Results a user can trust (issue 21): the graph's own thresholds are stream's defaults, a background class is not
reported unless asked, a model without one is warned about, and progress can be turned off."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.core.graph_contract import NEGATIVE_CLASSES, class_thresholds, negative_classes

runner = CliRunner()
CLASSES = ("low", "mid", "background")  # the band graph's third band plays the background class


def run_cli(args):
    return runner.invoke(app, [str(a) for a in args])


def folder(root: Path) -> Path:
    card = root / "card"
    card.mkdir()
    for i in range(3):
        x = tone_track([(0.5 + i, 1.5 + i, DEFAULT_FREQS[i])], 6.0, 16_000, seed=i)
        sf.write(card / f"rec{i}.wav", x, 16_000)
    return card


def rows(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "detections.csv", newline="") as handle:
        return [(r["file"], r["start_s"], r["label"]) for r in csv.DictReader(handle)]


def test_negative_classes_are_found_by_name():
    assert negative_classes(("bird", "Noise", "whale")) == ("Noise",)
    assert negative_classes(("bird", "whale")) == ()
    assert "background" in NEGATIVE_CLASSES


def test_class_thresholds_metadata_is_read_and_checked():
    meta = {"class_thresholds": json.dumps({"low": 0.9, "absent": 0.2, "mid": 7})}
    assert class_thresholds(meta, CLASSES) == {"low": 0.9}
    assert class_thresholds({"class_thresholds": "not json"}, CLASSES) == {}
    assert class_thresholds({}, CLASSES) == {}


def test_the_graphs_thresholds_are_the_default_and_options_override(tmp_path):
    card = folder(tmp_path)
    plain = build_band_graph(tmp_path / "plain.onnx", classes=CLASSES)
    attached = build_band_graph(tmp_path / "attached.onnx", classes=CLASSES,
                                metadata={"class_thresholds": json.dumps({"low": 0.5, "mid": 0.9})})
    table = tmp_path / "table.csv"
    table.write_text("class,threshold\nlow,0.5\nmid,0.9\n")
    runs = {}
    for name, args in {"plain": ["-m", plain], "graph": ["-m", attached],
                       "table": ["-m", plain, "--min-conf", table],
                       "explicit": ["-m", attached, "--min-conf", "0.5"]}.items():
        result = run_cli(["stream", card, *args, "-o", tmp_path / name, "--no-progress"])
        assert result.exit_code == 0, result.output
        runs[name] = (rows(tmp_path / name), result.output)
    assert {label for _, _, label in runs["plain"][0]} == {"low", "mid"}
    assert runs["graph"][0] == runs["table"][0] != runs["plain"][0]  # mid needs 0.9 there
    assert runs["explicit"][0] == runs["plain"][0]  # --min-conf overrides the graph's thresholds
    assert "thresholds: the graph's class_thresholds (2 class(es))" in runs["graph"][1]
    assert "thresholds: --min-conf 0.5" in runs["explicit"][1]
    assert "thresholds: default 0.5" in runs["plain"][1]


def test_background_is_not_reported_unless_asked(tmp_path):
    card = folder(tmp_path)
    graph = build_band_graph(tmp_path / "bg.onnx", classes=CLASSES)
    hidden = run_cli(["stream", card, "-m", graph, "-o", tmp_path / "a", "--no-progress"])
    shown = run_cli(["stream", card, "-m", graph, "-o", tmp_path / "b", "--no-progress", "--report-background"])
    assert hidden.exit_code == 0 and shown.exit_code == 0, hidden.output + shown.output
    assert "background" not in {label for _, _, label in rows(tmp_path / "a")}
    assert "background" in {label for _, _, label in rows(tmp_path / "b")}
    assert "--report-background" in hidden.output
    assert "no background/negative class" not in hidden.output


def test_a_model_without_a_negative_class_is_warned_about_once(tmp_path):
    card = folder(tmp_path)
    graph = build_band_graph(tmp_path / "birds.onnx")  # low, mid, high: no background
    result = run_cli(["stream", card, "-m", graph, "-o", tmp_path / "out", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.count("no background/negative class") == 1
    assert "every window whose score is above the threshold becomes a detection" in result.output


def test_a_model_folder_is_named_as_a_folder(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    build_band_graph(models / "band.onnx")
    result = run_cli(["stream", folder(tmp_path), "-m", models, "-o", tmp_path / "out", "--no-progress"])
    assert result.exit_code == 1
    assert "is a folder, not a model" in result.output and "band.onnx" in result.output
    assert "model file not found" not in result.output


def test_embed_shows_progress_and_no_progress_turns_it_off(tmp_path):
    card = folder(tmp_path)
    graph = build_band_graph(tmp_path / "g.onnx")
    shown = run_cli(["embed", card, "-m", graph, "--db", tmp_path / "db1"])
    quiet = run_cli(["embed", card, "-m", graph, "--db", tmp_path / "db2", "--no-progress"])
    assert shown.exit_code == 0 and quiet.exit_code == 0, shown.output + quiet.output
    assert "embed" in shown.output.split("done:")[0] and "h audio" in shown.output  # the bar's last state
    assert "h audio" not in quiet.output


def test_stream_shows_progress_unless_told_not_to(tmp_path):
    card = folder(tmp_path)
    graph = build_band_graph(tmp_path / "g.onnx")
    shown = run_cli(["stream", card, "-m", graph, "-o", tmp_path / "a"])
    quiet = run_cli(["stream", card, "-m", graph, "-o", tmp_path / "b", "--no-progress"])
    assert shown.exit_code == 0 and quiet.exit_code == 0, shown.output + quiet.output
    assert "h audio, 3/3 files" in shown.output and "h audio" not in quiet.output
