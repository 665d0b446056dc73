"""Turn the paper's datasets (and any folder-per-class collection) into manifests.

Each preparer reads what a dataset's distribution looks like, validates it (unknown columns, missing audio, labels
without audio) and returns manifest rows with paths relative to where the manifest will be written. Layout problems
raise at once, all of them in one message, so a user fixes a dataset in one pass. Every audio file is also decoded
once in full (``check_audio``): a zero-byte, text, truncated, NaN or undecodable file is left out of the rows and
listed in ``Prepared.problems``, and the caller decides whether that stops the run.
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.audio import READABLE_KINDS, check_audio
from vocalprobe.runtime.core.errors import AudioError, DatasetError
from vocalprobe.runtime.core.manifest import ManifestRow, read_utf8_table
from vocalprobe.runtime.datasets.scan import FileProblem, Listing, escape_problem, list_audio, source_root

MAX_LISTED = 5
IMV_DROPPED_LABELS = {"silence", "noise"}


@dataclass
class Prepared:
    """What a preparer found: the manifest rows, the files left out (with why) and the files it did not process."""

    rows: list[ManifestRow]
    problems: list[FileProblem] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> number of files (hidden, other extensions)
    notes: list[str] = field(default_factory=list)  # advice for the command to print once


class _Checker:
    """Decodes each file once; remembers failures so a recording with many labelled segments is reported once."""

    def __init__(self, listing: Listing | None = None):
        self.problems: list[FileProblem] = list(listing.problems) if listing else []
        self.skipped: Counter = Counter(listing.skipped) if listing else Counter()
        self._durations: dict[Path, float | None] = {}

    def duration(self, path: Path) -> float | None:
        """The file's duration in seconds, or None (and a recorded problem) when it is not usable audio."""
        if path not in self._durations:
            try:
                self._durations[path] = check_audio(path).duration
            except AudioError as exc:
                self._durations[path] = None
                self.problems.append(FileProblem(str(path), exc.problem))
        return self._durations[path]

    def prepared(self, rows: list[ManifestRow]) -> Prepared:
        return Prepared(rows, self.problems, self.skipped)


