"""`vocalprobe probe apply`: score every archived window with a head and write stream's tables (Raven, CSV).

A window is reported for a class when the head's probability reaches that class's threshold (``head.json``); the
background class is never reported. Tables are written per recording like ``stream``'s, plus ``detections.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocalprobe.runtime.archive.head import Head, HeadError, window_scores
from vocalprobe.runtime.archive.store import ArchiveDB, ArchiveError
from vocalprobe.runtime.core.audio import header_sample_rate
from vocalprobe.runtime.core.detections.layout import CSV_SUFFIX, DETECTIONS_CSV, RAVEN_SUFFIX, Detection, table_path
from vocalprobe.runtime.core.detections.run_tables import combine_csv
from vocalprobe.runtime.core.detections.tables import Recording, write_tables


@dataclass
class ApplySummary:
    windows: int
    detections: int
    recordings: int


def check_head_fits(head: Head, archive: ArchiveDB) -> None:
    settings = archive.settings()
    if head.record.graph_sha256 != settings["graph_sha256"]:
        raise HeadError(f"the head was trained on vectors of another graph (sha256 "
                        f"{head.record.graph_sha256[:12]}... != {settings['graph_sha256'][:12]}...)")
    if head.n_features != int(settings["embedding_dim"]):
        raise HeadError(f"the head expects {head.n_features} features, the archive holds "
                        f"{settings['embedding_dim']}-dim vectors")


def archive_probabilities(head: Head, archive: ArchiveDB, batch: int = 65_536):
    """``(windows, probabilities)`` of every stored window, a batch at a time."""
    check_head_fits(head, archive)
    yield from window_scores(head, archive.iter_window_batches(batch))


def apply_head(head: Head, archive: ArchiveDB, out_dir: str | Path, *, batch: int = 65_536) -> ApplySummary:
    """Score the windows a batch at a time and write each recording's tables as soon as its last window is scored
    (a recording's windows are stored one after the other), so memory holds one recording's detections, not the
    archive's."""
    out_dir = Path(out_dir)
    recordings = archive.recordings()
    reported = [(j, c, head.thresholds[c]) for j, c in enumerate(head.classes) if c in head.reported]
    high_freq = int(archive.settings()["sample_rate"]) / 2
    tables: list[Path] = []
    written: set[int] = set()
    n_detections = 0

    def write(rid: int, detections: list[Detection]) -> None:
        if rid in written:
            raise ArchiveError(f"{archive.folder}: the windows of {recordings[rid].filename} are not stored one after "
                               "the other; embed the archive again into a new --db folder")
        written.add(rid)
        name = recordings[rid].filename
        detections.sort(key=lambda d: (d.start_s, d.label))
        paths = {"raven": table_path(out_dir, name, RAVEN_SUFFIX), "csv": table_path(out_dir, name, CSV_SUFFIX)}
        base = Path(name).name  # Raven's Begin File and Begin Path
        rate = header_sample_rate(recordings[rid].path)  # a 2 kHz recording holds nothing above 1 kHz
        write_tables(paths, detections, Recording(base, base, high_freq if rate is None else min(high_freq, rate / 2)))
        tables.append(paths["csv"])

    current: int | None = None
    found: list[Detection] = []
    n_windows = 0
    for rows, probs in archive_probabilities(head, archive, batch):
        n_windows += len(rows)
        ids = np.fromiter((w.recording_id for w in rows), dtype=np.int64, count=len(rows))
        edges = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist(), len(rows)]
        for a, b in zip(edges[:-1], edges[1:]):
            rid = int(ids[a])
            if rid != current:
                if current is not None:
                    write(current, found)
                    n_detections += len(found)
                current, found = rid, []
            filename = recordings[rid].filename
            for j, label, threshold in reported:
                for i in np.flatnonzero(probs[a:b, j] >= threshold) + a:
                    w = rows[i]
                    found.append(Detection(filename, w.start_s, w.end_s, label, float(probs[i, j])))
    if current is not None:
        write(current, found)
        n_detections += len(found)
    for rid in recordings:
        if rid not in written:  # no windows: an empty table, as for a recording without detections
            write(rid, [])
    combine_csv(sorted(tables), out_dir / DETECTIONS_CSV)
    return ApplySummary(n_windows, n_detections, len(recordings))
