"""Issue 21's first day on one's own data, as a new user runs it from the README: real folder-per-class recordings
with an individual per sub-folder, a group-disjoint split, the study's warnings, an exported trained graph, and a
stream over field recordings whose tables hold no `background` rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from vocalprobe.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def user_folders(farm, root):
    """The farm set laid out as a user keeps clips: CLASS/RECORDING/clipN.wav."""
    for i, row in enumerate(csv.DictReader(open(farm / "manifest.csv", newline=""))):
        samples, rate = sf.read(str(farm / row["path"]), dtype="float32")
        if row["start"]:
            samples = samples[int(float(row["start"]) * rate):int(float(row["end"]) * rate)]
        path = root / row["label"] / row["group"].replace(":", "_") / f"clip{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, rate, subtype="PCM_16")


def test_own_recordings_to_group_disjoint_uar_and_background_free_stream(farm_audio, whisper_tiny_en, tmp_path):
    _, tiny_en = whisper_tiny_en
    user_folders(farm_audio, tmp_path / "clips")
    prepared = cli("data", "prepare", "folders", tmp_path / "clips", "--out", tmp_path / "data", "--group-folders")
    assert prepared.exit_code == 0, prepared.output
    split_of: dict[str, set[str]] = {}
    for row in csv.DictReader(open(tmp_path / "data" / "manifest.csv", newline="")):
        split_of.setdefault(row["group"], set()).add(row["split"])
    assert len(split_of) == 30 and all(len(splits) == 1 for splits in split_of.values())  # group-disjoint

    study = cli("study", "--data", f"farm={tmp_path / 'data' / 'manifest.csv'}", "--backbone", tiny_en, "--layers",
                "1-2", "--seeds", "1", "--out", tmp_path / "studies", "--name", "walk", "--no-progress")
    assert study.exit_code == 0, study.output
    assert "fewer than 5 Test clips" in study.output  # a handful of recordings per class: said, not hidden
    report = (tmp_path / "studies" / "walk" / "report.md").read_text()
    assert "fewer than 5 Test clips" in report.split("## ")[0]  # at the top of the report
    assert "Untrained backbones" not in report and "synthetic" not in report.split("## ")[0].lower()

    graph = tmp_path / "farm.onnx"
    exported = cli("export", tmp_path / "studies" / "walk", "--out", graph)
    assert exported.exit_code == 0, exported.output

    field = tmp_path / "field"
    field.mkdir()
    parts = [sf.read(str(p), dtype="float32") for p in sorted((farm_audio / "background").glob("*.wav"))[:3]]
    parts += [sf.read(str(p), dtype="float32") for p in sorted((farm_audio / "duck").glob("*.wav"))[:1]]
    sf.write(str(field / "pond.wav"), np.concatenate([x for x, _ in parts]), parts[0][1], subtype="PCM_16")
    # --min-conf 0: every class of every window is a row, so what is hidden is the background class alone
    streamed = cli("stream", field, "-m", graph, "-o", tmp_path / "out", "--no-progress", "--min-conf", "0")
    assert streamed.exit_code == 0, streamed.output
    labels = [r["label"] for r in csv.DictReader(open(tmp_path / "out" / "detections.csv", newline=""))]
    assert labels and "background" not in labels  # the negative class is never reported...
    shown = cli("stream", field, "-m", graph, "-o", tmp_path / "all", "--no-progress", "--min-conf", "0",
                "--report-background")
    assert shown.exit_code == 0, shown.output
    everything = [r["label"] for r in csv.DictReader(open(tmp_path / "all" / "detections.csv", newline=""))]
    assert sorted(everything) == sorted(labels + ["background"] * everything.count("background"))
    assert "background" in everything  # ...unless asked for
