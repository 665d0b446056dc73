"""The stream (runtime/field/stream.py) end to end: files, stdin and watch agree, resume, errors, flat memory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, build_band_graph, tone_track
from torch_blocked import run_cli_without_torch, run_python_without_torch
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.field.outputs import Outputs
from vocalprobe.runtime.field.run_state import DONE, RunState
from vocalprobe.runtime.engine.sources import FileSource, FolderWatcher, SourceError, collect_files
from vocalprobe.runtime.field.stream import (
    DetectConfig,
    output_options,
    run_settings,
    run_sources,
)
from vocalprobe.runtime.engine.batches import window_probabilities
from vocalprobe.runtime.engine.windows import WindowPlan, plan_windows

LOW, MID, HIGH = DEFAULT_FREQS
EVENTS = [(0.4, 2.1, LOW), (3.0, 4.6, MID), (6.0, 7.2, HIGH), (8.1, 8.9, LOW)]


runner = CliRunner()



@pytest.fixture(scope="module")
def pcm(tmp_path_factory):
    """The same 9.7 s of 44.1 kHz 16-bit audio as a WAV file and as raw PCM bytes."""
    root = tmp_path_factory.mktemp("pcm")
    samples = (tone_track(EVENTS, 9.7, 44_100, seed=3) * 32767).astype(np.int16)
    wav = root / "20210502_040000.WAV"
    sf.write(wav, samples, 44_100, subtype="PCM_16")
    return wav, samples.astype("<i2").tobytes()


def run_cli(args, **kwargs):
    result = runner.invoke(app, [str(a) for a in args], **kwargs)
    return result


def events_of(out: Path) -> list[tuple]:
    with open(out / "detections.csv", newline="") as handle:
        return [(r["start_s"], r["end_s"], r["label"], r["confidence"]) for r in csv.DictReader(handle)]


def live_rows(jsonl: Path) -> list[tuple]:
    """The rows a reader of the JSONL keeps: a ``{"retract": file}`` line withdraws that file's earlier rows."""
    rows = []
    for line in jsonl.read_text().splitlines():
        event = json.loads(line)
        if "retract" in event:
            rows = [r for r in rows if r[0] != event["retract"]]
        else:
            rows.append((event["file"], f"{event['start_s']:.3f}", event["label"]))
    return rows


def make_folder(root: Path, n: int = 4) -> Path:
    folder = root / "card"
    for i in range(n):
        sub = folder / ("night1" if i % 2 else "night2")
        sub.mkdir(parents=True, exist_ok=True)
        x = tone_track([(0.5 + i, 1.5 + i, DEFAULT_FREQS[i % 3])], 6.0, 22_050, seed=i)
        sf.write(sub / f"2021050{i + 1}_040000.wav" if i != 3 else sub / f"REC{i}.FLAC", x, 22_050)
    return folder


class _Interrupted(FileSource):
    """A source whose reading is interrupted half-way, as Ctrl-C or a kill would."""

    def blocks(self, target_rate):
        done = 0
        for block in super().blocks(target_rate):
            if done >= 5.3 * target_rate:  # of 6 s: after its tone (3.5-4.5 s), before its end
                raise KeyboardInterrupt
            done += len(block)
            yield block


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.sources import FileSource
    from vocalprobe.runtime.field.outputs import Outputs
    from vocalprobe.runtime.field.stream import DetectConfig, run_sources
    from vocalprobe.runtime.engine.windows import WindowPlan
    model = OnnxModel(sys.argv[1], threads=1)
    config = DetectConfig(WindowPlan.from_seconds(1.0, None, 16000), batch=8, min_conf=0.8, merge=True)
    def run(path, out):
        return run_sources([FileSource(path, path.split('/')[-1])], model, config, Outputs(out, ("csv",), 8000))
    run(sys.argv[2], sys.argv[4])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = run(sys.argv[3], sys.argv[5])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(before, after, summary.audio_seconds, summary.detections)
