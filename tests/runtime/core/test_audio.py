"""Audio reading: every rate, depth and channel layout the field throws at us, and every kind of bad file."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from vocalprobe.runtime.core import errors
from vocalprobe.runtime.core.audio import audio_info, is_audio_file, iter_blocks, read_audio, seconds_to_samples
from vocalprobe.runtime.core.clips import load_clip
from vocalprobe.runtime.core.preprocess import MIN_SAMPLES, preprocess


def sine(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype,tol", [
    ("WAV", "PCM_U8", 1e-2), ("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "PCM_32", 1e-7),
    ("WAV", "FLOAT", 0), ("WAV", "DOUBLE", 1e-7), ("FLAC", "PCM_16", 1e-4), ("FLAC", "PCM_24", 1e-6),
])
def test_bit_depths_read_back(tmp_path, fmt, subtype, tol):
    x = sine(22_050, 0.5)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, 22_050, format=fmt, subtype=subtype)
    y, sr = read_audio(path)
    assert sr == 22_050 and y.dtype == np.float32 and y.shape == x.shape
    assert np.max(np.abs(y - x)) <= tol + 1e-9


def test_ogg_vorbis_reads(tmp_path):
    x = sine(44_100, 1.0)
    path = tmp_path / "clip.ogg"
    sf.write(path, x, 44_100, format="OGG", subtype="VORBIS")
    y, sr = read_audio(path)
    assert sr == 44_100 and abs(len(y) - len(x)) < 2048 and np.corrcoef(y[:40000], x[:40000])[0, 1] > 0.9


@pytest.mark.parametrize("sr", [2_000, 384_000])
def test_extreme_sample_rates_resample_to_16k(tmp_path, sr):
    x = sine(sr, 1.0, freq=300.0)
    path = tmp_path / "clip.wav"
    sf.write(path, x, sr, subtype="PCM_16")
    y = load_clip(path)
    assert abs(len(y) - 16_000) <= 1
    expected = sine(16_000, 1.0, freq=300.0)
    assert np.max(np.abs(y[200:-200] - expected[200:-200])) < 0.02  # away from the filter's edges


def test_three_channels_are_averaged(tmp_path):
    chans = np.stack([sine(16_000, 0.3, 200), sine(16_000, 0.3, 400), np.zeros(4800, np.float32)], axis=1)
    path = tmp_path / "three.wav"
    sf.write(path, chans, 16_000, subtype="FLOAT")
    y, _ = read_audio(path)
    np.testing.assert_allclose(y, chans.mean(axis=1), atol=1e-7)


def test_20ms_clip_is_tiled_to_receptive_field(tmp_path):
    x = sine(48_000, 0.02, 1000)
    path = tmp_path / "short.wav"
    sf.write(path, x, 48_000, subtype="PCM_24")
    y = preprocess(load_clip(path))
    assert len(y) == MIN_SAMPLES and np.isclose(np.abs(y).max(), 1.0)
    period = 320  # 20 ms at 16 kHz: the clip repeats, it is not zero-padded
    np.testing.assert_allclose(y[period:2 * period], y[:period])


def test_segment_read_memory_does_not_grow_with_file(tmp_path):
    sr = 8_000
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:  # 30 minutes, written in blocks
        for _ in range(30):
            f.write(np.random.default_rng(0).uniform(-0.5, 0.5, 60 * sr).astype(np.float32))
    assert path.stat().st_size > 28_000_000
    tracemalloc.start()
    y, _ = read_audio(path, start=1700.0, end=1701.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(y) == sr
    assert peak < 1_000_000, f"reading 1 s of a 29 MB file peaked at {peak} bytes"


def test_segment_matches_whole_file_slice(tmp_path):
    x = np.random.default_rng(1).uniform(-1, 1, 48_000).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, x, 16_000, subtype="FLOAT")
    y, _ = read_audio(path, 0.5, 1.25)
    np.testing.assert_array_equal(y, x[8000:20000])
    blocks = list(iter_blocks(path, 7001))
    np.testing.assert_array_equal(np.concatenate(blocks), x)
    assert max(len(b) for b in blocks) == 7001


def test_missing_file(tmp_path):
    with pytest.raises(errors.AudioFileNotFound, match="nope.wav: file not found"):
        read_audio(tmp_path / "nope.wav")


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(errors.CorruptAudioError, match="junk.wav"):
        read_audio(path)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_truncated_file(tmp_path, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    sf.write(path, np.random.default_rng(0).uniform(-.5, .5, 48_000).astype(np.float32), 48_000, format=fmt,
             subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.CorruptAudioError, match="cut"):
        read_audio(path)
        list(iter_blocks(path, 4096))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16_000)
    with pytest.raises(errors.EmptyAudioError, match="0 samples"):
        read_audio(path)


def test_nan_samples(tmp_path):
    x = sine(16_000, 0.1)
    x[100] = np.nan
    x[200] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16_000, subtype="FLOAT")
    with pytest.raises(errors.InvalidSamplesError, match="2 NaN/inf samples \\(first at sample 100\\)"):
        read_audio(path)


@pytest.mark.parametrize("start,end", [(5.0, None), (-1.0, 0.5), (0.2, 0.1), (0.0, 3.0)])
def test_segment_outside_file(tmp_path, start, end):
    path = tmp_path / "one.wav"
    sf.write(path, sine(16_000, 1.0), 16_000)
    with pytest.raises(errors.SegmentOutOfRange, match="one.wav"):
        read_audio(path, start, end)


def test_info_and_helpers(tmp_path):
    path = tmp_path / "REC.WAV"
    sf.write(path, np.zeros((800, 2), np.float32), 8_000, subtype="PCM_24")
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames, info.subtype) == (8000, 2, 800, "PCM_24")
    assert info.duration == pytest.approx(0.1)
    assert is_audio_file(path) and is_audio_file("x.Flac") and not is_audio_file("x.mp4")
    assert seconds_to_samples(0.5, 44_100) == 22_050


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(errors.EmptyAudioError, match="zero.wav: is an empty file \\(0 bytes\\)"):
        audio_info(path)


@pytest.mark.parametrize("start,end", [(0.0, float("inf")), (float("inf"), None), (float("nan"), 0.5)])
def test_non_finite_segment_is_refused(tmp_path, start, end):
    path = tmp_path / "one.wav"
    sf.write(path, sine(16_000, 1.0), 16_000)
    with pytest.raises(errors.SegmentOutOfRange, match="not a finite number of seconds"):
        read_audio(path, start, end)


def test_check_audio_decodes_what_the_header_hides(tmp_path):
    from vocalprobe.runtime.core.audio import check_audio

    path = tmp_path / "bad.flac"
    sf.write(path, np.random.default_rng(1).uniform(-.5, .5, 48_000).astype(np.float32), 16_000)
    data = bytearray(path.read_bytes())
    for k in range(len(data) // 2, len(data) // 2 + 2000):
        data[k] = (data[k] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    assert audio_info(path).frames == 48_000
    with pytest.raises(errors.CorruptAudioError, match="bad.flac"):
        check_audio(path)
    good = tmp_path / "good.wav"
    sf.write(good, sine(16_000, 0.5), 16_000)
    assert check_audio(good).frames == 8_000


def test_mp3_extension_follows_libsndfile():
    from vocalprobe.runtime.core.audio import AUDIO_EXTENSIONS

    assert (".mp3" in AUDIO_EXTENSIONS) == ("MP3" in sf.available_formats())
    assert is_audio_file("x.MP3") == ("MP3" in sf.available_formats())


def test_os_reason_words():
    import errno

    assert errors.os_reason(PermissionError(errno.EACCES, "Permission denied")) == "permission denied"
    assert errors.os_reason(OSError(errno.ENOSPC, "No space left on device")) == "no space left on device"
    assert errors.os_reason(OSError(errno.EBUSY, "Device or resource busy")) == "Device or resource busy"
