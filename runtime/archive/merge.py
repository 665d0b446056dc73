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
    MODEL_CONFIG_KEY,
    RUN_KEY,
    SHARD_FINISHED_KEY,
    SHARD_KEY,
    SQLITE_NAME,
    ArchiveDB,
    ArchiveError,
    FinishedRecording,
)
from vocalprobe.runtime.core.out_lock import OutputLock
from vocalprobe.runtime.core.shards import Shard, check_split, merge_folders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Recording:
    shard: int  # index into the opened shards
    stored: FinishedRecording  # as that shard holds it
    position: int  # its place in the whole input list


@dataclass
class ArchiveMergeSummary:
    shards: int
    recordings: int = 0
    windows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why): what one run would have skipped


def _recordings(archive: ArchiveDB, shard: int) -> list[_Recording]:
    out = []
    for r in archive.finished_recordings():
        if r.position is None:
            raise ArchiveError(f"{archive.folder}: {r.filename} has no place in the input list (embedded by a "
                               "vocalprobe before `merge --db`); embed that shard again into a new --db folder")
        out.append(_Recording(shard, r, r.position))
    return out


def _check(archives: Sequence[ArchiveDB]) -> None:
    """Refuse archives that are not the shards of one ``embed`` run."""
    first, settings = archives[0], archives[0].settings()
    parts = []
    for archive in archives:
        meta = archive.metadata()
        if meta.get(SHARD_KEY) is None:
            raise ArchiveError(f"{archive.folder}: not the archive of an `embed --shard i/n` run; merge the --db "
                               "folders of the shards")
        parts.append((archive.folder, Shard.parse(meta[SHARD_KEY]), meta.get(RUN_KEY)))
        if meta.get(SHARD_FINISHED_KEY) is False:  # absent: a shard of a vocalprobe before the mark
            raise ArchiveError(f"{archive.folder}: shard {meta[SHARD_KEY]} is unfinished (its embed run was stopped "
                               f"before every input was tried); run the same `embed --shard {meta[SHARD_KEY]}` into "
                               "it again to finish it, then merge")
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
    check_split(parts, ArchiveError, things="archives", command="embed", flag="--db")


def _in_run_order(archives: Sequence[ArchiveDB]) -> list[_Recording]:
    recordings = [r for i, a in enumerate(archives) for r in _recordings(a, i)]
    owner: dict[tuple[str, str, str], Path] = {}
    for r in recordings:
        key = (r.stored.filename, r.stored.deployment, r.stored.project)
        if key in owner:
            raise ArchiveError(f"{r.stored.filename} is in both {owner[key]} and {archives[r.shard].folder}; merge "
                               "the archives of one --shard i/n split, each once")
        owner[key] = archives[r.shard].folder
    return sorted(recordings, key=lambda r: r.position)


def _audio_globs(archives: Sequence[ArchiveDB], order: Sequence[_Recording]) -> list[dict]:
    """hoplite's ``audio_sources`` of the one run: each project once, in the order its first recording comes."""
    globs: dict[str, dict] = {}
    for archive in archives:
        for item in archive.audio_globs():
            globs.setdefault(item["dataset_name"], item)
    first = {}
    for r in order:
        first.setdefault(r.stored.project, r.position)
    names = sorted(globs, key=lambda n: (n not in first, first.get(n, 0)))
    return [globs[n] for n in names]


def _copy_recording(out: ArchiveDB, src: ArchiveDB, r: FinishedRecording) -> int:
    new_id = out.begin_recording(r.filename, r.deployment, r.project, r.datetime)
    try:
        windows = src.recording_windows(r.id)
        for start in range(0, len(windows), FLUSH_WINDOWS):  # the batches embed adds them in
            part = windows[start:start + FLUSH_WINDOWS]
            out.add_windows(new_id, [(w.start_s, w.end_s) for w in part], src.vectors([w.id for w in part]))
        out.commit_recording(new_id, r.sha256, r.n_windows, r.audio_seconds)
    except BaseException:
        out.abort_recording()
        raise
    return new_id


def _copy_annotations(out: ArchiveDB, src: ArchiveDB, ids: dict[int, int]) -> None:
    rows = [a for a in src.annotation_rows() if a.recording_id in ids]
    for provenance in dict.fromkeys(a.provenance for a in rows):
        out.add_annotations([(ids[a.recording_id], a.start_s, a.end_s, a.label, a.label_type)
                             for a in rows if a.provenance == provenance], provenance)


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
            out.set_audio_globs(_audio_globs(archives, order))
            new_ids: list[dict[int, int]] = [{} for _ in archives]
            kept: dict[str, str] = {}
            for item in order:
                r = item.stored
                if r.sha256 in kept:  # one run skips the same audio under a later name
                    summary.skipped.append((r.filename, f"same audio as {kept[r.sha256]}, already embedded"))
                    continue
                kept[r.sha256] = r.filename
                new_ids[item.shard][r.id] = _copy_recording(out, archives[item.shard], r)
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
