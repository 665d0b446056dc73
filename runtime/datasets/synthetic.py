"""The embedded default dataset: synthetic animal calls that are learnable, realistic enough, and deterministic.

Seven call types plus a ``background`` class (noise only: the negative class a detector needs), each with random
duration, pitch, harmonics and SNR over coloured background noise. Clips are written at mixed sample rates (22.05,
44.1, 48 kHz) and bit depths (8/16/24-bit PCM, float) in WAV and FLAC, so every later step exercises real resampling
and I/O. A 10-minute AudioMoth-style "field recording" with calls at known times
and its ground-truth table serves the streaming classifier. Same seed, same bytes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.errors import ManifestError
from vocalprobe.runtime.core.manifest import ManifestRow, read_manifest, write_manifest
from vocalprobe.runtime.datasets.provenance import PROVENANCE_FILE
from vocalprobe.runtime.datasets.splits import assign_splits

Rng = np.random.Generator

SAMPLE_RATES = (22_050, 44_100, 48_000)
# (container format, subtype, extension): 8/16/24-bit PCM, float32, FLAC.
ENCODINGS = (("WAV", "PCM_16", ".wav"), ("WAV", "PCM_24", ".wav"), ("WAV", "FLOAT", ".wav"),
             ("WAV", "PCM_U8", ".wav"), ("FLAC", "PCM_16", ".flac"))
#: Bumped whenever the generator's output changes, so a dataset made by an older version is regenerated.
GENERATOR_VERSION = 2
FIELD_SAMPLE_RATE = 48_000
FIELD_NAME = "20250601_053000.WAV"  # AudioMoth names files by their UTC start time


def _envelope(n: int, attack: float, release: float) -> np.ndarray:
    """Raised-cosine attack and release (fractions of the call), so calls have no clicks at their edges."""
    env = np.ones(n)
    a, r = max(1, int(n * attack)), max(1, int(n * release))
    env[:a] = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, a))
    env[-r:] = np.minimum(env[-r:], 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, r)))
    return env


def _tone(freq: np.ndarray, sr: int, harmonics: int, tilt: float, rng: Rng) -> np.ndarray:
    """Sum of harmonics of an instantaneous-frequency track (Hz per sample), kept below Nyquist."""
    phase = 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)
    out = np.zeros_like(freq)
    for k in range(1, harmonics + 1):
        audible = (freq * k) < 0.45 * sr
        out += audible * np.sin(k * phase) / k ** tilt
    return out


def up_sweep(n: int, sr: int, rng: Rng) -> np.ndarray:
    f0 = rng.uniform(500, 1500)
    f1 = f0 * rng.uniform(2.5, 4.5)
    freq = f0 * (f1 / f0) ** np.linspace(0, 1, n)
    return _tone(freq, sr, rng.integers(1, 3), 1.5, rng) * _envelope(n, 0.1, 0.1)


def down_sweep(n: int, sr: int, rng: Rng) -> np.ndarray:
    return up_sweep(n, sr, rng)[::-1].copy()


def harmonic_stack(n: int, sr: int, rng: Rng) -> np.ndarray:
    f0 = rng.uniform(180, 600)
    freq = f0 * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(1, 3) * np.arange(n) / sr))
    return _tone(freq, sr, int(rng.integers(5, 10)), rng.uniform(0.5, 1.2), rng) * _envelope(n, 0.15, 0.25)


def am_trill(n: int, sr: int, rng: Rng) -> np.ndarray:
    carrier = np.full(n, rng.uniform(1800, 4000))
    rate = rng.uniform(15, 35)
    am = 0.5 + 0.5 * np.sin(2 * np.pi * rate * np.arange(n) / sr)
    return _tone(carrier, sr, 2, 2.0, rng) * am ** 2 * _envelope(n, 0.05, 0.1)


def click_train(n: int, sr: int, rng: Rng) -> np.ndarray:
    out = np.zeros(n)
    rate = rng.uniform(8, 40)
    width = int(0.0015 * sr)
    click = rng.standard_normal(width) * np.hanning(width)
    for start in np.arange(0, n - width, sr / rate).astype(int):
        out[start:start + width] += click * rng.uniform(0.6, 1.0)
    return out


def bark(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Broadband noise burst shaped by two formant-like resonances, fast attack and exponential decay."""
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    shape = sum(np.exp(-0.5 * ((freqs - fc) / bw) ** 2)
                for fc, bw in ((rng.uniform(500, 900), 250), (rng.uniform(1500, 2500), 500)))
    burst = np.fft.irfft(spectrum * shape, n)
    f0 = np.full(n, rng.uniform(250, 500))
    t = np.arange(n) / sr
    decay = np.exp(-t / (0.35 * n / sr))
    voiced = _tone(f0, sr, 6, 1.0, rng)
    return (burst / (np.abs(burst).max() + 1e-9) + 0.4 * voiced) * decay * _envelope(n, 0.02, 0.1)


