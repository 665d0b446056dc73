"""Audio sources (runtime/field/sources.py): raw PCM on stdin, and the folder watcher."""

from __future__ import annotations

import io

import numpy as np
import pytest

from vocalprobe.runtime.field.sources import FolderWatcher, StdinSource


def test_stdin_multichannel_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.integers(-20_000, 20_000, size=(10_000, 2)).astype("<i2")
    source = StdinSource(16_000, channels=2, dtype="s16", stream=io.BytesIO(stereo.tobytes()[:-1]),
                         block_frames=777)
    got = np.concatenate(list(source.raw_blocks()))
    expected = stereo[:-1].astype(np.float32).mean(axis=1) / 32768  # the cut-off last frame is not audio
    np.testing.assert_allclose(got, expected, atol=1e-7)
    floats = np.array([0.1, np.nan], dtype="<f4")
    with pytest.raises(Exception, match="NaN"):
        list(StdinSource(16_000, dtype="f32", stream=io.BytesIO(floats.tobytes())).raw_blocks())
    with pytest.raises(Exception, match="--sample-rate"):
        StdinSource(None)


def test_watcher_waits_until_files_stop_growing(tmp_path):
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=5.0, clock=lambda: now[0])
    growing = tmp_path / "A.WAV"
    growing.write_bytes(b"1" * 100)
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "._A.WAV").write_bytes(b"mac metadata")
    assert watcher.ready() == []
    now[0] = 3.0
    with growing.open("ab") as handle:
        handle.write(b"2" * 100)
    assert watcher.ready() == []  # changed: the clock starts again
    now[0] = 7.0
    assert watcher.ready() == []
    now[0] = 8.5
    assert watcher.ready() == [growing]
    now[0] = 20.0
    assert watcher.ready() == []  # once per watcher
