"""Detections and events: the classes a window reports (``window_hits``), consecutive windows joined into events
(``EventMerger``), and events scored against a ground-truth table (``file,start_s,end_s,label``).

A detection is correct when a ground-truth event of the same file (compared by file name) and the same label
overlaps it in time; a ground-truth event is found when such a detection overlaps it. Precision is the share of
correct detections, recall the share of found ground-truth events. The chance baseline re-scores the same
detections with their labels shuffled among them, so it keeps the detector's timing and class frequencies.

``score_events_collar`` is the event-based metric of the DCASE challenges (sed_eval's ``EventBasedMetrics``, which is
unmaintained and pulls dcase_util, so the definition is here and the tests hold it against sed_eval): a detection
and a ground-truth event of the same file and label match when their onsets differ by at most the collar and their
offsets by at most max(collar, ``offset_fraction`` x the ground-truth event's length); each event matches at most
once, and the matching is a maximum one (sed_eval's "optimal").
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vocalprobe.runtime.core.detections.layout import CSV_COLUMNS, Detection, read_detections
from vocalprobe.runtime.core.errors import VocalprobeError

if TYPE_CHECKING:
    from vocalprobe.runtime.engine.windows import Window

#: A ground-truth table's columns: a detections table's, without the confidence.
EVENT_COLUMNS = CSV_COLUMNS[:4]


def window_hits(probs: np.ndarray, classes: Sequence[str], min_conf: float | np.ndarray,
                top_k: int | None = None, ignore: frozenset[str] = frozenset()) -> list[tuple[str, float]]:
    """Classes of one window at or above ``min_conf`` (one value, or one per class), best first, at most ``top_k``.

    ``ignore`` names classes that are never reported (a detector's background / noise class).
    """
    order = np.argsort(-probs, kind="stable")
    per_class = np.ndim(min_conf) > 0
    hits = [(classes[i], float(probs[i])) for i in order
            if probs[i] >= (min_conf[i] if per_class else min_conf) and classes[i] not in ignore]
    return hits[:top_k] if top_k is not None else hits


class EventMerger:
    """Join detections of one class in consecutive windows into one event (confidence: the maximum).

    Without merging every (window, class) hit is its own event. Events come out as soon as they are final.
    """

    def __init__(self, file: str, sample_rate: int, merge: bool):
        self.file, self.sample_rate, self.merge = file, sample_rate, merge
        self._open: dict[str, list] = {}  # label -> [start_s, end_s, confidence, last window index]

    def push(self, window: Window, hits: Sequence[tuple[str, float]]) -> list[Detection]:
        start, end = window.seconds(self.sample_rate)
        if not self.merge:
            return [Detection(self.file, start, end, label, conf) for label, conf in hits]
        closed = [self._close(label) for label, event in list(self._open.items())
                  if event[3] != window.index - 1 or label not in dict(hits)]
        for label, conf in hits:
            event = self._open.get(label)
            if event is None:
                self._open[label] = [start, end, conf, window.index]
            else:
                event[1], event[2], event[3] = end, max(event[2], conf), window.index
        return sorted(closed, key=lambda d: (d.start_s, d.label))

    def _close(self, label: str) -> Detection:
        start, end, conf, _ = self._open.pop(label)
        return Detection(self.file, start, end, label, conf)

    def finish(self) -> list[Detection]:
        return sorted((self._close(label) for label in list(self._open)), key=lambda d: (d.start_s, d.label))


class EventTableError(VocalprobeError):
    pass


@dataclass(frozen=True)
class Event:
    file: str  # file name (no folder)
    start_s: float
    end_s: float
    label: str


def detected_events(folder_or_table: str | Path) -> list[Event]:
    """The events of a run's detections (a stream output folder, or its ``detections.csv``), to score."""
    return [Event(Path(d.file).name, d.start_s, d.end_s, d.label) for d in read_detections(folder_or_table)]


#: Label columns of other tools' tables, tried in this order (Raven: the annotator's column; BirdNET: common name).
LABEL_COLUMNS = ("label", "Class", "Annotation", "Label", "Species", "Common Name", "Common name", "Scientific name",
                 "Sound Type")
#: The time columns of a Raven selection table and of a BirdNET CSV.
RAVEN_TIMES, BIRDNET_TIMES = ("Begin Time (s)", "End Time (s)"), ("Start (s)", "End (s)")
_TABLE_MARK = ".Table."  # Raven names a one-file table <recording>.Table.1.selections.txt


def read_events(path: str | Path) -> list[Event]:
    """Read a ground-truth table: vocalprobe's CSV (``EVENT_COLUMNS``), a Raven selection table (tab-separated;
    ``Begin Path``/``Begin File`` or the table's own name gives the recording, ``File Offset (s)`` the time in it),
    or a BirdNET CSV (``Start (s)``, ``End (s)``, ``File``). The label is the first of ``LABEL_COLUMNS`` present;
    extra columns are ignored. A recording named without extension (a table's own name) matches by stem."""
    path = Path(path)
    if not path.is_file():
        raise EventTableError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter="\t" if "\t" in first else ",")
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        if all(c in columns for c in EVENT_COLUMNS):
            times, label_col = ("start_s", "end_s"), "label"
        elif all(c in columns for c in RAVEN_TIMES) or all(c in columns for c in BIRDNET_TIMES):
            times = RAVEN_TIMES if RAVEN_TIMES[0] in columns else BIRDNET_TIMES
            label_col = next((c for c in LABEL_COLUMNS if c in columns), None)
            if label_col is None:
                raise EventTableError(f"{path}: no label column (one of {', '.join(LABEL_COLUMNS[1:])})")
        else:
            raise EventTableError(f"{path}: not a ground-truth table: expected columns {', '.join(EVENT_COLUMNS)}, "
                                  f"a Raven selection table ({', '.join(RAVEN_TIMES)}, a label column) or a "
                                  f"BirdNET CSV ({', '.join(BIRDNET_TIMES)}, File)")
        own_name = path.name.split(_TABLE_MARK)[0] if _TABLE_MARK in path.name else None
        events, seen = [], set()
        for line, row in enumerate(reader, start=2):
            if not any((v or "").strip() for v in row.values()):
                continue
            try:
                start, end = float(row[times[0]]), float(row[times[1]])
                offset = row.get("File Offset (s)")
                if offset not in (None, ""):  # a multi-file Raven table counts Begin Time over all its files
                    start, end = float(offset), float(offset) + (end - start)
            except ValueError:
                raise EventTableError(f"{path} line {line}: {'/'.join(times)} must be numbers") from None
            if end < start:
                raise EventTableError(f"{path} line {line}: the end ({end}) is before the start ({start})")
            name = next((row[c] for c in ("file", "Begin Path", "Begin File", "File") if row.get(c)), own_name)
            if not name:
                raise EventTableError(f"{path} line {line}: names no recording (no file / Begin Path / Begin File / "
                                      "File column, and the table is not named <recording>.Table.1.selections.txt)")
            event = Event(Path(name.replace("\\", "/")).name, start, end, (row[label_col] or "").strip())
            if event not in seen:  # Raven repeats each selection once per view (waveform, spectrogram)
                seen.add(event)
                events.append(event)
    return events


