"""`vocalprobe merge --db OUT_DB SHARD_DB...`: the archives of ``embed --shard i/n`` runs joined into the archive one
``embed`` over all the inputs writes.

One run numbers deployments, recordings and windows in the order it embeds the inputs, so the merge replays the
shards' recordings in that order (each shard kept every recording's place in the whole input list,
``vocalprobe_positions``) through the writer ``embed`` uses: the same ids, offsets, metadata and float16 vectors,
added to the index in the same batches. What one run would skip is skipped here too: a recording whose audio an
earlier one already holds (the same file under two names in two shards). Annotations made on a shard are kept, on
their recording's new id. Shards of another graph or other windows, of other ``--shard`` splits, holding the same
recording, or still being written (their lock) are refused before OUT_DB is made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from vocalprobe.runtime.archive.embed import FLUSH_WINDOWS
from vocalprobe.runtime.archive.store import (
    AUDIO_SOURCES_KEY,
    MODEL_CONFIG_KEY,
    SHARD_KEY,
    SQLITE_NAME,
    ArchiveDB,
    ArchiveError,
    offsets_of,
)
from vocalprobe.runtime.core.shards import Shard
from vocalprobe.runtime.core.shards import merge_folders
from vocalprobe.runtime.core.out_lock import OutputLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Recording:
    shard: int  # index into the opened shards
    id: int
    filename: str
    datetime: str | None
    deployment: str
    project: str
    sha256: str
    n_windows: int
    audio_seconds: float
    position: int


@dataclass
class ArchiveMergeSummary:
    shards: int
    recordings: int = 0
    windows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why): what one run would have skipped


def _recordings(archive: ArchiveDB, shard: int) -> list[_Recording]:
    rows = archive.db.execute(
        "SELECT r.id, r.filename, r.datetime, d.name, d.project, v.sha256, v.n_windows, v.audio_seconds, p.position "
        "FROM recordings r JOIN deployments d ON d.id = r.deployment_id JOIN vocalprobe_recordings v ON "
        "v.recording_id = r.id LEFT JOIN vocalprobe_positions p ON p.recording_id = r.id ORDER BY r.id")
    out = []
    for row in rows:
        if row[-1] is None:
            raise ArchiveError(f"{archive.folder}: {row[1]} has no place in the input list (embedded by a vocalprobe "
                               "before `merge --db`); embed that shard again into a new --db folder")
        out.append(_Recording(shard, *row))
    return out


def _check(archives: Sequence[ArchiveDB]) -> None:
    """Refuse archives that are not the shards of one ``embed`` run."""
    first, settings = archives[0], archives[0].settings()
    parts: dict[Shard, Path] = {}
    for archive in archives:
        meta = archive.metadata()
        if meta.get(SHARD_KEY) is None:
            raise ArchiveError(f"{archive.folder}: not the archive of an `embed --shard i/n` run; merge the --db "
                               "folders of the shards")
        part = Shard.parse(meta[SHARD_KEY])
        if part in parts:
            raise ArchiveError(f"{archive.folder} and {parts[part]} both hold shard {part}; give each shard once")
        parts[part] = archive.folder
        theirs = archive.settings()
        if theirs["graph_sha256"] != settings["graph_sha256"]:
            raise ArchiveError(f"{archive.folder} holds embeddings of another graph than {first.folder} (sha256 "
                               f"{theirs['graph_sha256'][:12]}... vs {settings['graph_sha256'][:12]}...); merge "
                               "shards of one embed run")
        changed = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
        if changed:
            raise ArchiveError(f"{archive.folder} and {first.folder} were embedded with other settings (changed: "
                               f"{', '.join(changed)}); merge shards of one embed run")
        if meta.get(MODEL_CONFIG_KEY) != first.metadata().get(MODEL_CONFIG_KEY):
            raise ArchiveError(f"{archive.folder} and {first.folder} name the graph differently (model_config); "
                               "merge shards of one embed run")
    counts = {part.count for part in parts}
    if len(counts) > 1:
        raise ArchiveError(f"the archives are shards of different splits ({', '.join(map(str, sorted(parts, key=str)))}"
                           "); merge the shards of one --shard i/n split (same n)")


def _in_run_order(archives: Sequence[ArchiveDB]) -> list[_Recording]:
    recordings = [r for i, a in enumerate(archives) for r in _recordings(a, i)]
    owner: dict[tuple[str, str, str], Path] = {}
    for r in recordings:
        key = (r.filename, r.deployment, r.project)
        if key in owner:
            raise ArchiveError(f"{r.filename} is in both {owner[key]} and {archives[r.shard].folder}; merge the "
                               "archives of one --shard i/n split, each once")
        owner[key] = archives[r.shard].folder
    return sorted(recordings, key=lambda r: r.position)


def _audio_sources(archives: Sequence[ArchiveDB], order: Sequence[_Recording]) -> dict:
    """hoplite's ``audio_sources`` of the one run: each project once, in the order its first recording comes."""
    globs: dict[str, dict] = {}
    for archive in archives:
        for item in (archive.metadata().get(AUDIO_SOURCES_KEY) or {"audio_globs": []})["audio_globs"]:
            globs.setdefault(item["dataset_name"], item)
    first = {}
    for r in order:
        first.setdefault(r.project, r.position)
    names = sorted(globs, key=lambda n: (n not in first, first.get(n, 0)))
    return {"audio_globs": [globs[n] for n in names]}


