"""A ``background`` class cut from field recordings: the negative class a detector needs (`data prepare --background`).

A probe picks among the classes it was trained on, so a model without a class of "no call here" reports every window
above its threshold as a call. Long recordings of the site (wind, rain, other animals, silence) are cut into
non-overlapping windows of the dataset's clip length and added as ``background`` rows; each window's group is its
source recording, so a group split keeps a recording's windows in one split (neighbouring windows are near copies).
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from vocalprobe.runtime.core.audio import READABLE_KINDS, audio_info
from vocalprobe.runtime.core.errors import DatasetError
from vocalprobe.runtime.core.manifest import ManifestRow
from vocalprobe.runtime.datasets.preparers import Prepared, _Checker, _rel, _require_dir
from vocalprobe.runtime.datasets.scan import list_audio

BACKGROUND_LABEL = "background"


def median_clip_seconds(rows: list[ManifestRow], out_dir: Path) -> float:
    """The median length of the prepared clips (start/end, else the file's header): the window length to cut."""
    base = Path(os.path.realpath(out_dir))
    lengths = [row.end - row.start if row.start is not None and row.end is not None
               else audio_info(base / row.path).duration for row in rows]
    return float(statistics.median(lengths))


def add_background(prepared: Prepared, folder: Path, out_dir: Path, *, seconds: float | None = None,
                   max_windows: int | None = None, follow_links: bool = False) -> tuple[Prepared, str]:
    """``prepared`` with ``background`` windows of ``seconds`` (default: the median clip length) from every recording
    under ``folder``; at most ``max_windows`` (default: as many as the largest class; 0: all), evenly spread over the
    recordings. Returns the merged ``Prepared`` and a line that says what was added."""
    if any(row.label == BACKGROUND_LABEL for row in prepared.rows):
        raise DatasetError(f"the dataset already has a {BACKGROUND_LABEL!r} class; drop --background, or rename or "
                           f"--exclude that class")
    if seconds is None:
        if not prepared.rows:
            raise DatasetError("--background: no clips to take the window length from; give --background-seconds")
        seconds = median_clip_seconds(prepared.rows, out_dir)
    if not seconds > 0:
        raise DatasetError(f"--background-seconds must be a positive number of seconds, got {seconds}")
    if max_windows is None:
        max_windows = max(Counter(row.label for row in prepared.rows).values(), default=0)
    root = _require_dir(folder)
    listing = list_audio(root, root, follow_links=follow_links)
    checker = _Checker(listing)
    windows: list[tuple[Path, float]] = []
    short = 0
    for path in listing.audio:
        duration = checker.duration(path)
        if duration is None:
            continue
        n = int(duration / seconds + 1e-9)
        short += n == 0
        windows += [(path, i * seconds) for i in range(n)]
    if not windows:
        raise DatasetError(f"--background {folder}: no {READABLE_KINDS} recording of at least {seconds:g} s "
                           f"({len(listing.audio)} file(s) found)")
    if max_windows and len(windows) > max_windows:
        keep = np.unique(np.linspace(0, len(windows) - 1, max_windows).round().astype(int))
        windows = [windows[i] for i in keep]
    rows = [ManifestRow(_rel(path, out_dir), BACKGROUND_LABEL, start=round(start, 6), end=round(start + seconds, 6),
                        group=_rel(path, out_dir)) for path, start in windows]
    skipped = prepared.skipped + checker.skipped
    if short:
        skipped[f"background recordings shorter than the {seconds:g} s window"] += short
    recordings = len({path for path, _ in windows})
    note = (f"background: {len(rows)} window(s) of {seconds:g} s from {recordings} recording(s) in {folder}, "
            f"grouped by recording")
    return Prepared(prepared.rows + rows, prepared.problems + checker.problems, skipped, prepared.notes), note