""")


def test_block_size_does_not_change_any_probability(graph, pcm):
    wav, _ = pcm
    model = OnnxModel(graph)
    plan = WindowPlan.from_seconds(0.5, 0.2, model.sample_rate)
    results = []
    for block_size in (997, 4_096, 65_536, 1_000_000):
        source = FileSource(wav, wav.name, block_size)
        results.append(list(window_probabilities(source.blocks(model.sample_rate), model, plan, batch=4)))
    reference = results[0]
    assert len(reference) == len(list(plan_windows(round(9.7 * 16_000), plan)))
    for other in results[1:]:
        assert [w for w, _ in other] == [w for w, _ in reference]
        np.testing.assert_array_equal(np.stack([p for _, p in other]), np.stack([p for _, p in reference]))


def test_batch_size_does_not_change_probabilities(graph, pcm):
    wav, _ = pcm
    model = OnnxModel(graph)
    plan = WindowPlan.from_seconds(0.5, None, model.sample_rate)
    one = np.stack([p for _, p in window_probabilities(FileSource(wav, "x").blocks(16_000), model, plan, batch=1)])
    many = np.stack([p for _, p in window_probabilities(FileSource(wav, "x").blocks(16_000), model, plan, batch=7)])
    np.testing.assert_allclose(one, many, atol=1e-6)


def test_file_stdin_and_watch_give_identical_detections(tmp_path, graph, pcm):
    wav, raw = pcm
    common = ["-m", graph, "--window", "0.5", "--merge", "--min-conf", "0.8", "--format", "csv,raven,jsonl"]
    r_file = run_cli(["stream", wav, "-o", tmp_path / "file", *common])
    assert r_file.exit_code == 0, r_file.output
    r_stdin = run_cli(["stream", "-", "-o", tmp_path / "stdin", "--sample-rate", "44100", *common],
                      input=raw)
    assert r_stdin.exit_code == 0, r_stdin.output
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / wav.name).write_bytes(wav.read_bytes())
    r_watch = run_cli(["stream", "--watch", watched, "--settle", "0", "--poll", "0.05", "--idle-exit", "0.3",
                       "-o", tmp_path / "watch", *common])
    assert r_watch.exit_code == 0, r_watch.output
    file_events = events_of(tmp_path / "file")
    assert {e[2] for e in file_events} == {"low", "mid", "high"}
    assert len(file_events) == 4  # the four tones, each merged into one event
    assert events_of(tmp_path / "stdin") == file_events
    assert events_of(tmp_path / "watch") == file_events
    # The recorder timestamp of the file name becomes clock times; stdin has none.
    rows = list(csv.DictReader(open(tmp_path / "file" / "detections.csv")))
    assert rows[0]["start_time"].startswith("2021-05-02T04:00:00")
    lines = (tmp_path / "file" / "detections.jsonl").read_text().splitlines()
    assert [(f"{json.loads(x)['start_s']:.3f}", json.loads(x)["label"]) for x in lines] == \
        [(e[0], e[2]) for e in file_events]


def test_watch_processes_each_file_once_across_restarts(tmp_path, graph, pcm):
    wav, _ = pcm
    watched = tmp_path / "card"
    watched.mkdir()
    (watched / "A.WAV").write_bytes(wav.read_bytes())
    args = ["stream", "--watch", watched, "--settle", "0", "--poll", "0.05", "--idle-exit", "0.3", "-m", graph,
            "--window", "0.5", "--min-conf", "0.8", "-o", tmp_path / "out"]
    first = run_cli(args)
    assert first.exit_code == 0 and "done: 1 file(s)" in first.output, first.output
    (watched / "B.WAV").write_bytes(wav.read_bytes())
    second = run_cli(args)
    assert "done: 1 file(s)" in second.output, second.output
    files = [r["file"] for r in csv.DictReader(open(tmp_path / "out" / "detections.csv"))]
    assert files.count("A.WAV") == files.count("B.WAV") > 0
    jsonl = [json.loads(x)["file"] for x in (tmp_path / "out" / "detections.jsonl").read_text().splitlines()]
    assert jsonl.count("A.WAV") == jsonl.count("B.WAV") == files.count("A.WAV")


def test_corrupt_file_is_reported_and_skipped(tmp_path, graph):
    folder = make_folder(tmp_path)
    (folder / "night1" / "broken.WAV").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    truncated = folder / "night2" / "20210509_040000.wav"
    sf.write(truncated, np.zeros(44_100, dtype=np.float32), 22_050, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:30_000])  # header promises more than the file holds
    result = run_cli(["stream", folder, "-m", graph, "--window", "0.5", "--min-conf", "0.8", "-o", tmp_path / "out"])
    assert result.exit_code == 2, result.output
    assert "1 file(s) could not be read; 1 truncated file(s) analysed for the part each holds" in result.output
    errors = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert sorted(e["file"] for e in errors) == ["night1/broken.WAV", "night2/20210509_040000.wav"]
    (cut,) = [e["problem"] for e in errors if "truncated" in e["problem"]]
    assert "the part it holds was analysed" in cut
    done = {r["file"] for r in csv.DictReader(open(tmp_path / "out" / "detections.csv"))}
    assert done == {"night2/20210501_040000.wav", "night1/20210502_040000.wav", "night2/20210503_040000.wav",
                    "night1/REC3.FLAC"}  # the truncated file holds silence: analysed, nothing found
    assert (tmp_path / "out" / "night1" / "REC3.selection.table.txt").is_file()
    assert (tmp_path / "out" / "night2" / "20210509_040000.selection.table.txt").is_file()


@pytest.mark.parametrize("scale", [[], ["--workers", "2"], ["--engine", "ray", "--concurrency", "1", "--threads", "1"]])
def test_a_truncated_wav_is_analysed_for_the_part_it_holds(tmp_path, graph, scale, request):
    """A recorder that died mid-file: the windows of the audio the file holds are what the same audio as a complete
    file gives, in one process, two or on Ray; errors.csv says the file is cut short; a re-run leaves it done."""
    if "ray" in scale:
        request.getfixturevalue("ray_cluster")
    samples = (tone_track(EVENTS, 9.7, 16_000, seed=5) * 32767).astype(np.int16)
    folder = tmp_path / "card"
    folder.mkdir()
    sf.write(folder / "cut.wav", samples, 16_000, subtype="PCM_16")
    data = (folder / "cut.wav").read_bytes()
    kept = 44 + 2 * 16_000 * 6  # the header and 6 s of the 9.7 s it declares
    (folder / "cut.wav").write_bytes(data[:kept])
    whole = tmp_path / "whole"
    whole.mkdir()
    sf.write(whole / "cut.wav", samples[:16_000 * 6], 16_000, subtype="PCM_16")
    common = ["-m", graph, "--window", "0.5", "--min-conf", "0.5", "--format", "csv,raven"]
    cut = run_cli(["stream", folder, *common, "-o", tmp_path / "out", *scale])
    assert cut.exit_code == 2 and "1 truncated file(s)" in cut.output, cut.output
    reference = run_cli(["stream", whole, *common, "-o", tmp_path / "reference"])
    assert reference.exit_code == 0, reference.output
    assert events_of(tmp_path / "out") == events_of(tmp_path / "reference") and events_of(tmp_path / "reference")
    assert (tmp_path / "out" / "cut.detections.csv").read_bytes() == (tmp_path / "reference" / "cut.detections.csv"
                                                                   ).read_bytes()
    raven = [list(csv.DictReader(open(tmp_path / d / "cut.selection.table.txt"), delimiter="\t"))
             for d in ("out", "reference")]
    assert [{k: v for k, v in r.items() if k != "Begin Path"} for r in raven[0]] == \
        [{k: v for k, v in r.items() if k != "Begin Path"} for r in raven[1]]  # the path names the other folder
    (error,) = list(csv.DictReader(open(tmp_path / "out" / "errors.csv")))
    assert error["file"] == "cut.wav" and "truncated" in error["problem"]
    again = run_cli(["stream", folder, *common, "-o", tmp_path / "out", *scale])
    assert again.exit_code == 2 and "done: 0 file(s)" in again.output, again.output  # not analysed twice


def test_interrupted_run_resumes_without_duplicates(tmp_path, graph):
    folder = make_folder(tmp_path)
    common = ["-m", graph, "--window", "0.5", "--min-conf", "0.8", "--merge"]
    clean = run_cli(["stream", folder, *common, "-o", tmp_path / "clean"])
    assert clean.exit_code == 0, clean.output

    # Interrupt the second file half-way through, with the same settings the CLI stores in its journal.
    model = OnnxModel(graph)
    plan = WindowPlan.from_seconds(0.5, None, 16_000)
    config = DetectConfig(plan, batch=1, min_conf=0.8, merge=True)
    settings = run_settings(model, config)
    options = output_options(config, ("raven", "csv", "jsonl"))
    files = collect_files([folder], block_size=4_096)
    sources = [files[0], _Interrupted(files[1].path, files[1].name, 4_096)] + files[2:]
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_sources(sources, model, config,
                    Outputs(out, ("raven", "csv", "jsonl"), 8000), RunState(out, settings, options))
    assert RunState(out, settings, options).count(DONE) == 1
    partial = [json.loads(x)["file"] for x in (out / "detections.jsonl").read_text().splitlines()]
    assert partial and files[1].name not in partial  # an unfinished file's rows never reach the JSONL
    assert not (out / "night1" / f"{Path(files[1].name).stem}.detections.csv").exists()

    resumed = run_cli(["stream", folder, *common, "-o", out])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming: 1 of 4 files already done" in resumed.output
    assert "done: 3 file(s)" in resumed.output
    assert events_of(out) == events_of(tmp_path / "clean")
    jsonl = sorted((out / "detections.jsonl").read_text().splitlines())
    assert jsonl == sorted((tmp_path / "clean" / "detections.jsonl").read_text().splitlines())
    assert not list(out.rglob("*.tmp"))


def test_resume_with_other_numeric_settings_is_refused(tmp_path, graph):
    folder = make_folder(tmp_path, 1)
    assert run_cli(["stream", folder, "-m", graph, "-o", tmp_path / "out"]).exit_code == 0
    again = run_cli(["stream", folder, "-m", graph, "-o", tmp_path / "out", "--hop", "0.25"])
    assert again.exit_code == 1 and "changed: hop" in again.output
    again = run_cli(["stream", folder, "-m", graph, "-o", tmp_path / "out", "--final-window", "drop"])
    assert again.exit_code == 1 and "changed: final_window" in again.output
    soft = build_band_graph(tmp_path / "soft.onnx", scale=1.0)
    again = run_cli(["stream", folder, "-m", soft, "-o", tmp_path / "out"])
    assert again.exit_code == 1 and "changed: models" in again.output


def test_output_only_options_may_change_between_runs(tmp_path, graph):
    folder = make_folder(tmp_path, 2)
    out = tmp_path / "out"
    common = ["stream", folder, "-m", graph, "--window", "0.5", "-o", out]
    assert run_cli([*common, "--min-conf", "0.5"]).exit_code == 0
    table = out / "night2" / "20210501_040000.detections.csv"
    first = table.read_bytes()
    again = run_cli([*common, "--min-conf", "0.95", "--format", "csv", "--merge"])
    assert again.exit_code == 0, again.output
    assert "resuming: 2 of 2 files already done" in again.output and "done: 0 file(s)" in again.output
    assert "2 file(s) done earlier were written with other output options" in again.output
    assert "min_conf 0.5" in again.output
    assert table.read_bytes() == first  # done files keep what they were written with, unless asked

    rewritten = run_cli([*common, "--min-conf", "0.95", "--merge", "--rewrite-outputs"])
    assert rewritten.exit_code == 0, rewritten.output
    assert "done: 2 file(s)" in rewritten.output
    confidences = [float(r["confidence"]) for r in csv.DictReader(table.open())]
    assert confidences and min(confidences) >= 0.95 and len(confidences) < len(first.splitlines()) - 1
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert {x["retract"] for x in lines if "retract" in x} == {"night2/20210501_040000.wav",
                                                                "night1/20210502_040000.wav"}
    assert live_rows(out / "detections.jsonl") == [
        (r["file"], r["start_s"], r["label"]) for r in csv.DictReader((out / "detections.csv").open())]
    same = run_cli([*common, "--min-conf", "0.95", "--merge", "--rewrite-outputs"])
    assert "done: 0 file(s)" in same.output and "other output options" not in same.output


def test_fusion_of_mismatched_models_refused_by_cli(tmp_path, graph, pcm):
    other = build_band_graph(tmp_path / "dog.onnx", classes=("bark", "growl", "whine"))
    result = run_cli(["stream", pcm[0], "-m", graph, "-m", other, "-o", tmp_path / "out"])
    assert result.exit_code == 1
    assert "cannot fuse these models" in result.output and "dog.onnx" in result.output
    assert not (tmp_path / "out").exists()


def test_fusion_streams(tmp_path, graph, pcm):
    soft = build_band_graph(tmp_path / "soft.onnx", scale=1.0)
    result = run_cli(["stream", pcm[0], "-m", graph, "-m", soft, "--weights", "1,1", "--window", "0.5",
                      "--min-conf", "0.6", "--merge", "-o", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    assert "fusion of 2 models" in result.output
    assert [e[2] for e in events_of(tmp_path / "out")] == ["low", "mid", "high", "low"]


def test_two_hour_file_streams_in_flat_memory(tmp_path, graph):
    rate = 8_000
    short, long_ = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, tone_track([(1, 2, LOW)], 60.0, rate), rate, subtype="PCM_16")
    rng = np.random.default_rng(0)
    with sf.SoundFile(long_, "w", rate, 1, subtype="PCM_16") as handle:  # 2 h written in one-minute pieces
        for minute in range(120):
            piece = 0.05 * rng.standard_normal(60 * rate)
            if minute % 10 == 0:
                piece[rate:3 * rate] += 0.5 * np.sin(2 * np.pi * MID * np.arange(2 * rate) / rate)
            handle.write(piece.astype(np.float32))
    assert long_.stat().st_size > 110e6
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(graph), str(short), str(long_),
                           str(tmp_path / "o1"), str(tmp_path / "o2")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    before_kb, after_kb, seconds, detections = proc.stdout.split()
    assert float(seconds) == pytest.approx(7200, abs=1)
    assert int(detections) >= 12  # the mid tone every 10 minutes (merged events)
    # The decoded 2 h at 16 kHz would be 460 MB of float32; streaming must not grow the peak by more than 30 MB.
    growth_mb = (int(after_kb) - int(before_kb)) / 1024
    assert growth_mb < 30, f"peak RSS grew by {growth_mb:.0f} MB streaming a 2-hour file"


DENSE_SCRIPT = textwrap.dedent("""
    import resource, sys
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.sources import FileSource
    from vocalprobe.runtime.field.outputs import Outputs
    from vocalprobe.runtime.field.stream import DetectConfig, run_sources
    from vocalprobe.runtime.engine.windows import WindowPlan
    model = OnnxModel(sys.argv[1], threads=1)
    config = DetectConfig(WindowPlan.from_seconds(0.1, 0.05, 16000), batch=32, min_conf=0.0)
    formats = ("raven", "csv", "jsonl", "birdnet-csv")
    def run(path, out):
        return run_sources([FileSource(path, path.split('/')[-1])], model, config, Outputs(out, formats, 8000))
    run(sys.argv[2], sys.argv[4])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = run(sys.argv[3], sys.argv[5])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(before, after, summary.audio_seconds, summary.detections)
