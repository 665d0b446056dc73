"""The stream's journal (runtime/field/run_state.py): resume, refusal of other numbers, output options."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from vocalprobe.runtime.field.run_state import (
    DONE,
    FAILED,
    JOURNAL_NAME,
    PRE_RELEASE_STATE_NAME,
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


def test_a_pre_release_state_or_journal_is_refused_not_migrated(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / PRE_RELEASE_STATE_NAME).write_text(json.dumps({"version": 1, "settings": {}, "done": {}}))
    with pytest.raises(StateError, match="pre-release vocalprobe"):
        RunState(out, {})
    assert not (out / JOURNAL_NAME).exists()  # nothing made beside it
    other = tmp_path / "other"
    RunState(other, {}).close()
    db = sqlite3.connect(other / JOURNAL_NAME)
    db.execute("ALTER TABLE files DROP COLUMN position")  # a journal from before recordings' places were kept
    db.commit()
    db.close()
    with pytest.raises(StateError, match="journal format"):
        RunState(other, {})


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
