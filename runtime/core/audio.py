"""Reading audio files: any sample rate, bit depth and channel count, whole files, segments and blocks.

Everything returns mono float32 in [-1, 1] at the file's own rate; resampling is ``resample.py``'s job.
Segments and blocks are read with ``seek``, so memory follows the segment, never the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import soundfile as sf

from vocalprobe.runtime.core.errors import (
    AudioError,
    AudioFileNotFound,
    CorruptAudioError,
    EmptyAudioError,
    InvalidSamplesError,
    SegmentOutOfRange,
    UnreadableAudioError,
    os_reason,
    printable_name,
)

Seconds = float

# Extension -> the libsndfile format that reads it. MP3 needs libsndfile >= 1.1, so it is listed only where the
# installed library reads it (a folder scan must never list a file that every read would then refuse).
_FORMAT_OF_EXTENSION = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
AUDIO_EXTENSIONS = tuple(ext for ext, fmt in _FORMAT_OF_EXTENSION.items() if fmt in sf.available_formats())
READABLE_KINDS = "/".join(ext[1:] for ext in AUDIO_EXTENSIONS)


def is_audio_file(path: str | Path) -> bool:
    """True for the extensions we read, in any case (recorders write ``.WAV``)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def seconds_to_samples(duration: Seconds, sample_rate: int) -> int:
    """The one place seconds become sample counts (rounded to the nearest sample)."""
    return int(round(duration * sample_rate))


@dataclass(frozen=True)
class AudioInfo:
    path: str
    sample_rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration(self) -> Seconds:
        return self.frames / self.sample_rate


class WavData(NamedTuple):
    """Bytes of a RIFF/WAVE data chunk: what the header declares (None: the header itself is not all written yet)
    and what the file holds."""

    declared: int | None
    present: int

    @property
    def short(self) -> bool:
        return self.declared is None or self.present < self.declared


def wav_data_size(path: str | Path, *, unfinished_header: bool = False) -> WavData | None:
    """The data size a WAV header declares and the bytes present; None when it cannot tell.

    None for other formats and for placeholder sizes (0 or 0xFFFFFFFF: streaming writers leave the size unknown).
    A file that ends inside its RIFF header, before the data chunk, is ``WavData(None, size)`` with
    ``unfinished_header`` (a recorder still writing it: the folder watcher) and None without (the reader: libsndfile
    refuses such a file itself). Reading (truncated WAVs, which libsndfile silently shortens) and watching (is a
    recording finished?) both ask this one function.
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(12)
        size = path.stat().st_size
        if len(head) < 12:
            cut = bool(head) and b"RIFF".startswith(head[:4])
            return WavData(None, size) if cut and unfinished_header else None
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return WavData(None, size) if unfinished_header else None  # the data chunk is not written yet
            chunk, length = header[:4], int.from_bytes(header[4:], "little")
            if chunk == b"data":
                if length in (0, 0xFFFFFFFF):
                    return None
                return WavData(length, size - handle.tell())
            handle.seek(length + (length & 1), 1)


def truncation(path: str | Path) -> str | None:
    """What a WAV cut short lacks, in words (None: complete, or not a WAV that says): the note a run keeps when it
    analyses the part such a file holds."""
    try:
        data = wav_data_size(path)
    except OSError:
        return None
    if data is None or not data.short or data.declared is None:
        return None
    return (f"truncated: the header declares {data.declared} bytes of audio, the file holds {data.present} (an "
            "interrupted recording or copy); the part it holds was analysed, re-copy it to analyse the rest")


def _soundfile_name(path: Path) -> str | bytes:
    """The name to give soundfile: its bytes where it is not UTF-8 (soundfile cannot encode those), else the text
    (its error messages quote it)."""
    name = str(path)
    return name if printable_name(name) == name else os.fsencode(name)


def _open(path: str | Path, *, truncated_ok: bool = False) -> sf.SoundFile:
    """``truncated_ok``: a WAV whose header declares more audio than the file holds opens with what it holds
    (libsndfile counts the frames present); by default it is refused as truncated."""
    path = Path(path)
    if not path.exists():
        raise AudioFileNotFound(path, "file not found")
    if path.is_dir():
        raise CorruptAudioError(path, "is a folder, not an audio file")
    try:  # libsndfile reports every OS refusal as "System error."; open() first says which one it was
        with path.open("rb") as raw:
            empty = not raw.read(1)
    except OSError as exc:
        raise UnreadableAudioError(path, f"cannot be opened: {os_reason(exc)}") from exc
    if empty:
        raise EmptyAudioError(path, "is an empty file (0 bytes)")
    try:
        handle = sf.SoundFile(_soundfile_name(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise CorruptAudioError(path, f"not a readable {READABLE_KINDS} file ({exc})") from exc
    data = wav_data_size(path) if handle.format == "WAV" and not truncated_ok else None
    if data is not None and data.short:
        handle.close()
        raise CorruptAudioError(path, f"truncated: the header declares {data.declared} bytes of audio, the file holds "
                                f"{data.present} (an interrupted recording or copy; re-copy it from the card)")
    return handle


def audio_info(path: str | Path, *, truncated_ok: bool = False) -> AudioInfo:
    """Header-only facts about a file (no samples are read); ``truncated_ok``: of the part a truncated WAV holds."""
    with _open(path, truncated_ok=truncated_ok) as f:
        return AudioInfo(str(path), int(f.samplerate), int(f.channels), int(f.frames), str(f.subtype))


def header_sample_rate(path: str | Path) -> int | None:
    """A recording's sample rate from its header, or None when it moved or cannot be read: what a table's band
    needs, where a missing file must not stop the table."""
    try:
        return audio_info(path).sample_rate
    except (AudioError, OSError):
        return None


def _to_mono(block: np.ndarray) -> np.ndarray:
    """Average the channels: the paper's clips are mono and any channel may hold the call."""
    return block.mean(axis=1, dtype=np.float64).astype(np.float32) if block.shape[1] > 1 else block[:, 0].copy()