""")


def test_a_dense_file_streams_in_memory_that_does_not_grow_with_its_detections(tmp_path, graph):
    """--min-conf 0 on short, overlapping windows: every window reports every class (issue 11 s4). Holding the
    216,000 detections of this hour and building its tables at the end grew the peak by 176 MB."""
    rate = 2_000
    short, long_ = tmp_path / "short.wav", tmp_path / "long.wav"
    rng = np.random.default_rng(1)
    sf.write(short, 0.05 * rng.standard_normal(60 * rate), rate, subtype="PCM_16")
    with sf.SoundFile(long_, "w", rate, 1, subtype="PCM_16") as handle:
        for _ in range(60):
            handle.write((0.05 * rng.standard_normal(60 * rate)).astype(np.float32))
    proc = subprocess.run([sys.executable, "-c", DENSE_SCRIPT, str(graph), str(short), str(long_),
                           str(tmp_path / "o1"), str(tmp_path / "o2")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    before_kb, after_kb, seconds, detections = proc.stdout.split()
    assert float(seconds) == pytest.approx(3600, abs=1)
    assert int(detections) == 3 * 3600 * 20  # every class of every window (71,999 full ones and the final one)
    table = tmp_path / "o2" / "long.detections.csv"
    with table.open() as handle:
        assert sum(1 for _ in handle) == int(detections) + 1
    growth_mb = (int(after_kb) - int(before_kb)) / 1024
    assert growth_mb < 30, f"peak RSS grew by {growth_mb:.0f} MB streaming 216,000 detections"


def test_runtime_commands_work_where_torch_cannot_be_imported(tmp_path, graph, pcm):
    cli = run_cli_without_torch
    proc = cli("stream", pcm[0], "-m", graph, "--window", "0.5", "--min-conf", "0.8", "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED []" in proc.stderr
    assert len(events_of(tmp_path / "out")) > 0
    proc = cli("bench", graph, "--seconds", "5")
    assert proc.returncode == 0 and "x real time" in proc.stdout, proc.stderr
    check = run_python_without_torch("import torch", timeout=60)
    assert check.returncode != 0 and "import of torch halted" in check.stderr  # the block is real


def test_folder_without_audio_is_an_error(tmp_path, graph):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    result = run_cli(["stream", tmp_path / "empty", "-m", graph, "-o", tmp_path / "out"])
    assert result.exit_code == 1 and "no .wav/.flac/.ogg files" in result.output


def test_ignored_class_is_never_reported(tmp_path, graph):
    from runtime_graphs import DEFAULT_CLASSES

    from vocalprobe.runtime.field.events import window_hits

    probs = np.array([0.7, 0.2, 0.1], np.float32)
    assert window_hits(probs, DEFAULT_CLASSES, 0.15) == [(DEFAULT_CLASSES[0], pytest.approx(0.7)),
                                                         (DEFAULT_CLASSES[1], pytest.approx(0.2))]
    assert [c for c, _ in window_hits(probs, DEFAULT_CLASSES, 0.15, ignore=frozenset({DEFAULT_CLASSES[0]}))] == [
        DEFAULT_CLASSES[1]]
    folder = make_folder(tmp_path)
    plain = run_cli(["stream", folder, "-m", graph, "-o", tmp_path / "a", "--min-conf", "0.8"])
    ignored = run_cli(["stream", folder, "-m", graph, "-o", tmp_path / "b", "--min-conf", "0.8",
                       "--ignore", DEFAULT_CLASSES[0]])
    assert plain.exit_code == 0 and ignored.exit_code == 0, ignored.output
    labels = lambda out: {row["label"] for row in csv.DictReader((out / "detections.csv").open())}  # noqa: E731
    assert DEFAULT_CLASSES[0] in labels(tmp_path / "a")
    assert labels(tmp_path / "b") == labels(tmp_path / "a") - {DEFAULT_CLASSES[0]}
    unknown = run_cli(["stream", folder, "-m", graph, "-o", tmp_path / "c", "--ignore", "noise"])
    assert unknown.exit_code == 1 and "not a class of the model" in unknown.output


def corrupt_flac(path: Path) -> Path:
    """A FLAC whose first seconds decode (a tone at 0.5-2.5 s) and whose middle is garbage: it fails part-way."""
    x = tone_track([(0.5, 2.5, LOW), (6.0, 8.0, MID)], 10.0, 16_000, seed=1)
    sf.write(path, x, 16_000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    middle = int(len(data) * 0.6)
    data[middle:middle + 4000] = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


LOCK_HOLDER = textwrap.dedent("""
    import sys
    from vocalprobe.runtime.field.outputs import Outputs
    with Outputs(sys.argv[1], ("csv",), 8000):
        print("locked", flush=True)
        sys.stdin.read()   # hold the folder until the test closes our stdin
