"""The stream's journal (runtime/field/run_state.py): resume, refusal of other numbers, output options, migration."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from vocalprobe.runtime.field.run_state import (
    DONE,
    FAILED,
    JOURNAL_NAME,
    LEGACY_STATE_NAME,
    FileRecord,
    Fingerprint,
    RunState,
    StateError,
)


class _Source:
    def __init__(self, path: Path):
        self.path, self.name = path, path.name


def test_run_state_resumes_and_refuses_other_settings(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 10)
    state = RunState(tmp_path / "out", {"window": 1})
    assert not state.is_done(audio)
    state.mark_done(audio, "a.wav", 3, ["a.detections.csv"])
    again = RunState(tmp_path / "out", {"window": 1})
    assert again.is_done(audio) and again.count(DONE) == 1
    fingerprint = Fingerprint(10, audio.stat().st_mtime_ns)
    assert again.lookup(audio) == FileRecord(RunState.key(audio), "a.wav", DONE, fingerprint, 3, ("a.detections.csv",),
                                             None, {})
    assert again.outputs_ending(".detections.csv") == ["a.detections.csv"]
    audio.write_bytes(b"y" * 20)  # replaced since: analysed again
    assert not again.is_done(audio)
    with pytest.raises(StateError, match="changed: window"):
        RunState(tmp_path / "out", {"window": 2})
    assert (tmp_path / "out" / JOURNAL_NAME).is_file()


def test_failed_files_are_retried_once_they_change(tmp_path):
    bad, good = tmp_path / "bad.flac", tmp_path / "good.wav"
    bad.write_bytes(b"not flac")
    good.write_bytes(b"x")
    state = RunState(tmp_path / "out", {})
    state.mark_failed(bad, "bad.flac", "corrupt")
    assert state.failures() == [("bad.flac", "corrupt")] and state.count(FAILED) == 1
    assert [s.name for s in state.todo([_Source(bad), _Source(good)])] == ["good.wav"]
    assert state.skipped == ["bad.flac"]
    bad.write_bytes(b"fixed, longer")
    assert not state.is_done(bad)
    state.mark_done(bad, "bad.flac", 0, [])
    assert state.failures() == []


def test_output_options_may_change_and_rewrite_outputs_redoes_those_files(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    out = tmp_path / "out"
    RunState(out, {"window": 1}, {"min_conf": 0.5}).mark_done(audio, "a.wav", 1, [])
    later = RunState(out, {"window": 1}, {"min_conf": 0.9})
    assert later.is_done(audio) and later.other_options() == {"min_conf 0.5": 1}
    assert not RunState(out, {"window": 1}, {"min_conf": 0.9}, rewrite_outputs=True).is_done(audio)
    assert RunState(out, {"window": 1}, {"min_conf": 0.5}, rewrite_outputs=True).is_done(audio)


def test_jsonl_size_is_committed_with_the_file(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    state = RunState(tmp_path / "out", {})
    assert state.jsonl_committed == 0
    state.mark_done(audio, "a.wav", 1, ["detections.jsonl"], jsonl_end=123)
    again = RunState(tmp_path / "out", {})
    assert again.jsonl_committed == 123 and again.lookup(audio).wrote_jsonl


def test_state_of_the_older_json_format_is_migrated(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done, cut, failed = tmp_path / "done.wav", tmp_path / "cut.wav", tmp_path / "bad.wav"
    for path in (done, cut, failed):
        path.write_bytes(b"x" * 8)
    fingerprint = lambda p: {"size": 8, "mtime_ns": p.stat().st_mtime_ns}  # noqa: E731
    settings = {"models": ["abc"], "weights": [1.0], "window": 16000, "hop": 16000, "final_window": "pad",
                "min_conf": 0.5, "top_k": None, "merge": False, "formats": ["csv", "jsonl"], "ignore": []}
    legacy = {"version": 1, "settings_sha256": "unused", "settings": settings,
              "done": {os.path.abspath(done): {"name": "done.wav", "detections": 1,
                                               "outputs": ["done.detections.csv"], "fingerprint": fingerprint(done)}},
              "failed": {os.path.abspath(failed): {"name": "bad.wav", "problem": "corrupt",
                                                   "fingerprint": fingerprint(failed)}}}
    (out / LEGACY_STATE_NAME).write_text(json.dumps(legacy))
    (out / "detections.jsonl").write_text('{"file": "done.wav", "label": "low"}\n{"file": "cut.wav", "label": "low"}\n')
    new_settings = {"models": ["abc"], "weights": [1.0], "sample_rate": 16000, "resampler": "soxr HQ",
                    "window": 16000, "hop": 16000, "final_window": "pad"}
    with pytest.raises(StateError, match="changed: hop"):
        RunState(out, {**new_settings, "hop": 8000})
    assert (out / LEGACY_STATE_NAME).exists()  # a refused migration leaves the old state as it was
    state = RunState(out, new_settings, {"min_conf": 0.5, "top_k": None, "merge": False,
                                         "formats": ["csv", "jsonl"], "ignore": []})
    assert state.is_done(done) and state.is_done(failed) and not state.is_done(cut)
    assert state.failures() == [("bad.wav", "corrupt")] and state.other_options() == {}
    assert state.lookup(done).outputs == ("done.detections.csv", "detections.jsonl")
    assert (out / "detections.jsonl").read_text() == '{"file": "done.wav", "label": "low"}\n'
    assert state.jsonl_committed == (out / "detections.jsonl").stat().st_size
    assert not (out / LEGACY_STATE_NAME).exists() and (out / (LEGACY_STATE_NAME + ".migrated")).exists()


def test_unreadable_or_foreign_journal_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / JOURNAL_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="unreadable journal"):
        RunState(out, {})
    (out / JOURNAL_NAME).unlink()
    RunState(out, {}).close()
    with sqlite3.connect(out / JOURNAL_NAME) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(StateError, match="journal format '99'"):
        RunState(out, {})