def align_files(detected: Sequence[Event], truth: Sequence[Event]) -> list[Event]:
    """``detected`` with each file named as ``truth`` names it: a truth table that names recordings by stem (a
    Raven table's own name) matches the detections of ``<stem>.wav``."""
    named = {e.file for e in truth}
    by_stem = {n: n for n in named if not Path(n).suffix}
    return [d if d.file in named or Path(d.file).stem not in by_stem else
            Event(by_stem[Path(d.file).stem], d.start_s, d.end_s, d.label) for d in detected]


@dataclass(frozen=True)
class EventScore:
    precision: float
    recall: float
    f1: float
    n_detected: int
    n_correct: int
    n_truth: int
    n_found: int
    per_class: dict[str, tuple[float, float, int, int]]  # label -> (precision, recall, n_detected, n_truth)


def _overlaps(a: Event, b: Event) -> bool:
    return a.start_s < b.end_s and b.start_s < a.end_s


def score_events(detected: Sequence[Event], truth: Sequence[Event]) -> EventScore:
    by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for event in truth:
        by_key[(event.file, event.label)].append(event)
    correct = [any(_overlaps(d, t) for t in by_key[(d.file, d.label)]) for d in detected]
    det_by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for event in detected:
        det_by_key[(event.file, event.label)].append(event)
    found = [any(_overlaps(t, d) for d in det_by_key[(t.file, t.label)]) for t in truth]
    precision = float(np.mean(correct)) if detected else 0.0
    recall = float(np.mean(found)) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    per_class = {}
    for label in sorted({e.label for e in truth} | {e.label for e in detected}):
        c = [ok for d, ok in zip(detected, correct) if d.label == label]
        f = [ok for t, ok in zip(truth, found) if t.label == label]
        per_class[label] = (float(np.mean(c)) if c else 0.0, float(np.mean(f)) if f else 0.0, len(c), len(f))
    return EventScore(precision, recall, f1, len(detected), int(sum(correct)), len(truth), int(sum(found)), per_class)


