"""`vocalprobe search`: the archive's windows nearest to an example call, as a Raven table to review.

The query is embedded with the archive's own graph (its sha256 is checked), over the same stream of windows
``embed`` used, so a query cut from an archived recording finds that window with score 1. Scores are cosine
similarities. Approximate search takes ``candidates`` from the usearch index and re-ranks them exactly on the
stored vectors; ``exact`` scores every stored vector.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vocalprobe.runtime.engine.batches import window_embeddings
from vocalprobe.runtime.archive.store import ArchiveDB, ArchiveError
from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.audio import header_sample_rate
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.engine.sources import FileSource
from vocalprobe.runtime.engine.windows import WindowPlan

HIT_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
               "Begin Path", "File Offset (s)", "Score", "Rank")
CSV_COLUMNS = ("rank", "score", "file", "path", "start_s", "end_s", "deployment", "window_id")


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    window_id: int
    file: str  # the recording's name in the archive
    path: Path  # where its audio is
    deployment: str
    start_s: float
    end_s: float
    sample_rate: int | None = None  # the recording's own rate (None: its file could not be read)


def archive_model(archive: ArchiveDB, model_path: str | Path | None, *, threads: int | None = None) -> OnnxModel:
    """The archive's graph (the one named in its metadata unless ``model_path`` is given), refused when its sha256
    is not the archive's."""
    settings = archive.settings()
    path = Path(model_path) if model_path is not None else Path(settings["graph_file"])
    if not path.is_file():
        raise ArchiveError(f"the archive's graph {path} is missing; give it with -m GRAPH.onnx")
    sha = file_sha256(path)
    if sha != settings["graph_sha256"]:
        raise ArchiveError(f"{path} is not the graph this archive was embedded with (sha256 {sha[:12]}... != "
                           f"{settings['graph_sha256'][:12]}...)")
    return OnnxModel(path, provider="cpu", threads=threads)


def archive_plan(archive: ArchiveDB) -> WindowPlan:
    s = archive.settings()
    return WindowPlan(int(s["window_samples"]), int(s["hop_samples"]), s["final_window"])


@dataclass(frozen=True)
class Query:
    """The query's embedding and which of its windows it is: a long query file is many windows, and the user must
    know whether one call or the mean of a whole recording was searched for."""

    vector: np.ndarray
    start_s: float  # the first embedded window's start in the query file
    end_s: float  # the last embedded window's end
    windows: int  # how many windows were averaged
    whole_file: bool  # no --start/--end: every window of the file

    def describe(self, name: str) -> str:
        span = f"{self.start_s:.3f}-{self.end_s:.3f} s of {name}"
        if self.whole_file:
            if self.windows == 1:
                return f"query: {span} (its one window)"
            return (f"query: the mean of all {self.windows} windows of {name} ({span}); give --start/--end to search "
                    "for one call")
        if self.windows == 1:
            return f"query: the window {span}, the one that overlaps --start..--end most"
        return f"query: the mean of {self.windows} windows ({span}) that overlap --start..--end equally"


def query_embedding(path: str | Path, model: OnnxModel, plan: WindowPlan, *, start: float | None = None,
                    end: float | None = None) -> np.ndarray:
    """The embedding of the query file's window that overlaps ``start..end`` most (``embed_query``'s vector)."""
    return embed_query(path, model, plan, start=start, end=end).vector


