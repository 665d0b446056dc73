"""--workers N (runtime/engine/pool.py): the same bytes as one process, failing files skipped, Ctrl-C stops cleanly
and the run resumes, workers that cannot load the model fail in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, tone_track
from test_validate import manifest as labelled_manifest  # noqa: F401  (a fixture)

from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.field.run_state import RunState
from vocalprobe.runtime.engine.sources import FileSource, collect_files
from vocalprobe.runtime.field.stream import (
    DetectConfig,
    output_options,
    run_settings,
    run_sources,
)
from vocalprobe.runtime.engine.batches import window_batches, window_probabilities
from vocalprobe.runtime.engine.pool import WorkerError, WorkerPool
from vocalprobe.runtime.engine.scale import ModelSpec, Scale
from vocalprobe.runtime.engine.windows import WindowPlan

FORMATS = ("raven", "csv", "jsonl")
INTERNAL = (".vocalprobe-journal.sqlite", ".vocalprobe.lock")


def make_recordings(root: Path) -> Path:
    """Several rates (one needs no resampling), a FLAC, a long file, and a broken one."""
    folder = root / "card"
    specs = [("night1/20210501_040000.wav", 22_050, 6.0), ("night1/20210502_040000.wav", 16_000, 7.3),
             ("night2/REC3.FLAC", 48_000, 5.1), ("night2/20210504_040000.wav", 44_100, 31.0)]
    for i, (name, rate, seconds) in enumerate(specs):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        events = [(0.3 + k * 2.1 + 0.1 * i, 1.4 + k * 2.1, DEFAULT_FREQS[(i + k) % 3])
                  for k in range(int(seconds // 2.1))]
        sf.write(path, tone_track(events, seconds, rate, seed=i), rate)
    (folder / "night1" / "broken.WAV").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return folder


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(INTERNAL)}


def config_of() -> DetectConfig:
    return DetectConfig(WindowPlan.from_seconds(0.5, 0.3, 16_000), batch=3, min_conf=0.6, merge=True)


def run(folder: Path, out: Path, graph: Path, workers: int | None):
    model = OnnxModel(graph, threads=1)
    config = config_of()
    with Outputs(out, FORMATS, 8000) as outputs, RunState(out, run_settings(model, config),
                                                         output_options(config, FORMATS)) as state:
        todo = list(state.todo(collect_files([folder], block_size=5_000)))
        if workers is None:
            return run_sources(todo, model, config, outputs, state)
        return run_sources(todo, model, config, outputs, state, spec=ModelSpec((str(graph),), threads=1),
                           scale=Scale(workers=workers))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    return make_recordings(tmp_path_factory.mktemp("rec"))


@pytest.fixture(scope="module")
def one_process(recordings, graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    summary = run(recordings, out, graph, None)
    return out, summary


def test_two_workers_write_the_same_bytes_as_one_process(recordings, graph, one_process, tmp_path):
    reference, ref_summary = one_process
    summary = run(recordings, tmp_path / "out", graph, 2)
    assert [name for name, _ in summary.failed] == ["night1/broken.WAV"]  # reported and skipped
    assert summary.done == ref_summary.done and summary.detections == ref_summary.detections > 0
    assert summary.audio_seconds == ref_summary.audio_seconds
    got, want = tree(tmp_path / "out"), tree(reference)
    assert sorted(got) == sorted(want) and "errors.csv" in got and "detections.jsonl" in got
    assert [k for k in got if got[k] != want[k]] == []


def test_window_batches_are_the_batches_of_one_process(recordings, graph):
    model = OnnxModel(graph, threads=1)
    for policy in ("pad", "shorter", "drop"):
        plan = WindowPlan.from_seconds(0.5, 0.3, 16_000, policy)
        source = FileSource(recordings / "night2" / "REC3.FLAC", "x", 7_000)
        batched = [(w, p) for windows, inputs in window_batches(source.blocks(16_000), plan, 4)
                   for w, p in zip(windows, model.predict(inputs))]
        local = list(window_probabilities(source.blocks(16_000), model, plan, batch=4))
        assert [w for w, _ in batched] == [w for w, _ in local]
        np.testing.assert_array_equal(np.stack([p for _, p in batched]), np.stack([p for _, p in local]))


def test_a_worker_that_cannot_load_the_model_is_one_error(graph):
    """No GPU here: asking the workers for CUDA fails in one line naming the fix (the CPU fallback is the default)."""
    with pytest.raises(WorkerError, match="could not load the model: --provider cuda"):
        WorkerPool(ModelSpec((str(graph),), provider="cuda"), 1)
    with WorkerPool(ModelSpec((str(graph),), provider="auto", threads=1), 1) as pool:
        assert pool.providers == ["CPUExecutionProvider"]  # what the workers really use
    with pytest.raises(WorkerError, match="--workers must be >= 1"):
        WorkerPool(ModelSpec((str(graph),)), 0)


CTRL_C_SCRIPT = textwrap.dedent("""
    import sys
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.run_state import RunState
    from vocalprobe.runtime.engine.sources import collect_files
    from vocalprobe.runtime.field.outputs import Outputs
    from vocalprobe.runtime.field.stream import DetectConfig, output_options, run_settings, run_sources
    from vocalprobe.runtime.engine.scale import ModelSpec, Scale
    from vocalprobe.runtime.engine.windows import WindowPlan

    def main(graph, folder, out):
        model = OnnxModel(graph, threads=1)
        config = DetectConfig(WindowPlan.from_seconds(0.5, 0.3, 16000), batch=3, min_conf=0.6, merge=True)
        formats = ("raven", "csv", "jsonl")
        with Outputs(out, formats, 8000) as outputs, RunState(out, run_settings(model, config),
                                                             output_options(config, formats)) as state:
            todo = list(state.todo(collect_files([folder], block_size=5000)))
            run_sources(todo, model, config, outputs, state, scale=Scale(workers=2),
                        spec=ModelSpec((graph,), threads=1))

    if __name__ == "__main__":  # spawned workers import this file again
        main(*sys.argv[1:4])