def vibrato_whistle(n: int, sr: int, rng: Rng) -> np.ndarray:
    t = np.arange(n) / sr
    freq = rng.uniform(3000, 6000) + rng.uniform(200, 700) * np.sin(2 * np.pi * rng.uniform(5, 12) * t)
    return _tone(freq, sr, 1, 1.0, rng) * _envelope(n, 0.1, 0.15)


def no_call(n: int, sr: int, rng: Rng) -> np.ndarray:
    """The negative class: the clip is background noise only, as most of any field recording is."""
    return np.zeros(n)


@dataclass(frozen=True)
class CallType:
    name: str
    synth: Callable[[int, int, Rng], np.ndarray]
    min_seconds: float
    max_seconds: float


CALL_TYPES = (
    CallType("up_sweep", up_sweep, 0.05, 1.0),
    CallType("down_sweep", down_sweep, 0.05, 1.0),
    CallType("harmonic_stack", harmonic_stack, 0.2, 3.0),
    CallType("am_trill", am_trill, 0.2, 2.0),
    CallType("click_train", click_train, 0.3, 3.0),
    CallType("bark", bark, 0.08, 0.6),
    CallType("vibrato_whistle", vibrato_whistle, 0.3, 2.5),
    CallType("background", no_call, 0.3, 3.0),
)
#: The class a detector should not report (`vocalprobe stream --ignore background`).
BACKGROUND = "background"
CALLS = tuple(c for c in CALL_TYPES if c.name != BACKGROUND)


def background(n: int, sr: int, rng: Rng) -> np.ndarray:
    """Unit-RMS 1/f-ish ("pink") noise with a low wind-like rumble: the bed every call sits on."""
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def synth_call(call: CallType, sr: int, rng: Rng) -> np.ndarray:
    seconds = float(np.exp(rng.uniform(np.log(call.min_seconds), np.log(call.max_seconds))))
    signal = call.synth(max(16, int(seconds * sr)), sr, rng)
    rms = np.sqrt(np.mean(signal ** 2))
    return signal / rms if rms > 0 else signal


def make_clip(call: CallType, sr: int, rng: Rng) -> np.ndarray:
    """One labelled clip: the call with short noise margins, at a random SNR, peak-scaled to a random level."""
    signal = synth_call(call, sr, rng)
    margin = [int(rng.uniform(0.01, 0.15) * sr) for _ in range(2)]
    snr_db = rng.uniform(3, 30)
    clip = background(len(signal) + sum(margin), sr, rng) * 10 ** (-snr_db / 20)
    clip[margin[0]:margin[0] + len(signal)] += signal
    return clip / np.abs(clip).max() * rng.uniform(0.3, 0.95)


