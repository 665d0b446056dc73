"""Audio sources (runtime/engine/sources.py): raw PCM on stdin, and the folder watcher (when a recording is
finished)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from vocalprobe.runtime.core.audio import wav_data_size
from vocalprobe.runtime.engine.sources import (FolderWatcher, SourceError, StdinSource, collect_files,
                                              still_being_written)


def test_stdin_multichannel_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.integers(-20_000, 20_000, size=(10_000, 2)).astype("<i2")
    source = StdinSource(16_000, channels=2, dtype="s16", stream=io.BytesIO(stereo.tobytes()[:-1]),
                         block_frames=777)
    got = np.concatenate(list(source.raw_blocks()))
    expected = stereo[:-1].astype(np.float32).mean(axis=1) / 32768  # the cut-off last frame is not audio
    np.testing.assert_allclose(got, expected, atol=1e-7)
    with pytest.raises(Exception, match="--sample-rate"):
        StdinSource(None)


def test_a_nan_block_on_stdin_is_silence_and_is_reported(caplog):
    """A live monitor survives a glitch: the block is analysed as silence, its time range kept for errors.csv."""
    floats = np.full(3_000, 0.25, dtype="<f4")
    floats[1_500] = np.nan
    source = StdinSource(1_000, dtype="f32", stream=io.BytesIO(floats.tobytes()), block_frames=1_000)
    with caplog.at_level("WARNING"):
        blocks = list(source.raw_blocks())
    np.testing.assert_array_equal(np.concatenate(blocks)[1_000:2_000], 0.0)
    np.testing.assert_array_equal(np.concatenate(blocks)[2_000:], 0.25)
    assert source.glitches == [(1.0, 2.0)]
    assert "NaN/inf samples at 1.000-2.000 s" in caplog.text


def test_the_wav_data_check_of_reading_and_watching_is_one_function(tmp_path):
    whole = wav_bytes(1.0)
    path = tmp_path / "A.WAV"
    path.write_bytes(whole)
    assert wav_data_size(path) == (len(whole) - 44, len(whole) - 44) and not wav_data_size(path).short
    path.write_bytes(whole[:1000])
    assert wav_data_size(path).short and still_being_written(path)  # truncated, to the reader and the watcher
    path.write_bytes(whole[:30])  # cut inside its header: being written (watcher); libsndfile's to refuse (reader)
    assert wav_data_size(path) is None
    assert wav_data_size(path, unfinished_header=True) == (None, 30) and still_being_written(path)


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


def wav_bytes(seconds: float, rate: int = 8_000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * rate), np.int16), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_watcher_waits_for_the_data_a_wav_header_declares(tmp_path):
    """A recorder that pauses longer than the settle time: the header's data size says the file is not finished."""
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=3.0, abandon_s=100.0, clock=lambda: now[0])
    whole = wav_bytes(10.0)
    path = tmp_path / "20210502_040000.WAV"
    path.write_bytes(whole[:len(whole) * 4 // 10])  # 4 s of 10 written, then a pause
    assert still_being_written(path)
    for now[0] in (0.0, 5.0, 20.0):
        assert watcher.ready() == []  # stable for longer than settle, but still short of its data
    with path.open("ab") as handle:
        handle.write(whole[len(path.read_bytes()):])
    assert not still_being_written(path) and not wav_data_size(path).short
    now[0] = 21.0
    assert watcher.ready() == []  # changed: settles again
    now[0] = 24.0
    assert watcher.ready() == [path]


def test_watcher_hands_over_a_wav_that_stays_short_after_abandon_s(tmp_path):
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=3.0, abandon_s=30.0, clock=lambda: now[0])
    path = tmp_path / "DEAD.WAV"
    path.write_bytes(wav_bytes(10.0)[:5000])  # the battery died: it will never be finished
    assert watcher.ready() == []
    now[0] = 29.0
    assert watcher.ready() == [] and watcher.pending == 1
    now[0] = 30.0
    assert watcher.ready() == [path]  # reading it reports it as truncated


def test_watcher_settle_time_alone_decides_without_a_data_size(tmp_path):
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=3.0, clock=lambda: now[0])
    streaming = bytearray(wav_bytes(1.0))
    streaming[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # a streaming writer's "size unknown"
    path = tmp_path / "LIVE.WAV"
    path.write_bytes(bytes(streaming))
    flac = tmp_path / "A.flac"
    flac.write_bytes(b"fLaC" + b"\0" * 100)
    assert wav_data_size(path) is None and wav_data_size(flac) is None  # nothing to tell: settle decides
    assert watcher.ready() == []
    now[0] = 3.0
    assert watcher.ready() == [flac, path]


def test_watcher_lists_a_recording_only_once_renamed_from_its_temporary_name(tmp_path):
    """AudioMoth (and copy tools) write under a temporary name and rename on close."""
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=1.0, clock=lambda: now[0])
    for name in ("20210502_040000.TMP", "20210502_050000.WAV.tmp", "20210502_060000.wav.part"):
        (tmp_path / name).write_bytes(wav_bytes(1.0))
    assert watcher.ready() == []
    now[0] = 10.0
    assert watcher.ready() == [] and watcher.pending == 0
    final = tmp_path / "20210502_040000.WAV"
    (tmp_path / "20210502_040000.TMP").rename(final)
    assert watcher.ready() == []
    now[0] = 11.0
    assert watcher.ready() == [final]


