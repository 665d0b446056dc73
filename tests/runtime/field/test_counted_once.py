"""Each recording counted once (issue 24). A finished recording renamed before a run is resumed is recognised by its
audio digest (the journal keeps each file's sha256): the new name is analysed and the old name's rows are retracted
from the JSONL, its tables removed and its journal record deleted in the same transaction, so the run's tables count
it once, as a fresh run over the renamed folder does. A watched file analysed twice in one run, once truncated, is
counted by its latest outcome only (done or failed, never both)."""

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


def _watch(watched: Path, out: Path, graph: Path, on_sleep):
    """A real watcher over ``watched`` on a clock that ``sleep`` moves (``on_sleep(now)`` changes the folder)."""
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.sources import FolderWatcher
    from vocalprobe.runtime.engine.windows import WindowPlan
    from vocalprobe.runtime.field.outputs import Outputs
    from vocalprobe.runtime.field.run_state import DONE, FAILED
    from vocalprobe.runtime.field.stream import DetectConfig, output_options, run_settings, run_sources

    model = OnnxModel(graph)
    config = DetectConfig(WindowPlan.from_seconds(0.5, None, 16_000), min_conf=0.6)
    formats = ("csv", "jsonl")
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        on_sleep(now[0])

    watcher = FolderWatcher(watched, settle_s=1.0, abandon_s=4.0, clock=lambda: now[0])
    with Outputs(out, formats, 8000) as outputs, \
            RunState(out, run_settings(model, config), output_options(config, formats)) as state:
        sources = state.todo(watcher.source(p) for p in watcher.follow(poll_s=1.0, idle_exit_s=12.0, sleep=sleep))
        summary = run_sources(sources, model, config, outputs, state)
        return summary, state.count(DONE), state.count(FAILED)


def _recordings(tmp_path: Path) -> tuple[bytes, bytes]:
    """A 4 s WAV, and its first 40,000 bytes: a header that promises 4 s, 1.2 s of audio (a recorder that died)."""
    sf.write(tmp_path / "full.wav", tone_track([(0.3, 1.4, DEFAULT_FREQS[1])], 4.0, 16_000, seed=2), 16_000,
             subtype="PCM_16")
    full = (tmp_path / "full.wav").read_bytes()
    return full, full[:40_000]


def test_a_truncated_wav_in_a_watched_folder_that_is_then_finished_counts_done_only(graph, tmp_path):
    """Issue 24: a copy that stalls past the watcher's patience is handed over truncated (failed), then finishes
    and is analysed again (done): the run's summary counts it done, not also failed."""
    full, cut = _recordings(tmp_path)
    watched, out = tmp_path / "card", tmp_path / "out"
    watched.mkdir()
    (watched / "x.wav").write_bytes(cut)

    def finish(now):
        if now == 8.0:
            (watched / "x.wav").write_bytes(full)

    summary, done, failed = _watch(watched, out, graph, finish)
    assert (done, failed) == (1, 0)
    assert summary.done == ["x.wav"] and summary.failed == [], (summary.done, summary.failed)
    assert summary.failed_all == [] and summary.exit_code == 0
    assert not (out / "errors.csv").exists()


def test_a_watched_wav_truncated_after_it_was_done_counts_failed_only(graph, tmp_path):
    """Issue 24: a watched file analysed (done), then replaced by a truncated version (failed: its rows retracted,
    its tables removed, errors.csv): the run's summary counts it failed, not also done."""
    full, cut = _recordings(tmp_path)
    watched, out = tmp_path / "card", tmp_path / "out"
    watched.mkdir()
    (watched / "x.wav").write_bytes(full)

    def cut_short(now):
        if now == 5.0:
            (watched / "x.wav").write_bytes(cut)

    summary, done, failed = _watch(watched, out, graph, cut_short)
    assert (done, failed) == (0, 1)
    assert summary.done == [] and [n for n, _ in summary.failed] == ["x.wav"], (summary.done, summary.failed)
    assert "truncated" in summary.failed[0][1] and summary.detections == 0
    assert [r["file"] for r in csv.DictReader((out / "errors.csv").open())] == ["x.wav"]
    assert not (out / "x.detections.csv").exists()
    assert names_in(out / "detections.csv") == []
