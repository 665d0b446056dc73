"""A review sheet of a run's best detections: one HTML file with a spectrogram, an audio player and the score of
each of the top detections per class, so a night's results are checked in a browser instead of read in tables.

The page is self-contained (images and sound are data URIs): it opens from a USB stick or an e-mail with no server
and no folder beside it. Each clip is the detection with ``PAD_S`` of context on both sides (at most ``MAX_CLIP_S``),
at the recording's own rate, so ultrasonic calls keep their band. Torch-free and matplotlib-free: the spectrogram is
a numpy STFT written as a PNG by a small zlib writer.
"""

from __future__ import annotations

import base64
import html
import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vocalprobe.runtime.core.detections.layout import Detection, read_detections
from vocalprobe.runtime.core.errors import VocalprobeError

__all__ = ["ReviewError", "ReviewSheet", "top_detections", "write_review", "png_bytes", "spectrogram_image"]

PAD_S = 0.5  # context before and after each detection
MAX_CLIP_S = 10.0
SPECTROGRAM_HEIGHT = 128  # frequency rows shown (the STFT's bins, cut to this many from the top of the band)
MAX_COLUMNS = 480  # time columns at most: long clips get a larger hop


class ReviewError(VocalprobeError):
    """A detections folder or table the review sheet cannot be made from."""


@dataclass
class ReviewSheet:
    path: Path
    shown: dict[str, int]  # class -> detections on the page
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): shown without sound


def top_detections(items: Sequence[Detection], top: int) -> dict[str, list[Detection]]:
    """The ``top`` best-scored detections of every class (classes by name; ties: file, then time)."""
    if top < 1:
        raise ReviewError(f"--top must be >= 1, got {top}")
    by_class: dict[str, list[Detection]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    return {label: sorted(group, key=lambda d: (-d.confidence, d.file, d.start_s))[:top]
            for label, group in sorted(by_class.items())}


# ----------------------------------------------------------------------------------------------------------------
# pictures and sound


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB image ``[height, width, 3]`` as PNG (filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


#: A dark-to-bright colour ramp (anchors of a viridis-like map), so quiet is dark blue and loud is yellow.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def spectrogram_image(samples: np.ndarray, sample_rate: int, *, height: int = SPECTROGRAM_HEIGHT,
                      max_columns: int = MAX_COLUMNS, dynamic_range_db: float = 70.0) -> np.ndarray:
    """Log-magnitude STFT of mono ``samples`` as RGB ``[height, columns, 3]``, low frequencies at the bottom."""
    n_fft = 2 * height
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = max(n_fft // 4, -(-(x.size - n_fft) // max_columns) if x.size > n_fft else 1)
    starts = np.arange(0, x.size - n_fft + 1, hop)
    frames = x[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1))[:, 1:height + 1].T ** 2  # [height, columns], DC dropped
    db = 10 * np.log10(power + 1e-12)
    level = np.clip((db - (db.max() - dynamic_range_db)) / dynamic_range_db, 0.0, 1.0)[::-1]
    position = level * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).round().astype(np.uint8)


def _clip(path: Path, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as handle:
        rate = handle.samplerate
        first = max(0, int((start_s - PAD_S) * rate))
        last = min(handle.frames, int(min(end_s + PAD_S, start_s - PAD_S + MAX_CLIP_S) * rate))
        handle.seek(first)
        samples = handle.read(max(0, last - first), dtype="float32", always_2d=True).mean(axis=1)
    if samples.size == 0:
        raise ReviewError(f"{path}: no audio between {start_s:g} and {end_s:g} s")
    return samples, rate


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _data_uri(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


# ----------------------------------------------------------------------------------------------------------------
# the page

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h2{margin-top:1.5em;border-bottom:1px solid #ccc}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:340px}
.card img{width:100%;height:128px;image-rendering:pixelated;display:block}
.card audio{width:100%;margin-top:4px}
.score{font-weight:bold;font-size:1.1em}.meta{font-size:.85em;color:#555;word-break:break-all}
.missing{color:#a00;font-size:.85em}"""


def _card(rank: int, item: Detection, audio_root: Path, unreadable: list[tuple[str, str]]) -> str:
    head = (f'<div class="card"><div><span class="score">{item.confidence:.3f}</span> #{rank}</div>'
            f'<div class="meta">{html.escape(item.file)} · {item.start_s:.2f}–{item.end_s:.2f} s</div>')
    try:
        samples, rate = _clip(audio_root / item.file, item.start_s, item.end_s)
    except (VocalprobeError, RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        unreadable.append((item.file, reason))
        return head + f'<div class="missing">audio unavailable: {html.escape(reason)}</div></div>'
    image = _data_uri("image/png", png_bytes(spectrogram_image(samples, rate)))
    sound = _data_uri("audio/wav", _wav_bytes(samples, rate))
    band = f"0–{rate / 2000:g} kHz"
    return (head + f'<img alt="spectrogram, {band}" title="{band}; the detection ± {PAD_S:g} s" src="{image}">'
            f'<audio controls preload="none" src="{sound}"></audio></div>')


def write_review(detections: str | Path, out_path: str | Path, *, audio_root: str | Path = ".",
                 top: int = 50) -> ReviewSheet:
    """Write the review page of ``detections`` (a stream output folder or its ``detections.csv``) to
    ``out_path``; audio paths are the table's ``file`` column under ``audio_root``."""
    from vocalprobe.runtime.core.atomic import atomic_write_bytes

    items = read_detections(detections)
    chosen = top_detections(items, top)
    audio_root, out_path = Path(audio_root), Path(out_path)
    unreadable: list[tuple[str, str]] = []
    sections = []
    for label, group in chosen.items():
        cards = "".join(_card(i + 1, item, audio_root, unreadable) for i, item in enumerate(group))
        sections.append(f'<h2 id="{html.escape(label)}">{html.escape(label)} <small>(top {len(group)} of '
                        f'{sum(d.label == label for d in items)})</small></h2><div class="grid">{cards}</div>')
    title = f"vocalprobe review: {Path(detections).name}"
    summary = (f"{sum(len(g) for g in chosen.values())} detection(s) of {len(chosen)} class(es), best scores first"
               if chosen else "no detections in this table")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{summary}</p>"
            + "".join(sections) + "</body></html>")
    atomic_write_bytes(out_path, page.encode("utf-8"))
    return ReviewSheet(out_path, {label: len(group) for label, group in chosen.items()}, unreadable)