""")


def test_second_run_into_the_same_folder_fails_at_once(tmp_path, graph, pcm):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_cli(["stream", pcm[0], "-m", graph, "--window", "0.5", "-o", out])
        assert second.exit_code == 1
        assert f"is in use by another vocalprobe run (pid {holder.pid} on " in second.output
        assert "started " in second.output and len(second.output.strip().splitlines()[-1]) < 400
        assert not (out / "detections.jsonl").exists() and not (out / "detections.csv").exists()
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    after = run_cli(["stream", pcm[0], "-m", graph, "--window", "0.5", "-o", out])  # the lock died with its holder
    assert after.exit_code == 0, after.output


def test_a_file_that_fails_part_way_leaves_no_rows(tmp_path, graph, pcm):
    folder = tmp_path / "card"
    folder.mkdir()
    (folder / "20210502_040000.WAV").write_bytes(pcm[0].read_bytes())
    bad = corrupt_flac(folder / "20210503_040000.flac")
    decoded = []
    with pytest.raises(Exception, match="read failed"):
        for block in FileSource(bad, bad.name).blocks(16_000):
            decoded.append(block)
    assert sum(map(len, decoded)) > 3 * 16_000  # its tone at 0.5-2.5 s was read before it failed
    out = tmp_path / "out"
    args = ["stream", folder, "-m", graph, "--window", "0.5", "--min-conf", "0.8", "-o", out]
    result = run_cli(args)
    assert result.exit_code == 2, result.output
    assert [e["file"] for e in csv.DictReader((out / "errors.csv").open())] == [bad.name]
    jsonl = [json.loads(x)["file"] for x in (out / "detections.jsonl").read_text().splitlines()]
    assert jsonl and set(jsonl) == {"20210502_040000.WAV"}
    assert not (out / "20210503_040000.detections.csv").exists()

    # A recording done earlier and replaced by a corrupt copy: its rows are retracted and its tables removed.
    (folder / "20210502_040000.WAV").write_bytes(corrupt_flac(tmp_path / "x.flac").read_bytes())
    again = run_cli(args)
    assert again.exit_code == 1, again.output  # every file failed: nothing was processed (2 is "some failed")
    assert "error: nothing could be processed: 2 file(s) could not be read" in again.output
    assert live_rows(out / "detections.jsonl") == []
    assert json.loads((out / "detections.jsonl").read_text().splitlines()[-1]) == {"retract": "20210502_040000.WAV"}
    assert sorted(e["file"] for e in csv.DictReader((out / "errors.csv").open())) == [
        "20210502_040000.WAV", bad.name]
    assert not (out / "20210502_040000.detections.csv").exists()
    assert list(csv.DictReader((out / "detections.csv").open())) == []


def test_watched_file_that_grows_after_a_pause_is_analysed_again(tmp_path, graph):
    """A recorder pauses longer than the settle time: the first part is analysed, then the whole file again, and
    the JSONL retracts the rows of the first part; a restart does not double anything."""
    watched, out = tmp_path / "card", tmp_path / "out"
    watched.mkdir()
    full = tone_track([(0.5, 2.0, LOW), (6.0, 8.0, MID)], 10.0, 16_000, seed=2)
    name = "20210502_040000.WAV"
    sf.write(watched / name, full[:4 * 16_000], 16_000, subtype="PCM_16")  # the first 4 s, header patched
    model = OnnxModel(graph)
    config = DetectConfig(WindowPlan.from_seconds(0.5, None, 16_000), min_conf=0.8, merge=True)
    formats = ("csv", "jsonl")
    now = [0.0]
    sleeps = []

    def sleep(seconds):  # the recorder goes on writing after the first file was handed over
        sleeps.append(seconds)
        now[0] += seconds
        if len(sleeps) == 3:
            sf.write(watched / name, full, 16_000, subtype="PCM_16")

    watcher = FolderWatcher(watched, settle_s=3.0, clock=lambda: now[0])
    with Outputs(out, formats, 8000) as outputs, \
            RunState(out, run_settings(model, config), output_options(config, formats)) as state:
        sources = state.todo(watcher.source(p) for p in watcher.follow(poll_s=2.0, idle_exit_s=10.0, sleep=sleep))
        summary = run_sources(sources, model, config, outputs, state)
    assert summary.done == [name, name]
    table = [(r["file"], r["start_s"], r["label"]) for r in csv.DictReader((out / "detections.csv").open())]
    assert [r[2] for r in table] == ["low", "mid"]
    assert live_rows(out / "detections.jsonl") == table
    lines = (out / "detections.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines].count({"retract": name}) == 1

    restarted = run_cli(["stream", "--watch", watched, "--settle", "0", "--poll", "0.05", "--idle-exit", "0.3",
                         "-m", graph, "--window", "0.5", "--min-conf", "0.8", "--merge", "--format", "csv,jsonl",
                         "-o", out])
    assert restarted.exit_code == 0 and "done: 0 file(s)" in restarted.output, restarted.output
    assert (out / "detections.jsonl").read_text().splitlines() == lines


def test_watched_folder_that_disappears_is_reported(tmp_path, graph, pcm):
    import shutil

    watched, out = tmp_path / "card", tmp_path / "out"
    watched.mkdir()
    (watched / "A.WAV").write_bytes(pcm[0].read_bytes())
    model = OnnxModel(graph)
    config = DetectConfig(WindowPlan.from_seconds(0.5, None, 16_000), min_conf=0.8)
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        if now[0] >= 3:
            shutil.rmtree(watched, ignore_errors=True)  # the card is pulled out

    watcher = FolderWatcher(watched, settle_s=1.0, clock=lambda: now[0])
    with RunState(out, run_settings(model, config), output_options(config, ("csv",))) as state:
        with pytest.raises(SourceError, match="the folder disappeared"):
            followed = watcher.follow(poll_s=1.0, idle_exit_s=30.0, sleep=sleep)
            run_sources(state.todo(watcher.source(p) for p in followed), model, config, Outputs(out, ("csv",), 8000),
                        state)
        assert state.count(DONE) == 1  # what was done before is kept
    assert (out / "A.detections.csv").is_file()


def test_rows_of_a_stdin_stream_survive_a_later_file_run_into_the_folder(tmp_path, graph, pcm):
    wav, raw = pcm
    out = tmp_path / "out"
    common = ["-m", graph, "--window", "0.5", "--min-conf", "0.8", "-o", out]
    live = run_cli(["stream", "-", "--sample-rate", "44100", *common], input=raw)
    assert live.exit_code == 0, live.output
    stdin_rows = (out / "detections.jsonl").read_text()
    assert stdin_rows
    files = run_cli(["stream", wav, *common])
    assert files.exit_code == 0, files.output
    text = (out / "detections.jsonl").read_text()
    assert text.startswith(stdin_rows) and len(text) > len(stdin_rows)
    again = run_cli(["stream", "-", "--sample-rate", "44100", *common], input=raw)
    assert again.exit_code == 1 and "stream stdin into another --out folder" in again.output
    assert (out / "detections.jsonl").read_text() == text
