"""A finished recording renamed before a run is resumed (issue 24) is recognised by its audio digest (the journal
keeps each file's sha256): the new name is analysed and the old name's rows are retracted from the JSONL, its
tables removed and its journal record deleted in the same transaction, so the run's tables count it once, as a
fresh run over the renamed folder does."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, tone_track
from test_workers import tree
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.field.run_state import RunState, read_settings

runner = CliRunner()


def stream(folder: Path, out: Path, graph: Path, *extra: str):
    result = runner.invoke(app, ["stream", str(folder), "-m", str(graph), "--window", "0.5", "--min-conf", "0.6",
                                 "--format", "raven,csv,jsonl", "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def final_rows(jsonl: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for line in jsonl.read_text().splitlines():
        item = json.loads(line)
        if "retract" in item:
            rows[item["retract"]] = []
        else:
            rows.setdefault(item["file"], []).append(item)
    return {name: found for name, found in rows.items() if found}


def names_in(table: Path) -> list[str]:
    return [row["file"] for row in csv.DictReader(table.open(newline=""))]


def test_a_renamed_recording_is_counted_once(graph, tmp_path):
    folder = tmp_path / "card"
    folder.mkdir()
    for i, name in enumerate(["a.wav", "b.wav", "c.wav"]):
        events = [(0.3, 1.4, DEFAULT_FREQS[i]), (2.2, 3.3, DEFAULT_FREQS[(i + 1) % 3])]
        sf.write(folder / name, tone_track(events, 4.0, 16_000, seed=i), 16_000)
    out = tmp_path / "out"
    stream(folder, out, graph)
    assert names_in(out / "detections.csv").count("b.wav") > 0
    os.rename(folder / "b.wav", folder / "z.wav")  # renamed on the card between two runs
    again = stream(folder, out, graph)
    assert "resuming: 2 of 3 files already done" in again.output

    fresh = tmp_path / "fresh"  # one run over the renamed folder
    stream(folder, fresh, graph)
    got, want = tree(out), tree(fresh)
    assert sorted(got) == sorted(want)  # b's tables are gone, z's are there
    assert [k for k in got if got[k] != want[k]] == ["detections.jsonl"]  # its retraction, then z's rows
    assert "b.wav" not in names_in(out / "detections.csv")
    assert final_rows(out / "detections.jsonl") == final_rows(fresh / "detections.jsonl")
    with RunState(out, read_settings(out)) as state:
        assert sorted(r.name for r in state.records()) == ["a.wav", "c.wav", "z.wav"]
        assert len({r.sha256 for r in state.records()}) == 3
    assert "z.wav: the recording b.wav renamed; its earlier rows are retracted" in again.output
    assert "done: 0 file(s)" in stream(folder, out, graph).output  # a third run changes nothing
    assert tree(out) == got


def test_a_copy_is_not_a_rename(graph, tmp_path):
    """The same audio under a second name while the first is still there: both are the run's recordings."""
    folder = tmp_path / "card"
    folder.mkdir()
    sf.write(folder / "a.wav", tone_track([(0.3, 1.4, DEFAULT_FREQS[0])], 2.0, 16_000, seed=1), 16_000)
    out = tmp_path / "out"
    stream(folder, out, graph)
    shutil.copyfile(folder / "a.wav", folder / "copy.wav")
    stream(folder, out, graph)
    table = names_in(out / "detections.csv")
    assert table.count("a.wav") == table.count("copy.wav") > 0
