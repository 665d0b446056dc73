"""`vocalprobe merge` (runtime/field/merge.py): the folders of `stream --shard i/n` runs joined are, byte for byte,
the folder of one run (tables, combined tables, JSONL in the one run's order, errors.csv, and the journal's records);
folders that are not the parts of one run are refused in one line."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, tone_track
from test_workers import make_recordings, tree
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.field.run_state import RunState, read_settings

runner = CliRunner()


def common(recordings: Path, graph: Path) -> list[str]:
    return [str(recordings), "-m", str(graph), "--window", "0.5", "--hop", "0.3", "--min-conf", "0.6", "--merge",
            "--batch", "3", "--format", "raven,csv,jsonl,birdnet-csv"]


def journal(out: Path) -> list:
    with RunState(out, read_settings(out)) as state:
        return state.records()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = make_recordings(tmp_path_factory.mktemp("rec"))
    # "night1-extra" sorts before "night1/..." as a string, after it by path parts (as a folder is listed)
    (folder / "night1-extra.wav").write_bytes((folder / "night1" / "20210501_040000.wav").read_bytes())
    return folder


@pytest.fixture(scope="module")
def runs(recordings, graph, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    one = runner.invoke(app, ["stream", *common(recordings, graph), "-o", str(root / "one")])
    assert one.exit_code == 2, one.output  # a file could not be read
    for i in range(3):
        result = runner.invoke(app, ["stream", *common(recordings, graph), "-o", str(root / f"s{i}"),
                                     "--shard", f"{i}/3"])
        assert result.exit_code in (0, 2), result.output
    return root


def test_merged_shards_are_the_one_run_byte_for_byte(runs):
    shards = [runs / f"s{i}" for i in range(3)]
    assert all(journal(s) for s in shards)  # every shard holds files: the merge really joins three parts
    result = runner.invoke(app, ["merge", str(runs / "merged"), *map(str, shards)])
    assert result.exit_code == 0, result.output
    assert "merged 3 shard(s)" in result.output
    got, want = tree(runs / "merged"), tree(runs / "one")
    assert sorted(got) == sorted(want)
    for name in ("detections.jsonl", "errors.csv", "detections.csv", "detections.selection.table.txt",
                 "detections.birdnet.csv", "analysis_params.csv"):
        assert name in got
    assert [k for k in got if got[k] != want[k]] == []
    assert journal(runs / "merged") == journal(runs / "one")


def test_a_merged_folder_resumes_like_the_one_run(runs, recordings, graph):
    merged = runs / "resume"
    assert runner.invoke(app, ["merge", str(merged), *(str(runs / f"s{i}") for i in range(3))]).exit_code == 0
    again = runner.invoke(app, ["stream", *common(recordings, graph), "-o", str(merged)])
    assert "resuming: 6 of 6 files already done" in again.output
    assert tree(merged) == tree(runs / "one")


def test_folders_that_are_not_one_run_are_refused(runs, recordings, graph, tmp_path):
    s0, s1 = str(runs / "s0"), str(runs / "s1")
    twice = runner.invoke(app, ["merge", str(tmp_path / "a"), s0, s0])
    assert twice.exit_code == 1 and "error: a shard folder is given twice" in twice.output
    whole = runner.invoke(app, ["merge", str(tmp_path / "a"), s0, str(runs / "one")])
    assert whole.exit_code == 1 and "not the output folder of a `stream --shard i/n` run" in whole.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    busy = runner.invoke(app, ["merge", str(tmp_path / "full"), s0])
    assert busy.exit_code == 1 and "is not empty; merge into a new folder" in busy.output
    other = tmp_path / "other"
    result = runner.invoke(app, ["stream", *common(recordings, graph)[:-2], "--format", "raven", "-o", str(other),
                                 "--shard", "2/3", "--hop", "0.25"])
    assert result.exit_code in (0, 2), result.output
    mixed = runner.invoke(app, ["merge", str(tmp_path / "b"), s0, s1, str(other)])
    assert mixed.exit_code == 1 and "made with other settings (changed: hop)" in mixed.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "a").exists()
    missing = runner.invoke(app, ["merge", str(tmp_path / "c"), str(tmp_path)])
    assert missing.exit_code == 1 and "no .vocalprobe-journal.sqlite" in missing.output


def test_files_given_out_of_order_merge_in_the_order_given(recordings, graph, tmp_path):
    """One run writes the JSONL in the order of its inputs; each shard records every file's place in that list."""
    source = (recordings / "night1" / "20210501_040000.wav").read_bytes()
    names = ["top.wav", "c.wav", "b.wav"]  # one per shard of 3, given in reverse of the sorted order
    for name in names:
        (tmp_path / name).write_bytes(source)
    inputs = [str(tmp_path / n) for n in names]
    options = ["-m", str(graph), "--window", "0.5", "--min-conf", "0.6", "--format", "csv,jsonl"]
    assert runner.invoke(app, ["stream", *inputs, *options, "-o", str(tmp_path / "one")]).exit_code == 0
    for i in range(3):
        result = runner.invoke(app, ["stream", *inputs, *options, "-o", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"])
        assert result.exit_code == 0 and "shard" in result.output and ": 1 of 3 files" in result.output
    assert runner.invoke(app, ["merge", str(tmp_path / "m"), *(str(tmp_path / f"s{i}") for i in (2, 0, 1))]
                         ).exit_code == 0
    jsonl = (tmp_path / "m" / "detections.jsonl").read_text().splitlines()
    assert [line.split('"')[3] for line in jsonl][::len(jsonl) // 3] == names  # the order given, not sorted
    assert tree(tmp_path / "m") == tree(tmp_path / "one")


def test_merge_refuses_a_missing_or_a_foreign_shard_before_writing(runs, recordings, graph, tmp_path):
    """Issue 24: shard 1 of 3 left out, and a shard of a run over another input list (same settings), each refused
    in one line naming it, before OUT is made; a shard's folder takes no shard of another run."""
    out = tmp_path / "merged"
    s0, s1, s2 = (str(runs / f"s{i}") for i in range(3))
    missing = runner.invoke(app, ["merge", str(out), s0, s2])
    assert missing.exit_code == 1 and "shard(s) 1/3 of the split are missing" in missing.output, missing.output
    assert not out.exists()
    other = tmp_path / "other"  # night1 alone: other inputs, the same settings and options
    result = runner.invoke(app, ["stream", *common(recordings / "night1", graph),
                                 "-o", str(other), "--shard", "1/3"])
    assert result.exit_code in (0, 2), result.output
    foreign = runner.invoke(app, ["merge", str(out), s0, str(other), s2])
    assert foreign.exit_code == 1 and "shards of runs over different inputs" in foreign.output, foreign.output
    assert not out.exists()
    again = runner.invoke(app, ["stream", *common(recordings, graph), "-o", str(other), "--shard", "1/3"])
    assert again.exit_code == 1 and "of a run over other inputs" in again.output, again.output
    whole = runner.invoke(app, ["stream", *common(recordings, graph), "-o", s1])
    assert whole.exit_code == 1 and "holds the outputs of shard 1/3" in whole.output, whole.output


def _journalled(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / '.vocalprobe-journal.sqlite'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_merge_refuses_a_shard_killed_and_not_run_again(graph, tmp_path):
    """A shard whose `stream --shard` was killed (SIGKILL, a real process) after its first file is refused by name
    before OUT is made (finished shards merge: the tests above)."""
    folder = tmp_path / "card"
    folder.mkdir()
    sf.write(folder / "0000.wav", tone_track([(0.2, 0.8, DEFAULT_FREQS[0])], 1.0, 16_000, seed=0), 16_000)
    noise = np.random.default_rng(0).normal(0, 0.1, 600 * 16_000).astype(np.float32)
    for i in range(1, 6):  # long enough that the run is still busy when it is killed
        sf.write(folder / f"{i:04d}.wav", noise, 16_000)
    shard = tmp_path / "s0"
    command = [sys.executable, "-m", "vocalprobe", "stream", str(folder), "-m", str(graph), "--window", "0.5",
               "--hop", "0.05", "--format", "csv,jsonl", "-o", str(shard), "--shard", "0/1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this vocalprobe
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and _journalled(shard) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = _journalled(shard)
    assert 1 <= done < 6
    out = tmp_path / "merged"
    cut = runner.invoke(app, ["merge", str(out), str(shard)])
    assert cut.exit_code == 1 and f"shard 0/1 is unfinished ({done} of its 6 file(s)" in cut.output, cut.output
    assert not out.exists()