def _write(path: Path, samples: np.ndarray, sr: int, fmt: str, subtype: str) -> None:
    """Write through a buffer and rename, so an interrupted generation never leaves a half file."""
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), sr, format=fmt, subtype=subtype)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def generate_clips(out_dir: Path, *, seed: int, clips_per_class: int) -> list[ManifestRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for call in CALL_TYPES:
        folder = out_dir / "clips" / call.name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(clips_per_class):
            sr = int(rng.choice(SAMPLE_RATES))
            fmt, subtype, ext = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
            clip = make_clip(call, sr, rng)
            path = folder / f"{call.name}_{i:03d}{ext}"
            _write(path, clip, sr, fmt, subtype)
            rows.append(ManifestRow(path.relative_to(out_dir).as_posix(), call.name))
    return rows


def generate_field_recording(out_dir: Path, *, seed: int, minutes: float = 10.0,
                             sample_rate: int = FIELD_SAMPLE_RATE) -> tuple[Path, Path]:
    """A long recorder file with calls at known times, and its ground truth (file,start_s,end_s,label)."""
    rng = np.random.default_rng(seed + 1)
    n = int(minutes * 60 * sample_rate)
    audio = (background(n, sample_rate, rng) * 0.02).astype(np.float32)
    events = []
    t = rng.uniform(1.0, 4.0)
    while True:
        call = CALLS[int(rng.integers(len(CALLS)))]
        signal = synth_call(call, sample_rate, rng) * 0.02 * 10 ** (rng.uniform(10, 30) / 20)
        start = int(t * sample_rate)
        if start + len(signal) >= n - sample_rate:
            break
        audio[start:start + len(signal)] += signal.astype(np.float32)
        events.append((round(start / sample_rate, 4), round((start + len(signal)) / sample_rate, 4), call.name))
        t = (start + len(signal)) / sample_rate + rng.uniform(2.0, 8.0)
    audio /= max(1.0, float(np.abs(audio).max()) / 0.95)
    folder = out_dir / "field"
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / FIELD_NAME
    _write(wav, audio, sample_rate, "WAV", "PCM_16")
    truth = folder / (Path(FIELD_NAME).stem + ".truth.csv")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "start_s", "end_s", "label"])
    writer.writerows((FIELD_NAME, s, e, label) for s, e, label in events)
    atomic_write_text(truth, text.getvalue())
    return wav, truth


def generate_dataset(out_dir: str | Path, *, seed: int = 42, clips_per_class: int = 60, field_minutes: float = 10.0,
                     stratify: bool = True) -> Path:
    """Write clips, a split manifest (``manifest.csv``) and, if ``field_minutes`` > 0, the field recording.

    Returns the manifest path. Re-running with the same arguments rewrites identical files.
    """
    out_dir = Path(out_dir)
    if (out_dir / "clips").exists():
        shutil.rmtree(out_dir / "clips")  # a different clips_per_class must not leave stale clips behind
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = generate_clips(out_dir, seed=seed, clips_per_class=clips_per_class)
    rows, _ = assign_splits(rows, seed=seed, stratify=stratify)
    if field_minutes > 0:
        generate_field_recording(out_dir, seed=seed, minutes=field_minutes)
    manifest_path = out_dir / "manifest.csv"
    write_manifest(manifest_path, rows)
    (out_dir / PROVENANCE_FILE).unlink(missing_ok=True)  # a real dataset's record, if one was prepared here before
    atomic_write_text(out_dir / "synthetic.json", json.dumps(
        {"generator_version": GENERATOR_VERSION, "seed": seed, "clips_per_class": clips_per_class,
         "field_minutes": field_minutes, "stratify": stratify,
         "manifest_sha256": _file_sha256(manifest_path)}, indent=2) + "\n")
    return manifest_path


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _marker(out_dir: Path) -> dict | None:
    try:
        info = json.loads((out_dir / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # absent, or a marker cut by a crash
    return info if isinstance(info, dict) else None


def is_synthetic(out_dir: str | Path) -> bool:
    """True when ``out_dir/manifest.csv`` is the one this generator wrote there: the manifest's bytes match the hash
    in its synthetic.json (a manifest prepared over it from real data does not). A marker from before the hash was
    recorded is accepted when every row is a generated clip (``clips/<call type>/...`` labelled with that type)."""
    out_dir = Path(out_dir)
    manifest, info = out_dir / "manifest.csv", _marker(out_dir)
    if not manifest.is_file() or info is None:
        return False
    if "manifest_sha256" in info:
        return info["manifest_sha256"] == _file_sha256(manifest)
    try:
        rows = read_manifest(manifest).rows
    except ManifestError:
        return False
    names = {c.name for c in CALL_TYPES}
    return all(r.label in names and r.path.startswith(f"clips/{r.label}/") for r in rows)


def is_current(out_dir: str | Path, **settings) -> bool:
    """True when ``out_dir`` holds a complete dataset made by this generator version with these settings."""
    info = _marker(Path(out_dir))  # a marker cut by a crash: the dataset is regenerated (same seed, same bytes)
    return (info is not None and is_synthetic(out_dir) and info.get("generator_version") == GENERATOR_VERSION
            and all(info.get(k) == v for k, v in settings.items()))
