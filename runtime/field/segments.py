"""`vocalprobe segments`: each detection of a stream run (or the best ``top`` per class) cut from its recording into
an audio clip, one folder per class, to listen to them in any player (BirdNET-Analyzer's ``segments``), and a
per-class summary of the run (count, mean and best confidence, first and last detection).

Detections are read through ``read_detections`` (the run's ``detections.csv``); clips keep the recording's own
rate and are written as 16-bit WAV. A recording that cannot be read is listed and skipped, the rest is cut.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from vocalprobe.runtime.core.atomic import atomic_write_bytes, atomic_write_text
from vocalprobe.runtime.core.detections.layout import Detection, read_detections
from vocalprobe.runtime.core.errors import VocalprobeError

SUMMARY_CSV = "summary.csv"
INDEX_CSV = "segments.csv"
SUMMARY_COLUMNS = ("label", "count", "clips", "mean_confidence", "max_confidence", "first_file", "first_s",
                   "last_file", "last_s")
INDEX_COLUMNS = ("clip", "file", "start_s", "end_s", "label", "confidence")
MAX_CLIP_S = 60.0  # a merged event longer than this is cut to its first minute


class SegmentsError(VocalprobeError):
    """Options or a detections table segments cannot work with."""


@dataclass(frozen=True)
class ClassSummary:
    label: str
    count: int  # detections at or above min_conf
    clips: int  # of them cut into clips
    mean_confidence: float
    max_confidence: float
    first: Detection  # earliest by (file, start)
    last: Detection

    def row(self) -> tuple:
        return (self.label, self.count, self.clips, f"{self.mean_confidence:.4f}", f"{self.max_confidence:.4f}",
                self.first.file, f"{self.first.start_s:g}", self.last.file, f"{self.last.start_s:g}")


@dataclass
class SegmentsReport:
    out: Path
    summary: list[ClassSummary]
    clips: list[tuple[Path, Detection]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), one per recording


def _safe(name: str) -> str:
    """A file-name part from a class or recording name (path separators and odd characters become _)."""
    return re.sub(r"[^\w.+-]+", "_", name).strip("._") or "_"


def chosen(items: list[Detection], top: int | None) -> dict[str, list[Detection]]:
    """Per class (by name), its detections best first (ties: file, then time), at most ``top``."""
    by_class: dict[str, list[Detection]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    return {label: sorted(group, key=lambda d: (-d.confidence, d.file, d.start_s))[:top]
            for label, group in sorted(by_class.items())}


def summarize(items: list[Detection], clips: dict[str, int]) -> list[ClassSummary]:
    rows = []
    for label, group in chosen(items, None).items():
        by_time = sorted(group, key=lambda d: (d.file, d.start_s))
        confidences = [d.confidence for d in group]
        rows.append(ClassSummary(label, len(group), clips.get(label, 0), sum(confidences) / len(confidences),
                                 max(confidences), by_time[0], by_time[-1]))
    return rows


def _wav(path: Path, start_s: float, end_s: float, pad_s: float) -> bytes:
    import soundfile as sf

    with sf.SoundFile(str(path)) as handle:
        rate = handle.samplerate
        first = max(0, int(round((start_s - pad_s) * rate)))
        last = min(handle.frames, int(round(min(end_s + pad_s, start_s - pad_s + MAX_CLIP_S) * rate)))
        if last <= first:
            raise SegmentsError(f"no audio between {start_s:g} and {end_s:g} s (the recording is "
                                f"{handle.frames / rate:g} s long)")
        handle.seek(first)
        samples = handle.read(last - first, dtype="float32", always_2d=True)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def cut_segments(detections: str | Path, out: str | Path, *, audio_root: str | Path = ".", top: int | None = None,
                 min_conf: float = 0.0, pad_s: float = 0.0) -> SegmentsReport:
    """Cut the detections of ``detections`` (a stream output folder or its table) with confidence >= ``min_conf``
    (the ``top`` best per class; None: all) into ``out/CLASS/RANK_CONFIDENCE_RECORDING_START-ENDs.wav``, with
    ``pad_s`` of context each side; write ``out/segments.csv`` (the clips) and ``out/summary.csv`` (per class)."""
    if top is not None and top < 1:
        raise SegmentsError(f"--top must be >= 1, got {top}")
    if pad_s < 0:
        raise SegmentsError(f"--pad must be >= 0 seconds, got {pad_s}")
    items = [d for d in read_detections(detections) if d.confidence >= min_conf]
    out, audio_root = Path(out), Path(audio_root)
    report = SegmentsReport(out, [])
    failed: dict[str, str] = {}
    for label, group in chosen(items, top).items():
        for rank, item in enumerate(group, start=1):
            if item.file in failed:
                continue
            name = (f"{rank:04d}_{item.confidence:.3f}_{_safe(Path(item.file).with_suffix('').as_posix())}_"
                    f"{item.start_s:g}-{item.end_s:g}s.wav")
            clip = out / _safe(label) / name
            try:
                data = _wav(audio_root / item.file, item.start_s, item.end_s, pad_s)
            except (VocalprobeError, RuntimeError, OSError) as exc:  # soundfile's LibsndfileError: a RuntimeError
                failed[item.file] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                continue
            atomic_write_bytes(clip, data)
            report.clips.append((clip, item))
    report.unreadable = sorted(failed.items())
    counts: dict[str, int] = {}
    for _, item in report.clips:
        counts[item.label] = counts.get(item.label, 0) + 1
    report.summary = summarize(items, counts)
    atomic_write_text(out / SUMMARY_CSV, _csv(SUMMARY_COLUMNS, [s.row() for s in report.summary]))
    atomic_write_text(out / INDEX_CSV, _csv(INDEX_COLUMNS, [
        (clip.relative_to(out).as_posix(), d.file, f"{d.start_s:g}", f"{d.end_s:g}", d.label, f"{d.confidence:.4f}")
        for clip, d in report.clips]))
    return report


def _csv(header: tuple[str, ...], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