def embed_query(path: str | Path, model: OnnxModel, plan: WindowPlan, *, start: float | None = None,
                end: float | None = None) -> Query:
    """The query file's window that overlaps ``start..end`` most (equal overlaps: their mean; default: the whole
    file's windows), and which windows those are. A window cut exactly from an archived recording is its stored
    window."""
    path = Path(path)
    window_s = plan.window / model.sample_rate
    begin = 0.0 if start is None else float(start)
    finish = end if end is not None else (begin + window_s if start is not None else None)
    tolerance = 1.0 / model.sample_rate
    chosen: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    best = -np.inf
    for window, embedding in window_embeddings(FileSource(path, path.name).blocks(model.sample_rate), model, plan):
        ws, we = window.seconds(model.sample_rate)
        if finish is None:
            chosen.append(embedding)
            spans.append((ws, we))
            continue
        if ws > finish:
            break
        overlap = min(we, finish) - max(ws, begin)
        if overlap > best + tolerance:
            chosen, spans, best = [embedding], [(ws, we)], overlap
        elif overlap >= best - tolerance:
            chosen.append(embedding)
            spans.append((ws, we))
    if not chosen or (finish is not None and best <= 0):
        raise ArchiveError(f"{path}: no window covers the query (shorter than one window, or --start/--end outside "
                           "the file?)")
    return Query(np.mean(chosen, axis=0), float(spans[0][0]), float(spans[-1][1]), len(chosen), finish is None)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def nearest(archive: ArchiveDB, query: np.ndarray, k: int = 100, *, exact: bool = False,
            candidates: int | None = None) -> list[tuple[int, float]]:
    """``(window_id, cosine)`` of the ``k`` best windows, best first."""
    if k < 1:
        raise ArchiveError(f"-k must be >= 1, got {k}")
    q = _unit(np.asarray(query, np.float32).reshape(-1))
    if exact:
        ids, scores = [], []
        for rows, vecs in archive.iter_window_batches():
            s = _unit(vecs) @ q
            top = np.argsort(-s, kind="stable")[:k]
            ids.extend(rows[i].id for i in top)
            scores.extend(s[top])
        ids, scores = np.array(ids, np.int64), np.array(scores, np.float32)
    else:
        count = min(archive.index.size, candidates if candidates is not None else max(4 * k, k + 100))
        if count == 0:
            return []
        ids = np.asarray(archive.index.search(q, count=count).keys, np.int64)
        scores = _unit(archive.vectors(ids)) @ q
    order = np.lexsort((ids, -scores))[:k]  # best score first, ties by window id
    return [(int(ids[i]), float(scores[i])) for i in order]


def search(archive: ArchiveDB, query: np.ndarray, k: int = 100, *, exact: bool = False) -> list[Hit]:
    """The ``k`` best windows (all of them when the archive holds fewer); an archive without windows is refused."""
    if archive.count_windows() == 0:
        raise ArchiveError(f"{archive.folder} holds no windows to search; embed recordings into it with "
                           "`vocalprobe embed` first")
    found = nearest(archive, query, k, exact=exact)
    windows = archive.windows([i for i, _ in found])
    recordings = archive.recordings()
    rates: dict[int, int | None] = {}
    hits = []
    for rank, ((window_id, score), window) in enumerate(zip(found, windows), start=1):
        rec = recordings[window.recording_id]
        if rec.id not in rates:
            rates[rec.id] = header_sample_rate(rec.path)
        hits.append(Hit(rank, score, window_id, rec.filename, rec.path, rec.deployment, window.start_s, window.end_s,
                        rates[rec.id]))
    return hits


def band_top(hit: Hit, high_freq_hz: float) -> float:
    """The top of the band the model saw in the hit's recording: its Nyquist, at most the model's (``high_freq_hz``);
    a 2 kHz recording holds nothing above 1 kHz, whatever rate the model runs at."""
    return high_freq_hz if hit.sample_rate is None else min(high_freq_hz, hit.sample_rate / 2)


def hits_raven(hits: Sequence[Hit], high_freq_hz: float) -> str:
    """A Raven selection table naming each hit's file (``Begin Path``, ``File Offset (s)``); Begin/End Time are
    the offsets in that file; High Freq is ``band_top`` (``high_freq_hz``: the model's Nyquist)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(HIT_COLUMNS)
    for h in hits:
        writer.writerow([h.rank, "Spectrogram 1", 1, f"{h.start_s:.3f}", f"{h.end_s:.3f}", "0.0",
                         f"{band_top(h, high_freq_hz):.1f}", str(h.path), f"{h.start_s:.3f}", f"{h.score:.4f}", h.rank])
    return buffer.getvalue()


def hits_csv(hits: Sequence[Hit]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for h in hits:
        writer.writerow([h.rank, f"{h.score:.4f}", h.file, str(h.path), f"{h.start_s:.3f}", f"{h.end_s:.3f}",
                         h.deployment, h.window_id])
    return buffer.getvalue()


def write_hits(hits: Sequence[Hit], out: str | Path, high_freq_hz: float) -> tuple[Path, Path]:
    """``out`` (Raven) and the same name with ``.csv``."""
    out = Path(out)
    csv_path = out.with_suffix(".csv") if out.suffix != ".csv" else out.with_name(out.stem + ".hits.csv")
    atomic_write_text(out, hits_raven(hits, high_freq_hz))
    atomic_write_text(csv_path, hits_csv(hits))
    return out, csv_path