def _rel(path: Path, out_dir: Path) -> str:
    """``path`` as a manifest entry: relative to the (resolved) output folder, with the links it goes through kept."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.realpath(out_dir))).as_posix()


def _problem_list(title: str, items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{title} {len(items)}: {shown}{more}"


def _require_dir(source: Path) -> Path:
    if not source.is_dir():
        raise DatasetError(f"dataset folder not found: {source}")
    return source_root(source)

def _read_table(path: Path, required: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"expected {path.name} in {path.parent}, not found")
    text = read_utf8_table(path, DatasetError)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in required + allowed]
    if missing or unknown:
        raise DatasetError(f"{path}: columns must be {', '.join(required + allowed)}; "
                           + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                     unknown and f"unknown {', '.join(unknown)}"])))
    records = []
    for record in reader:
        if None in record:
            raise DatasetError(f"{path} line {reader.line_num}: {len(header) + len(record[None])} fields, the header "
                               f"has {len(header)} (a comma inside a name? put that field in double quotes)")
        records.append({k.strip(): (v or "").strip() for k, v in record.items()})
    return records


def prepare_folders(source: Path, out_dir: Path, *, follow_links: bool = False, group_folders: bool = False
                    ) -> Prepared:
    """One sub-folder per class (audio may sit deeper inside it); the generic case. ``group_folders``: the folder
    right under a class folder names the clip's group (``CLASS/INDIVIDUAL/clip.wav``: an individual, a recording,
    a site), so a group split keeps it out of Train when it is in Test; a file right in the class folder is its own
    group."""
    root = _require_dir(source)
    listing = list_audio(root, root, follow_links=follow_links)
    refused = {p.path for p in listing.problems}
    class_of = {}
    for path in listing.audio:
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            listing.skipped["not inside a class folder"] += 1
        else:
            class_of[path] = parts[0]
    class_dirs = sorted(d.name for d in root.iterdir()
                        if not d.name.startswith(".") and str(d) not in refused and d.is_dir())
    if not class_dirs:
        raise DatasetError(f"{source} has no class sub-folders; expected <class>/<file>.wav")
    with_problems = {Path(p.path).relative_to(root).parts[0] for p in listing.problems}
    empty = [name for name in class_dirs if name not in set(class_of.values()) and name not in with_problems]
    if empty:
        raise DatasetError(_problem_list(f"class folders without any {READABLE_KINDS} file:", empty))
    checker = _Checker(listing)
    def group(path: Path) -> str | None:
        if not group_folders:
            return None
        parts = path.relative_to(root).parts
        return "/".join(parts[:2]) if len(parts) > 2 else "/".join(parts)

    rows = [ManifestRow(_rel(path, out_dir), label, group=group(path)) for path, label in class_of.items()
            if checker.duration(path) is not None]
    prepared = checker.prepared(rows)
    if not group_folders and any(len(path.relative_to(root).parts) > 2 for path in class_of):
        prepared.notes.append("some clips sit in sub-folders of their class folder; if those are individuals, "
                              "recordings or sites, pass --group-folders so Test never shares one with Train")
    return prepared


def prepare_watkins(source: Path, out_dir: Path, *, follow_links: bool = False) -> Prepared:
    """Watkins 'best of' cut: ``annotations.csv`` (path,species) or species sub-folders; all species kept."""
    root = _require_dir(source)
    table = root / "annotations.csv"
    if not table.exists():
        return prepare_folders(source, out_dir, follow_links=follow_links)
    records = _read_table(table, ("path", "species"))
    listing = list_audio(root, root, follow_links=follow_links)
    checker = _Checker(listing)
    missing, listed, labelled = [], set(), []
    for i, record in enumerate(records, start=2):
        if not record["path"] or not record["species"]:
            raise DatasetError(f"{table} line {i}: path and species must not be empty")
        audio = Path(os.path.normpath(root / record["path"]))
        listed.add(audio)
        refused = escape_problem(audio, root, follow_links=follow_links)
        if refused:
            checker.problems.append(FileProblem(str(audio), refused))
        elif not audio.is_file():
            missing.append(record["path"])
        else:
            labelled.append((audio, record["species"]))
    if missing:
        raise DatasetError(_problem_list(f"{table}: labels without audio", missing))
    unlabelled = [str(p.relative_to(root)) for p in listing.audio if p not in listed]
    if unlabelled:
        raise DatasetError(_problem_list(f"{source}: audio files without a label in annotations.csv", unlabelled))
    rows = [ManifestRow(_rel(audio, out_dir), species) for audio, species in labelled
            if checker.duration(audio) is not None]
    return checker.prepared(rows)


def _index_by_name(paths: Iterable[Path]) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in paths:
        index.setdefault(path.name, []).append(path)
    return index


def prepare_imv(source: Path, out_dir: Path, *, follow_links: bool = False) -> Prepared:
    """InfantMarmosetsVox: calls are segments (start,end) of 10-minute recordings under ``data/twin_<T>/``.

    Silence and Noise rows are dropped (they are not call types); the caller goes to ``group``.
    """
    root = _require_dir(source)
    table = root / "labels.csv"
    records = _read_table(table, ("filename", "start", "end", "duration", "calltype", "caller"))
    data = root / "data"
    listing = list_audio(data if data.is_dir() else root, root, follow_links=follow_links)
    checker = _Checker(listing)
    index = _index_by_name(listing.audio)
    rows, missing, bad = [], [], []
    for i, record in enumerate(records, start=2):
        if record["calltype"].lower() in IMV_DROPPED_LABELS:
            continue
        name = record["filename"]
        candidates = [p for p in (data / name, root / name) if p.is_file()] or index.get(Path(name).name, [])
        if len(candidates) != 1:
            (missing if not candidates else bad).append(
                name if not candidates else f"line {i}: {name} is ambiguous ({len(candidates)} files)")
            continue
        audio = Path(os.path.normpath(candidates[0]))
        refused = escape_problem(audio, root, follow_links=follow_links)
        if refused:
            if FileProblem(str(audio), refused) not in checker.problems:
                checker.problems.append(FileProblem(str(audio), refused))
            continue
        try:
            start, end = float(record["start"]), float(record["end"])
        except ValueError:
            bad.append(f"line {i}: start/end not numbers ({record['start']!r}, {record['end']!r})")
            continue
        duration = checker.duration(audio)
        if duration is None:
            continue
        if not 0 <= start < end or start >= duration:
            bad.append(f"line {i}: segment {start}-{end} s outside {audio.name} ({duration:.1f} s)")
            continue
        rows.append(ManifestRow(_rel(audio, out_dir), record["calltype"], start, min(end, duration),
                                group=record["caller"] or None))
    problems = []
    if missing:
        problems.append(_problem_list("labels without audio", sorted(set(missing))))
    if bad:
        problems.append(_problem_list("invalid rows", bad))
    if problems:
        raise DatasetError(f"{table}: " + " | ".join(problems))
    return checker.prepared(rows)


def prepare_abzaliev(source: Path, out_dir: Path, *, follow_links: bool = False) -> Prepared:
    """Dog barks laid out ``<Individual>/<calltype>/*.wav``: label = call type, group = individual."""
    root = _require_dir(source)
    listing = list_audio(root, root, follow_links=follow_links)
    laid_out, stray = [], []
    for path in listing.audio:
        parts = path.relative_to(root).parts
        if len(parts) != 3:
            stray.append("/".join(parts))
            continue
        laid_out.append((path, parts[1], parts[0]))
    if stray:
        raise DatasetError(_problem_list(f"{source}: files not laid out as <Individual>/<calltype>/<file>:", stray))
    if not laid_out and not listing.problems:
        raise DatasetError(f"{source}: no audio found; expected <Individual>/<calltype>/*.wav")
    checker = _Checker(listing)
    rows = [ManifestRow(_rel(path, out_dir), calltype, group=individual) for path, calltype, individual in laid_out
            if checker.duration(path) is not None]
    return checker.prepared(rows)


PREPARERS: dict[str, Callable[..., Prepared]] = {
    "folders": prepare_folders,
    "watkins": prepare_watkins,
    "imv": prepare_imv,
    "abzaliev": prepare_abzaliev,
}


ERRORS_CSV = "errors.csv"


def write_problems(out_dir: Path, problems: list[FileProblem]) -> Path:
    """OUT/errors.csv (path,problem) when there are problems; a stale one from an earlier run is removed."""
    path = out_dir / ERRORS_CSV
    if not problems:
        path.unlink(missing_ok=True)
        return path
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "problem"])
    writer.writerows([p.path, p.problem] for p in problems)
    atomic_write_text(path, buffer.getvalue())
    return path


def drop_labels(rows: Iterable[ManifestRow], excluded: Iterable[str]) -> list[ManifestRow]:
    """Remove rows of the named classes (e.g. Abzaliev's non-dog sounds), matched case-insensitively."""
    excluded = {e.lower() for e in excluded}
    return [r for r in rows if r.label.lower() not in excluded]
