"""The review sheet (runtime/field/review.py, `vocalprobe review`): the top detections per class with a
spectrogram, an audio player and the score, in one HTML file, rendered by a real headless browser."""

from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_CLASSES, DEFAULT_FREQS, build_band_graph, tone_track
from typer.testing import CliRunner

from vocalprobe.cli import app
from vocalprobe.runtime.field.review import ReviewError, png_bytes, spectrogram_image, top_detections, write_review

runner = CliRunner()


def _decode_png(data: bytes) -> np.ndarray:
    """Our writer's PNGs (8-bit RGB, filter 0) back to pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    idat = b"".join(data[i + 8:i + 8 + n] for i, n in _chunks(data) if data[i + 4:i + 8] == b"IDAT")
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + 3 * width)
    assert not rows[:, 0].any()
    return rows[:, 1:].reshape(height, width, 3)


def _chunks(data: bytes):
    i = 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        yield i, n
        i += 12 + n


@pytest.fixture
def night(tmp_path):
    """A 48 kHz recording with two calls of each class, run through `vocalprobe stream`."""
    graph = build_band_graph(tmp_path / "m.onnx")
    freq = dict(zip(DEFAULT_CLASSES, DEFAULT_FREQS))
    calls = [(1, 2, "low"), (3, 4, "mid"), (5, 6, "high"), (8, 9, "low"), (10, 11, "mid"), (12, 13, "high")]
    audio = tmp_path / "recordings" / "site A" / "20250601_053000.WAV"
    audio.parent.mkdir(parents=True)
    sf.write(audio, tone_track([(s, e, freq[c]) for s, e, c in calls], 14, 48_000), 48_000, subtype="PCM_16")
    out = tmp_path / "out"
    result = runner.invoke(app, ["stream", str(tmp_path / "recordings"), "-m", str(graph), "-o", str(out),
                                 "--window", "1", "--min-conf", "0.6", "--format", "csv"])
    assert result.exit_code == 0, result.output
    return tmp_path / "recordings", out


def test_png_writer_and_spectrogram():
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (255, 10, 20)
    np.testing.assert_array_equal(_decode_png(png_bytes(rgb)), rgb)
    tone = np.sin(2 * np.pi * 4000 * np.arange(16_000) / 16_000)
    image = spectrogram_image(tone, 16_000)
    assert image.shape[0] == 128 and 10 < image.shape[1] <= 480
    brightness = image.astype(float).sum(axis=(1, 2))
    # 4 kHz of an 8 kHz band, drawn with low frequencies at the bottom: the brightest row is in the middle
    assert abs(int(np.argmax(brightness)) - 64) <= 2


def test_review_sheet_has_the_top_detections_per_class(night, tmp_path):
    recordings, out = night
    result = runner.invoke(app, ["review", str(out), "--audio", str(recordings), "--top", "1"])
    assert result.exit_code == 0, result.output
    page = (out / "review.html").read_text()
    assert f"review: {out / 'review.html'} (high 1, low 1, mid 1)" in result.output
    for label in DEFAULT_CLASSES:
        assert f'<h2 id="{label}">{label} <small>(top 1 of 2)</small>' in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    sounds = re.findall(r'src="data:audio/wav;base64,([^"]+)"', page)
    assert len(images) == len(sounds) == 3 and "site A/20250601_053000.WAV" in page
    pixels = _decode_png(base64.b64decode(images[0]))
    assert pixels.shape[0] == 128 and pixels.std() > 10
    clip, rate = sf.read(__import__("io").BytesIO(base64.b64decode(sounds[0])))
    assert rate == 48_000 and 1.9 <= clip.size / rate <= 2.01  # the 1 s detection +- 0.5 s, at the file's rate
    scores = [float(s) for s in re.findall(r'<span class="score">([0-9.]+)</span>', page)]
    assert len(scores) == 3 and min(scores) >= 0.6

    all_of_them = write_review(out, tmp_path / "all.html", audio_root=recordings, top=50)
    assert all_of_them.shown == {"high": 2, "low": 2, "mid": 2} and not all_of_them.unreadable


def test_missing_audio_is_shown_and_counted(night, tmp_path):
    _, out = night
    result = runner.invoke(app, ["review", str(out), "--audio", str(tmp_path / "elsewhere"), "-o",
                                 str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "note: 6 clip(s) could not be read" in result.output and "--audio" in result.output
    assert (tmp_path / "r.html").read_text().count("audio unavailable") == 6
    bad = runner.invoke(app, ["review", str(tmp_path)])
    assert bad.exit_code == 1 and "error:" in bad.output and "no detections table" in bad.output
    with pytest.raises(ReviewError, match="--top must be >= 1"):
        top_detections([], 0)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_review_sheet_renders_in_a_headless_browser(night, tmp_path):
    recordings, out = night
    sheet = write_review(out, tmp_path / "review.html", audio_root=recordings, top=2)
    shot = tmp_path / "shot.png"
    run = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--screenshot={shot}", "--window-size=1100,900", sheet.path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr
    pil = pytest.importorskip("PIL.Image", reason="Pillow reads the screenshot")
    image = np.asarray(pil.open(shot).convert("RGB"), dtype=np.float64)
    assert image.shape[:2] == (900, 1100)
    # the spectrograms' colours are on the page: many pixels far from the light grey background and white cards
    coloured = (np.abs(image - image.mean(axis=2, keepdims=True)).max(axis=2) > 40).mean()
    assert coloured > 0.02, coloured
    shutil.copy(shot, out / "review-screenshot.png")