def test_watcher_hands_over_a_file_again_once_it_changes(tmp_path):
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=1.0, clock=lambda: now[0])
    path = tmp_path / "A.WAV"
    path.write_bytes(wav_bytes(1.0))
    watcher.ready()
    now[0] = 1.0
    assert watcher.ready() == [path]
    now[0] = 5.0
    assert watcher.ready() == []
    path.write_bytes(wav_bytes(2.0))  # it grew after it was handed over
    assert watcher.ready() == [] and watcher.pending == 1
    now[0] = 6.0
    assert watcher.ready() == [path]


def test_watched_folder_that_disappears_raises(tmp_path):
    folder = tmp_path / "card"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle_s=1.0)
    assert watcher.ready() == []
    folder.rmdir()
    with pytest.raises(SourceError, match="the folder disappeared"):
        watcher.ready()


def _wav(path, seconds=1.0):
    sf.write(path, np.zeros(int(16_000 * seconds), np.float32), 16_000)


def test_watcher_skips_a_symlink_loop_and_says_so_once(tmp_path, caplog):
    """A symlink loop named *.wav used to end --watch (exit 1) before the good file was analysed."""
    now = [0.0]
    watcher = FolderWatcher(tmp_path, settle_s=1.0, clock=lambda: now[0])
    (tmp_path / "loop.wav").symlink_to("loop.wav")
    _wav(tmp_path / "good.wav")
    assert watcher.ready() == []
    now[0] = 2.0
    assert watcher.ready() == [tmp_path / "good.wav"]
    now[0] = 4.0
    assert watcher.ready() == []
    loop = tmp_path / "loop.wav"
    assert list(watcher.refused) == [loop] and "symbolic links" in watcher.refused[loop]
    assert [r.message for r in caplog.records].count(f"--watch: skipping {loop}: {watcher.refused[loop]}") == 1


def test_watcher_says_when_it_follows_a_link_out_of_the_folder(tmp_path, caplog):
    watched, elsewhere = tmp_path / "watched", tmp_path / "elsewhere"
    watched.mkdir()
    elsewhere.mkdir()
    _wav(elsewhere / "b.wav")
    (watched / "b.wav").symlink_to(elsewhere / "b.wav")
    now = [0.0]
    watcher = FolderWatcher(watched, settle_s=1.0, clock=lambda: now[0])
    for t in (0.0, 2.0, 4.0):
        now[0] = t
        watcher.ready()
    note = f"--watch: {watched / 'b.wav'} is a link to {elsewhere / 'b.wav'}, outside {watched}: reading it"
    assert [r.message for r in caplog.records] == [note]


def test_collect_files_says_what_it_does_with_links(tmp_path, caplog):
    """Links used to be followed, or skipped when they loop, without a word."""
    card, elsewhere = tmp_path / "card", tmp_path / "elsewhere"
    card.mkdir()
    elsewhere.mkdir()
    _wav(card / "a.wav")
    _wav(elsewhere / "b.wav")
    (card / "b.wav").symlink_to(elsewhere / "b.wav")
    (card / "inside.wav").symlink_to(card / "a.wav")
    (card / "loop.wav").symlink_to("loop.wav")
    with caplog.at_level("WARNING"):
        sources = collect_files([card])
    assert sorted(s.path.resolve().name for s in sources) == ["a.wav", "b.wav"]  # inside.wav is a.wav: one source
    messages = [r.message for r in caplog.records]
    assert any(m.startswith(f"skipping {card / 'loop.wav'}: ") for m in messages)
    assert f"{card / 'b.wav'} is a link to {elsewhere / 'b.wav'}, outside {card}: reading it" in messages
    assert not any("inside.wav" in m for m in messages)
