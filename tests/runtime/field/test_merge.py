"""`vocalprobe merge` (runtime/field/merge.py): the folders of `stream --shard i/n` runs joined are, byte for byte,
the folder of one run (tables, combined tables, JSONL in the one run's order, errors.csv, and the journal's records);
folders that are not the parts of one run are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
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
    overlap = runner.invoke(app, ["merge", str(tmp_path / "a"), s0, str(runs / "one")])
    assert overlap.exit_code == 1 and "error:" in overlap.output and "is in both" in overlap.output
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