""")


def test_ctrl_c_stops_workers_cleanly_and_the_run_resumes(graph, one_process, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):  # enough work that Ctrl-C lands mid-run
        sf.write(folder / f"2021{i:04d}_040000.wav", tone_track([(0.5, 1.5, DEFAULT_FREQS[i % 3])], 20.0, 22_050,
                                                                seed=i), 22_050)
    script, out = tmp_path / "run.py", tmp_path / "out"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(graph), str(folder), str(out)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        children = _children(proc.pid)
        if len(children) >= 3 and _done(out) >= 2:  # two workers and multiprocessing's resource tracker
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr
    deadline = time.monotonic() + 15  # multiprocessing's resource tracker exits once it sees its pipe close
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    for pid in children:
        assert not _alive(pid), f"process {pid} started by the run outlived it"
    assert not list(out.rglob("*.tmp"))
    done_before = _done(out)
    assert 2 <= done_before < 40

    model = OnnxModel(graph, threads=1)
    config = config_of()
    with Outputs(out, FORMATS, 8000) as outputs, RunState(out, run_settings(model, config),
                                                         output_options(config, FORMATS)) as state:
        todo = list(state.todo(collect_files([folder], block_size=5_000)))
        assert len(todo) == 40 - done_before
        run_sources(todo, model, config, outputs, state, spec=ModelSpec((str(graph),), threads=1),
                    scale=Scale(workers=2))
    clean = tmp_path / "clean"
    summary = run(folder, clean, graph, None)
    assert len(summary.done) == 40
    got, want = tree(out), tree(clean)
    assert sorted(got) == sorted(want)
    assert [k for k in got if k != "detections.jsonl" and got[k] != want[k]] == []
    assert sorted(got["detections.jsonl"].splitlines()) == sorted(want["detections.jsonl"].splitlines())


def _done(out: Path) -> int:
    import sqlite3

    path = out / ".vocalprobe-journal.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM files WHERE status = 'done'").fetchone()[0]
    except sqlite3.DatabaseError:
        return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_cli_workers_and_shards(recordings, graph, tmp_path):
    """`stream --workers 2` writes the bytes of `stream`; `--shard i/n` runs cover every file once, their tables
    are the one run's, and a bad shard or --workers with stdin is one line."""
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    runner = CliRunner()
    common = [str(recordings), "-m", str(graph), "--window", "0.5", "--hop", "0.3", "--min-conf", "0.6", "--merge",
              "--batch", "3"]
    one = runner.invoke(app, ["stream", *common, "-o", str(tmp_path / "one")])
    assert one.exit_code == 2, one.output  # exit 2: a file could not be read
    two = runner.invoke(app, ["stream", *common, "-o", str(tmp_path / "two"), "--workers", "2", "--threads", "1"])
    assert two.exit_code == 2, two.output
    assert "2 workers, providers in use: CPUExecutionProvider" in two.output
    assert [k for k, v in tree(tmp_path / "two").items() if tree(tmp_path / "one").get(k) != v] == []
    shards = {}
    for i in range(3):
        result = runner.invoke(app, ["stream", *common, "-o", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"])
        assert result.exit_code in (0, 2), result.output
        assert f"shard {i}/3:" in result.output
        shards.update({k: v for k, v in tree(tmp_path / f"s{i}").items() if "/" in k})  # the per-file tables
    want = {k: v for k, v in tree(tmp_path / "one").items() if "/" in k}
    assert shards == want
    bad = runner.invoke(app, ["stream", *common, "-o", str(tmp_path / "bad"), "--shard", "3/3"])
    assert bad.exit_code == 1 and "error: --shard 3/3" in bad.output
    stdin = runner.invoke(app, ["stream", "-", "-m", str(graph), "-o", str(tmp_path / "stdin"), "--sample-rate",
                                "16000", "--workers", "2"], input=b"")
    assert stdin.exit_code == 1 and "stdin and --watch run in one process" in stdin.output


def test_validate_with_workers_writes_the_report_of_one_process(tmp_path, labelled_manifest):  # noqa: F811
    """`validate --workers 2` (whole clips submitted ahead, answers read in manifest order): the same report.json as
    one process, with and without a --reference graph (a pool each), unreadable clips listed the same."""
    from runtime_graphs import DEFAULT_FREQS, build_band_graph
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    runner = CliRunner()
    graph = build_band_graph(tmp_path / "m.onnx")
    swapped = build_band_graph(tmp_path / "swapped.onnx", freqs=(DEFAULT_FREQS[1], DEFAULT_FREQS[0], DEFAULT_FREQS[2]))
    for extra in ([], ["--reference", str(swapped)]):
        reports = []
        for workers in ("1", "2"):
            out = tmp_path / f"r{workers}{len(extra)}"
            result = runner.invoke(app, ["validate", str(graph), str(labelled_manifest), "--resamples", "50",
                                         "--threads", "1", "--workers", workers, "--out", str(out), *extra])
            assert result.exit_code == 1 and "differs from the" in result.output  # the fixture's UAR is off
            reports.append((out / "report.json").read_bytes())
        assert "2 workers x 1 thread(s), providers in use: CPUExecutionProvider" in result.output
        assert reports[0] == reports[1] and b"broken.wav" in reports[0]


def archive_contents(db: Path) -> list:
    from vocalprobe.runtime.archive.store import ArchiveDB

    with ArchiveDB.open_reader(db) as archive:
        found = []
        for rec_id, rec in sorted(archive.recordings().items()):
            windows = archive.recording_windows(rec_id)
            found.append((rec.filename, rec.deployment, [(w.start_s, w.end_s) for w in windows],
                          archive.vectors([w.id for w in windows]).tobytes()))
        return found


def test_embed_with_workers_writes_the_archive_of_one_process(recordings, graph, tmp_path):
    """The ``embed`` operation in the workers: the same recordings, windows and vectors as ``embed_sources`` alone,
    the unreadable file listed the same; a second run skips every recording."""
    from vocalprobe.runtime.archive.embed import embed_sources
    from vocalprobe.runtime.archive.store import ArchiveDB

    model = OnnxModel(graph, threads=1)
    plan = WindowPlan.from_seconds(0.5, 0.3, 16_000)
    sources = collect_files([recordings], block_size=5_000)
    with ArchiveDB.open_writer(tmp_path / "one") as archive:
        alone = embed_sources(sources, model, plan, archive, batch=3)
    spec = ModelSpec((str(graph),), threads=1)
    with ArchiveDB.open_writer(tmp_path / "two") as archive:
        two = embed_sources(sources, model, plan, archive, spec=spec, scale=Scale(workers=2), batch=3)
    assert two.done == alone.done and len(two.done) == 4 and two.windows == alone.windows
    assert two.failed == alone.failed and [n for n, _ in two.failed] == ["night1/broken.WAV"]
    assert archive_contents(tmp_path / "two") == archive_contents(tmp_path / "one")
    with ArchiveDB.open_writer(tmp_path / "two") as archive:
        again = embed_sources(sources, model, plan, archive, spec=spec, scale=Scale(workers=2), batch=3)
    assert again.done == [] and len(again.skipped) == 4
    assert archive_contents(tmp_path / "two") == archive_contents(tmp_path / "one")


def test_cli_embed_with_workers(recordings, graph, tmp_path):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    runner = CliRunner()
    for workers in ("1", "2"):
        result = runner.invoke(app, ["embed", str(recordings), "-m", str(graph), "--db", str(tmp_path / workers),
                                     "--hop", "0.3", "--batch", "3", "--threads", "1", "--workers", workers])
        assert result.exit_code == 2 and "could not embed night1/broken.WAV" in result.output  # listed, skipped
    assert archive_contents(tmp_path / "2") == archive_contents(tmp_path / "1")


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from vocalprobe.runtime.engine.pool import WorkerPool
    from vocalprobe.runtime.engine.scale import ModelSpec

    if __name__ == "__main__":  # spawned workers import this file again
        pool = WorkerPool(ModelSpec((sys.argv[1],), threads=1), 2)
        for _ in range(40):  # answers nobody reads fill the results pipe
            pool.submit(np.zeros((64, 8000), np.float32), "embed")
        print("submitted", flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_when_their_parent_is_killed(graph, tmp_path, sig):
    """Killed mid-run with answers unread, the main process leaves no worker behind holding the caller's stdout."""
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(graph)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "submitted"
    children = _children(proc.pid)
    assert len(children) >= 2
    time.sleep(2)  # the workers answer into the full pipe
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    assert [pid for pid in children if _alive(pid)] == []
    assert proc.stdout.read() == ""  # the pipe closes: no worker holds it open (a `| tee` returns)


@pytest.mark.parametrize("workers", [None, 2])
def test_a_file_name_that_is_not_utf8_is_analysed(graph, tmp_path, workers):
    """A latin-1 name from an SD card (os.fsdecode keeps its bytes as surrogates) used to stop the run with
    UnicodeEncodeError before anything was analysed; its tables and journal show it as ``ls -b`` does."""
    folder = tmp_path / "card"
    folder.mkdir()
    sf.write(folder / "good.wav", tone_track([(0.3, 1.7, DEFAULT_FREQS[0])], 3.0, 16_000, seed=1), 16_000)
    sf.write(os.fsencode(folder) + b"/caf\xe9.wav", tone_track([(0.3, 1.7, DEFAULT_FREQS[1])], 3.0, 16_000, seed=2),
             16_000)
    out = tmp_path / "out"
    summary = run(folder, out, graph, workers)
    assert len(summary.done) == 2 and not summary.failed
    table = (out / "detections.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.wav," in table and "good.wav," in table
    assert (out / "caf\\xe9.selection.table.txt").read_text(encoding="utf-8").count("caf\\xe9.wav") >= 1
    assert _done(out) == 2
