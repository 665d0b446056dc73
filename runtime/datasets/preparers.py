"""Turn the paper's datasets (and any folder-per-class collection) into manifests.

Each preparer reads what a dataset's distribution looks like, validates it (unknown columns, missing audio, labels
without audio) and returns manifest rows with paths relative to where the manifest will be written. Problems are
collected and reported together, so a user fixes a dataset in one pass instead of one error at a time.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Iterable

from vocalprobe.runtime.core.audio import audio_info, is_audio_file
from vocalprobe.runtime.core.errors import AudioError, DatasetError
from vocalprobe.runtime.core.manifest import ManifestRow

MAX_LISTED = 5
IMV_DROPPED_LABELS = {"silence", "noise"}


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def _problem_list(title: str, items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"{title} {len(items)}: {shown}{more}"


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_audio_file(p))


def _require_dir(source: Path) -> None:
    if not source.is_dir():
        raise DatasetError(f"dataset folder not found: {source}")


def _read_table(path: Path, required: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"expected {path.name} in {path.parent}, not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        unknown = [c for c in header if c not in required + allowed]
        if missing or unknown:
            raise DatasetError(f"{path}: columns must be {', '.join(required + allowed)}; "
                               + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                         unknown and f"unknown {', '.join(unknown)}"])))
        return [{k.strip(): (v or "").strip() for k, v in record.items()} for record in reader]


def prepare_folders(source: Path, out_dir: Path, *, group_depth: int = 0) -> list[ManifestRow]:
    """One sub-folder per class (audio may sit deeper inside it); the generic case."""
    _require_dir(source)
    rows = []
    class_dirs = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{source} has no class sub-folders; expected <class>/<file>.wav")
    empty = []
    for class_dir in class_dirs:
        files = _audio_files(class_dir)
        if not files:
            empty.append(class_dir.name)
        rows.extend(ManifestRow(_rel(f, out_dir), class_dir.name) for f in files)
    if empty:
        raise DatasetError(_problem_list("class folders without any wav/flac/ogg file:", empty))
    return rows


def prepare_watkins(source: Path, out_dir: Path) -> list[ManifestRow]:
    """Watkins 'best of' cut: ``annotations.csv`` (path,species) or species sub-folders; all species kept."""
    _require_dir(source)
    table = source / "annotations.csv"
    if not table.exists():
        return prepare_folders(source, out_dir)
    records = _read_table(table, ("path", "species"))
    missing, rows = [], []
    for i, record in enumerate(records, start=2):
        if not record["path"] or not record["species"]:
            raise DatasetError(f"{table} line {i}: path and species must not be empty")
        audio = source / record["path"]
        if not audio.is_file():
            missing.append(record["path"])
            continue
        rows.append(ManifestRow(_rel(audio, out_dir), record["species"]))
    if missing:
        raise DatasetError(_problem_list(f"{table}: labels without audio", missing))
    listed = {(source / r["path"]).resolve() for r in records}
    unlabelled = [str(p.relative_to(source)) for p in _audio_files(source) if p.resolve() not in listed]
    if unlabelled:
        raise DatasetError(_problem_list(f"{source}: audio files without a label in annotations.csv", unlabelled))
    return rows


def _index_by_name(folder: Path) -> dict[str, list[Path]]:
    index: dict[str, list[Path]] = {}
    for path in _audio_files(folder):
        index.setdefault(path.name, []).append(path)
    return index


def prepare_imv(source: Path, out_dir: Path) -> list[ManifestRow]:
    """InfantMarmosetsVox: calls are segments (start,end) of 10-minute recordings under ``data/twin_<T>/``.

    Silence and Noise rows are dropped (they are not call types); the caller goes to ``group``.
    """
    _require_dir(source)
    table = source / "labels.csv"
    records = _read_table(table, ("filename", "start", "end", "duration", "calltype", "caller"))
    data = source / "data"
    index = _index_by_name(data if data.is_dir() else source)
    durations: dict[Path, float] = {}
    rows, missing, bad = [], [], []
    for i, record in enumerate(records, start=2):
        if record["calltype"].lower() in IMV_DROPPED_LABELS:
            continue
        name = record["filename"]
        candidates = [p for p in (data / name, source / name) if p.is_file()] or index.get(Path(name).name, [])
        if len(candidates) != 1:
            (missing if not candidates else bad).append(
                name if not candidates else f"line {i}: {name} is ambiguous ({len(candidates)} files)")
            continue
        audio = candidates[0]
        try:
            start, end = float(record["start"]), float(record["end"])
        except ValueError:
            bad.append(f"line {i}: start/end not numbers ({record['start']!r}, {record['end']!r})")
            continue
        if audio not in durations:
            try:
                durations[audio] = audio_info(audio).duration
            except AudioError as exc:
                bad.append(str(exc))
                durations[audio] = -1.0
        if durations[audio] < 0:
            continue
        if not 0 <= start < end or start >= durations[audio]:
            bad.append(f"line {i}: segment {start}-{end} s outside {audio.name} ({durations[audio]:.1f} s)")
            continue
        rows.append(ManifestRow(_rel(audio, out_dir), record["calltype"], start, min(end, durations[audio]),
                                group=record["caller"] or None))
    problems = []
    if missing:
        problems.append(_problem_list("labels without audio", sorted(set(missing))))
    if bad:
        problems.append(_problem_list("invalid rows", bad))
    if problems:
        raise DatasetError(f"{table}: " + " | ".join(problems))
    return rows


def prepare_abzaliev(source: Path, out_dir: Path) -> list[ManifestRow]:
    """Dog barks laid out ``<Individual>/<calltype>/*.wav``: label = call type, group = individual."""
    _require_dir(source)
    rows, stray = [], []
    for path in _audio_files(source):
        parts = path.relative_to(source).parts
        if len(parts) != 3:
            stray.append("/".join(parts))
            continue
        individual, calltype, _ = parts
        rows.append(ManifestRow(_rel(path, out_dir), calltype, group=individual))
    if stray:
        raise DatasetError(_problem_list(f"{source}: files not laid out as <Individual>/<calltype>/<file>:", stray))
    if not rows:
        raise DatasetError(f"{source}: no audio found; expected <Individual>/<calltype>/*.wav")
    return rows


PREPARERS: dict[str, Callable[[Path, Path], list[ManifestRow]]] = {
    "folders": prepare_folders,
    "watkins": prepare_watkins,
    "imv": prepare_imv,
    "abzaliev": prepare_abzaliev,
}


def drop_labels(rows: Iterable[ManifestRow], excluded: Iterable[str]) -> list[ManifestRow]:
    """Remove rows of the named classes (e.g. Abzaliev's non-dog sounds), matched case-insensitively."""
    excluded = {e.lower() for e in excluded}
    return [r for r in rows if r.label.lower() not in excluded]
