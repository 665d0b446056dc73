"""The stream's run state (runtime/field/run_state.py): resume, and refusal of other settings."""

from __future__ import annotations

import pytest

from vocalprobe.runtime.field.run_state import RunState, StateError


def test_run_state_resumes_and_refuses_other_settings(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x" * 10)
    state = RunState(tmp_path / "out", {"window": 1})
    assert not state.is_done(audio)
    state.mark_done(audio, "a.wav", 3, ["a.detections.csv"])
    again = RunState(tmp_path / "out", {"window": 1})
    assert again.is_done(audio) and again.done_names() == {"a.wav"}
    audio.write_bytes(b"y" * 20)  # replaced since: analysed again
    assert not again.is_done(audio)
    with pytest.raises(StateError, match="changed: window"):
        RunState(tmp_path / "out", {"window": 2})
