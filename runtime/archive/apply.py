"""`vocalprobe probe apply`: score every archived window with a head and write stream's tables (Raven, CSV).

A window is reported for a class when the head's probability reaches that class's threshold (``head.json``); the
background class is never reported. Tables are written per recording like ``stream``'s, plus ``detections.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocalprobe.runtime.archive.head import Head, HeadError, window_scores
from vocalprobe.runtime.archive.store import ArchiveDB
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
    out_dir = Path(out_dir)
    recordings = archive.recordings()
    reported = [(j, c, head.thresholds[c]) for j, c in enumerate(head.classes) if c in head.reported]
    found: dict[int, list[Detection]] = {rid: [] for rid in recordings}
    n_windows = 0
    for rows, probs in archive_probabilities(head, archive, batch):
        n_windows += len(rows)
        for j, label, threshold in reported:
            for i in np.flatnonzero(probs[:, j] >= threshold):
                w = rows[i]
                found[w.recording_id].append(Detection(recordings[w.recording_id].filename, w.start_s, w.end_s, label,
                                                       float(probs[i, j])))
    tables = []
    high_freq = int(archive.settings()["sample_rate"]) / 2
    for rid, detections in found.items():
        name = recordings[rid].filename
        detections.sort(key=lambda d: (d.start_s, d.label))
        paths = {"raven": table_path(out_dir, name, RAVEN_SUFFIX), "csv": table_path(out_dir, name, CSV_SUFFIX)}
        base = Path(name).name  # Raven's Begin File and Begin Path
        write_tables(paths, detections, Recording(base, base, high_freq))
        tables.append(paths["csv"])
    combine_csv(sorted(tables), out_dir / DETECTIONS_CSV)
    return ApplySummary(n_windows, sum(len(d) for d in found.values()), len(found))