def chance_score(detected: Sequence[Event], truth: Sequence[Event], *, n_shuffles: int = 20,
                 seed: int = 0) -> tuple[float, float]:
    """Mean (precision, recall) of the same detections with labels shuffled among them."""
    if not detected:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    labels = [d.label for d in detected]
    scores = []
    for _ in range(n_shuffles):
        shuffled = rng.permutation(labels)
        fake = [Event(d.file, d.start_s, d.end_s, str(lab)) for d, lab in zip(detected, shuffled)]
        s = score_events(fake, truth)
        scores.append((s.precision, s.recall))
    return tuple(float(v) for v in np.mean(scores, axis=0))


@dataclass(frozen=True)
class CollarScore:
    """DCASE event-based scores: micro (over all events) and the class-wise mean F1 (``f1_macro``)."""

    collar_s: float
    offset_fraction: float | None  # None: onsets only
    precision: float
    recall: float
    f1: float
    f1_macro: float
    n_matched: int
    n_detected: int
    n_truth: int
    per_class: dict[str, tuple[float, float, float, int, int, int]]  # label -> (P, R, F1, matched, detected, truth)


def _prf(matched: int, detected: int, truth: int) -> tuple[float, float, float]:
    precision = matched / detected if detected else 0.0
    recall = matched / truth if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def _maximum_matching(edges: dict[int, list[int]]) -> int:
    """Size of a maximum matching of a bipartite graph ``detection -> [truth events it may match]`` (augmenting
    paths: every detection tries to take a free truth event or to move the one holding it)."""
    owner: dict[int, int] = {}

    def augment(d: int, seen: set[int]) -> bool:
        for t in edges[d]:
            if t in seen:
                continue
            seen.add(t)
            if t not in owner or augment(owner[t], seen):
                owner[t] = d
                return True
        return False

    return sum(augment(d, set()) for d in edges)


def _within_collar(detected: Event, truth: Event, collar_s: float, offset_fraction: float | None) -> bool:
    """The onsets differ by at most the collar, and (unless onsets only) the offsets by at most max(collar,
    ``offset_fraction`` x the true event's length)."""
    if abs(truth.start_s - detected.start_s) > collar_s:
        return False
    if offset_fraction is None:
        return True
    return abs(truth.end_s - detected.end_s) <= max(collar_s, offset_fraction * (truth.end_s - truth.start_s))


def score_events_collar(detected: Sequence[Event], truth: Sequence[Event], *, collar_s: float = 0.2,
                        offset_fraction: float | None = 0.5) -> CollarScore:
    """DCASE event-based precision, recall and F1 (see the module docs); ``offset_fraction=None`` checks onsets
    only. The defaults are sed_eval's and DCASE's (collar 200 ms, offsets within 50% of the event's length)."""
    if not collar_s >= 0:
        raise EventTableError(f"the collar must be >= 0 seconds, got {collar_s}")
    if offset_fraction is not None and not offset_fraction >= 0:
        raise EventTableError(f"the offset fraction must be >= 0, got {offset_fraction}")
    groups: dict[tuple[str, str], tuple[list[Event], list[Event]]] = defaultdict(lambda: ([], []))
    for d in detected:
        groups[(d.file, d.label)][0].append(d)
    for t in truth:
        groups[(t.file, t.label)][1].append(t)
    matched: dict[str, int] = defaultdict(int)
    for (_, label), (dets, truths) in groups.items():
        edges = {i: [j for j, t in enumerate(truths) if _within_collar(d, t, collar_s, offset_fraction)]
                 for i, d in enumerate(dets)}
        matched[label] += _maximum_matching(edges)
    labels = sorted({e.label for e in truth} | {e.label for e in detected})
    per_class = {}
    for label in labels:
        n_det = sum(d.label == label for d in detected)
        n_truth = sum(t.label == label for t in truth)
        per_class[label] = (*_prf(matched[label], n_det, n_truth), matched[label], n_det, n_truth)
    total = sum(matched.values())
    precision, recall, f1 = _prf(total, len(detected), len(truth))
    f1_macro = float(np.mean([v[2] for v in per_class.values()])) if per_class else 0.0
    return CollarScore(collar_s, offset_fraction, precision, recall, f1, f1_macro, total, len(detected), len(truth),
                       per_class)