def _check_finite(path: str | Path, samples: np.ndarray, offset: int = 0) -> None:
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad)) + offset
        raise InvalidSamplesError(path, f"{int(bad.sum())} NaN/inf samples (first at sample {first}); "
                                  "re-export the recording or drop it from the manifest")


def read_audio(path: str | Path, start: Seconds | None = None, end: Seconds | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` (or the ``start``..``end`` seconds of it) as mono float32 at the file's sample rate."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and not math.isfinite(value):
            raise SegmentOutOfRange(path, f"{name} {value} is not a finite number of seconds")
    with _open(path) as f:
        sr, total = int(f.samplerate), int(f.frames)
        if total == 0:
            raise EmptyAudioError(path, "contains no audio (0 samples)")
        first = 0 if start is None else seconds_to_samples(start, sr)
        last = total if end is None else seconds_to_samples(end, sr)
        if start is not None and (start < 0 or first >= total):
            raise SegmentOutOfRange(path, f"start {start:.3f} s is outside the file (0..{total / sr:.3f} s)")
        # Label times are rounded by annotation tools: an end up to 10 ms past the file is clamped, not refused.
        if end is not None and (last > total + sr // 100 or end <= 0):
            raise SegmentOutOfRange(path, f"end {end:.3f} s is outside the file (0..{total / sr:.3f} s)")
        last = min(last, total)
        if last <= first:
            raise SegmentOutOfRange(path, f"empty segment: end ({end}) must be after start ({start})")
        f.seek(first)
        try:
            block = f.read(last - first, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise CorruptAudioError(path, f"read failed ({exc})") from exc
    if block.shape[0] < last - first:
        raise CorruptAudioError(path, f"truncated: header promises {last - first} samples from {first}, "
                                f"only {block.shape[0]} could be read")
    mono = _to_mono(block)
    _check_finite(path, mono, first)
    return mono, sr


def iter_blocks(path: str | Path, block_size: int, *, truncated_ok: bool = False) -> Iterator[np.ndarray]:
    """Yield the file as consecutive mono float32 blocks of ``block_size`` samples (the last may be shorter).

    Memory is bounded by ``block_size``; a 24-hour recording streams like a 1-second one. ``truncated_ok``: a WAV cut
    short yields the audio it holds (``truncation`` says how much is missing).
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    with _open(path, truncated_ok=truncated_ok) as f:
        if f.frames == 0:
            raise EmptyAudioError(path, "contains no audio (0 samples)")
        done, expected = 0, int(f.frames)
        while True:
            try:
                block = f.read(block_size, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise CorruptAudioError(path, f"read failed after {done} samples ({exc})") from exc
            if block.shape[0] == 0:
                break
            mono = _to_mono(block)
            _check_finite(path, mono, done)
            done += block.shape[0]
            yield mono
        if done < expected:
            raise CorruptAudioError(path, f"truncated: header promises {expected} samples, only {done} could be read")


CHECK_BLOCK = 1 << 16


def check_audio(path: str | Path) -> AudioInfo:
    """Decode the whole file once, block by block, and return its header facts.

    A header can look fine while the audio is not: a truncated WAV, a FLAC frame that fails to decode, NaN samples.
    Data preparation calls this on every file so such a file is refused before it reaches a manifest.
    """
    info = audio_info(path)
    for _ in iter_blocks(path, CHECK_BLOCK):
        pass
    return info
