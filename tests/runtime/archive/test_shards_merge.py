"""`embed --shard i/n` then `vocalprobe merge --db`: the shards' archives merged are, row for row, the archive one
`embed` over all the inputs writes (ids, offsets, metadata, the float16 vectors and the index's search results),
and archives that are not the shards of one run are refused."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from runtime_graphs import build_band_graph

from vocalprobe.runtime.archive.search import nearest
from vocalprobe.runtime.archive.store import ArchiveDB
from vocalprobe.runtime.core.shards import shard_of
from vocalprobe.runtime.core.out_lock import OutputLock

#: Tables of an archive, each in an order that does not depend on how it was written.
TABLES = {"deployments": "id", "recordings": "id", "windows": "id", "vocalprobe_recordings": "recording_id",
          "vocalprobe_positions": "recording_id", "annotations": "id", "sqlite_sequence": "name",
          "hoplite_metadata": "key"}


def rows(db: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(f"file:{db / 'hoplite.sqlite'}?mode=ro", uri=True)
    try:
        return {table: con.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
                for table, key in TABLES.items()}
    finally:
        con.close()


def assert_same_archive(got: Path, want: Path) -> None:
    assert rows(got) == rows(want)
    rng = np.random.default_rng(0)
    with ArchiveDB.open_reader(got) as a, ArchiveDB.open_reader(want) as b:
        ids = [w.id for w in b.windows()]
        assert a.index.size == b.index.size == len(ids)
        np.testing.assert_array_equal(a.vectors(ids), b.vectors(ids))
        queries = [*b.vectors(ids[::7]), *rng.standard_normal((4, b.index.ndim)).astype(np.float32)]
        for query in queries:
            for exact in (False, True):
                assert nearest(a, query, 10, exact=exact) == nearest(b, query, 10, exact=exact)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tone_folder):
    """Two input folders, given out of sorted order, each file named the same in both, plus one file's audio copied
    under another name (one run skips the copy)."""
    root = tmp_path_factory.mktemp("inputs")
    late = tone_folder(root / "zeta", n_files=5, seconds=2.0)
    early = tone_folder(root / "alpha", n_files=4, seconds=3.0)  # other audio, and other names:
    for folder in ("REC01", "REC02"):
        (early / folder).rename(early / folder.replace("REC", "SITE"))
    shutil.copy(late / "REC01" / "20210501_040000.WAV", late / "REC02" / "copy.wav")
    return [late, early]


@pytest.fixture(scope="module")
def embedded(inputs, graph, tmp_path_factory):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    out = tmp_path_factory.mktemp("archives")
    base = ["embed", *map(str, inputs), "-m", str(graph), "--hop", "0.25", "--batch", "3"]
    one = CliRunner().invoke(app, [*base, "--db", str(out / "one")])
    assert one.exit_code == 0, one.output
    for i in range(3):
        result = CliRunner().invoke(app, [*base, "--db", str(out / f"s{i}"), "--shard", f"{i}/3"])
        assert result.exit_code == 0, result.output
        assert f"shard {i}/3: " in result.output
    return out


def test_inputs_fall_in_every_shard(inputs):
    names = [p.relative_to(root).as_posix() for root in inputs for p in root.rglob("*.*")]
    assert {shard_of(n, 3) for n in names} == {0, 1, 2}


def test_merged_shards_are_the_one_run_row_for_row(embedded, run_cli):
    shards = [embedded / f"s{i}" for i in range(3)]
    assert all(rows(s)["vocalprobe_recordings"] for s in shards)  # the merge really joins three parts
    assert not rows(embedded / "one")["vocalprobe_positions"]
    result = run_cli(["merge", "--db", embedded / "merged", *shards])
    assert result.exit_code == 0, result.output
    assert "merged 3 archive(s)" in result.output
    assert_same_archive(embedded / "merged", embedded / "one")
    with ArchiveDB.open_reader(embedded / "merged") as merged:
        names = {r.filename for r in merged.recordings().values()}
    assert len(names) == 9 and "REC02/copy.wav" not in names  # the copy is skipped, as one run skips it


def test_annotations_of_a_shard_are_kept_on_the_merged_recording(embedded, run_cli, tmp_path):
    shards = [tmp_path / f"s{i}" for i in range(3)]
    for i, s in enumerate(shards):
        shutil.copytree(embedded / f"s{i}", s)
    with ArchiveDB.open_writer(shards[1]) as archive:
        window = archive.windows()[2]
        name = archive.recordings()[window.recording_id].filename
        archive.add_annotations([(window.recording_id, window.start_s, window.end_s, "low", 1)], "review")
    assert run_cli(["merge", "--db", tmp_path / "merged", *shards]).exit_code == 0
    with ArchiveDB.open_reader(tmp_path / "merged") as merged:
        (window_id, label, kind), = merged.annotations()
        (moved,) = merged.windows([window_id])
        assert (label, kind) == ("low", 1) and merged.recordings()[moved.recording_id].filename == name
        assert (moved.start_s, moved.end_s) == (window.start_s, window.end_s)


def test_merge_refuses_what_is_not_one_runs_shards(embedded, run_cli, tmp_path, graph, tone_folder):
    shards = [embedded / f"s{i}" for i in range(3)]

    def refused(args, message):
        result = run_cli(["merge", "--db", tmp_path / "out", *args])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output
        assert not (tmp_path / "out" / "hoplite.sqlite").exists()

    refused([embedded / "one", shards[1]], "not the archive of an `embed --shard i/n` run")
    refused([shards[0], shards[0]], "given twice")
    twin = tmp_path / "twin"
    shutil.copytree(shards[0], twin)
    refused([shards[0], twin], "both hold shard 0/3")
    con = sqlite3.connect(twin / "hoplite.sqlite")
    con.execute("UPDATE hoplite_metadata SET value = '\"1/3\"' WHERE key = 'vocalprobe_shard'")
    con.commit()
    con.close()
    refused([shards[0], twin, shards[2]], "is in both")  # all three parts, one recording in two
    other = build_band_graph(tmp_path / "other.onnx", sample_duration=0.25)
    audio = tone_folder(tmp_path / "audio", n_files=1, seconds=2.0)
    assert run_cli(["embed", audio, "-m", other, "--db", tmp_path / "foreign", "--shard", "1/3"]).exit_code == 0
    refused([shards[0], tmp_path / "foreign"], "another graph")
    assert run_cli(["embed", audio, "-m", graph, "--db", tmp_path / "split2", "--shard", "1/2",
                    "--hop", "0.25"]).exit_code == 0
    refused([shards[0], tmp_path / "split2"], "different splits")
    with OutputLock(shards[2]):  # a shard still being written
        refused(shards, "in use by another vocalprobe run")
    result = run_cli(["merge", tmp_path / "out", *shards])
    assert result.exit_code == 1 and "merge --db OUT_DB SHARD_DB" in result.output


def test_a_shards_archive_takes_no_other_shard(embedded, run_cli, inputs, graph, tmp_path):
    db = tmp_path / "db"
    base = ["embed", inputs[1], "-m", graph, "--db", db]
    assert run_cli([*base, "--shard", "0/3"]).exit_code == 0
    for extra, held in ((["--shard", "1/3"], "holds shard 0/3"), ([], "holds shard 0/3")):
        result = run_cli([*base, *extra])
        assert result.exit_code == 1 and held in result.output, result.output
    one = run_cli(["embed", inputs[1], "-m", graph, "--db", tmp_path / "one"])
    assert one.exit_code == 0
    result = run_cli(["embed", inputs[1], "-m", graph, "--db", tmp_path / "one", "--shard", "0/3"])
    assert result.exit_code == 1 and "holds a run over all the inputs" in result.output


def test_a_shard_with_workers_is_the_shard_of_one_process(embedded, inputs, graph, run_cli, tmp_path):
    result = run_cli(["embed", *inputs, "-m", graph, "--hop", "0.25", "--batch", "3", "--db", tmp_path / "s1",
                      "--shard", "1/3", "--workers", "2", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert_same_archive(tmp_path / "s1", embedded / "s1")


def test_merge_refuses_a_missing_a_foreign_or_an_unfinished_shard_before_writing(embedded, inputs, graph, run_cli,
                                                                                 tmp_path):
    """Issue 24 B: shard 1 of 3 left out, a shard of a run over other inputs, a shard whose index is gone (a killed
    run): each refused in one line, and OUT is not made."""
    out = tmp_path / "merged"
    missing = run_cli(["merge", "--db", out, embedded / "s0", embedded / "s2"])
    assert missing.exit_code == 1 and "shard(s) 1/3 of the split are missing" in missing.output, missing.output
    assert not out.exists()
    other = run_cli(["embed", inputs[0], "-m", graph, "--hop", "0.25", "--batch", "3", "--db", tmp_path / "o1",
                     "--shard", "1/3"])
    assert other.exit_code == 0, other.output
    foreign = run_cli(["merge", "--db", out, embedded / "s0", tmp_path / "o1", embedded / "s2"])
    assert foreign.exit_code == 1 and "runs over different inputs" in foreign.output, foreign.output
    assert not out.exists()
    cut = tmp_path / "s1"
    shutil.copytree(embedded / "s1", cut)
    (cut / "usearch.index").unlink()
    unfinished = run_cli(["merge", "--db", out, embedded / "s0", cut, embedded / "s2"])
    assert unfinished.exit_code == 1 and "usearch.index is missing" in unfinished.output, unfinished.output
    assert not out.exists()


def test_merge_refuses_a_shard_stopped_by_ctrl_c_and_not_run_again(graph, tone_folder, run_cli, tmp_path):
    """Issue 24: Ctrl-C leaves a shard's archive consistent (its index saved on exit) but short of recordings; a
    merge used to take it (exit 0, fewer recordings). Now it is refused by name before OUT_DB is made, and merges
    once the same `embed --shard` has run again (a real process, SIGINT)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    audio = tone_folder(tmp_path / "audio", n_files=4, seconds=40.0)
    shard = tmp_path / "s0"
    args = [sys.executable, "-m", "vocalprobe", "embed", str(audio), "-m", str(graph), "--db", str(shard),
            "--window", "0.05", "--batch", "1", "--shard", "0/1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this vocalprobe
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def committed() -> int:
        try:
            with sqlite3.connect(f"file:{shard / 'hoplite.sqlite'}?mode=ro", uri=True) as con:
                return con.execute("SELECT COUNT(*) FROM vocalprobe_recordings").fetchone()[0]
        except sqlite3.Error:
            return 0

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and committed() < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "embed finished before it could be interrupted; give it more audio"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    with ArchiveDB.open_reader(shard) as archive:  # consistent, and short
        assert 1 <= archive.count_recordings() < 4
    out = tmp_path / "merged"
    cut = run_cli(["merge", "--db", out, shard])
    assert cut.exit_code == 1 and "shard 0/1 is unfinished" in cut.output, cut.output
    assert not out.exists()
    assert subprocess.run(args, env=env, capture_output=True).returncode == 0
    merged = run_cli(["merge", "--db", out, shard])
    assert merged.exit_code == 0 and "4 recording(s)" in merged.output, merged.output