def _copy_recording(out: ArchiveDB, src: ArchiveDB, r: _Recording) -> int:
    new_id = out.begin_recording(r.filename, r.deployment, r.project, r.datetime)
    try:
        ids = [row[0] for row in src.db.execute("SELECT id FROM windows WHERE recording_id = ? ORDER BY id",
                                                (r.id,))]
        for start in range(0, len(ids), FLUSH_WINDOWS):  # the batches embed adds them in
            part = ids[start:start + FLUSH_WINDOWS]
            rows = src.windows(part)
            out.add_windows(new_id, [(w.start_s, w.end_s) for w in rows], src.vectors(part))
        out.commit_recording(new_id, r.sha256, r.n_windows, r.audio_seconds)
    except BaseException:
        out.abort_recording()
        raise
    return new_id


def _copy_annotations(out: ArchiveDB, src: ArchiveDB, ids: dict[int, int]) -> None:
    rows = [(ids[rid], offsets, label, label_type, provenance) for rid, offsets, label, label_type, provenance in
            src.db.execute("SELECT recording_id, offsets, label, label_type, provenance FROM annotations ORDER BY id")
            if rid in ids]
    for provenance in dict.fromkeys(row[-1] for row in rows):
        out.add_annotations([(rid, *offsets_of(blob), label, label_type)
                             for rid, blob, label, label_type, p in rows if p == provenance], provenance)


def merge_archives(out_dir: str | Path, shard_dirs: Sequence[str | Path]) -> ArchiveMergeSummary:
    """Join the shards' archive folders into ``out_dir`` (new or empty); see the module docstring."""
    out_dir, folders = merge_folders(out_dir, shard_dirs, ArchiveError, what="--db folders", one="archive",
                                     flag="--db")
    for folder in folders:
        if not (folder / SQLITE_NAME).is_file():
            raise ArchiveError(f"{folder}: no archive database here ({SQLITE_NAME} missing)")
    locks = [OutputLock(f) for f in folders]  # no shard may still be written
    archives: list[ArchiveDB] = []
    try:
        for lock in locks:
            lock.acquire()
        archives = [ArchiveDB.open_reader(f) for f in folders]
        _check(archives)
        order = _in_run_order(archives)
        summary = ArchiveMergeSummary(len(archives))
        with ArchiveDB.open_writer(out_dir) as out:
            meta = archives[0].metadata()
            out.initialise(archives[0].settings(), meta[MODEL_CONFIG_KEY])
            out.db.execute("BEGIN")
            out.set_metadata(AUDIO_SOURCES_KEY, _audio_sources(archives, order))
            out.db.execute("COMMIT")
            new_ids: list[dict[int, int]] = [{} for _ in archives]
            kept: dict[str, str] = {}
            for r in order:
                if r.sha256 in kept:  # one run skips the same audio under a later name
                    summary.skipped.append((r.filename, f"same audio as {kept[r.sha256]}, already embedded"))
                    continue
                kept[r.sha256] = r.filename
                new_ids[r.shard][r.id] = _copy_recording(out, archives[r.shard], r)
                summary.recordings += 1
                summary.windows += r.n_windows
            for archive, ids in zip(archives, new_ids):
                _copy_annotations(out, archive, ids)
    finally:
        for archive in archives:
            archive.close()
        for lock in locks:
            lock.release()
    return summary


__all__ = ["merge_archives", "ArchiveMergeSummary"]
