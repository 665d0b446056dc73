"""`vocalprobe merge OUT SHARD_OUT...`: the output folders of ``stream --shard i/n`` runs joined into exactly what one
run over all the inputs writes.

Per-file tables are copied as they are; the JSONL gets each recording's final rows (after its last retraction) in
the order one run writes them, which is each file's place in the whole input list, recorded by every shard before
``--shard`` split it (``RunState.number``); ``errors.csv``, the combined tables and the journal are then made the
way ``run_sources`` makes them, from the joined journal. The shards must share the run fingerprint and output
options, be every shard of one split of one input list (the identity each shard's journal records,
``core.shards.run_identity``), each finished, and no recording may be in two of them: anything else is not one run,
and is refused before OUT is made.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from vocalprobe.runtime.core.atomic import atomic_open, atomic_write_bytes
from vocalprobe.runtime.core.detections.layout import JSONL_NAME, PARAMS_NAME
from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.out_lock import OutputLock
from vocalprobe.runtime.core.shards import Shard, check_split, merge_folders
from vocalprobe.runtime.field.run_state import (
    DONE,
    FAILED,
    FileRecord,
    RunState,
    read_settings,
)


class MergeError(VocalprobeError):
    """Shard folders that are not the parts of one run, or an output folder that is not new."""


@dataclass(frozen=True)
class MergeSummary:
    shards: int
    done: int
    failed: int
    detections: int


@dataclass
class _Shard:
    folder: Path
    settings: dict
    records: list[FileRecord]
    jsonl_committed: int
    part: str | None  # the ``--shard i/n`` it holds, its run's identity and its number of files (``RunState.shard``)
    run: dict | None
    files: int | None


def _changed(a: dict, b: dict) -> str:
    return ", ".join(sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)))


def _read_shard(folder: Path) -> _Shard:
    settings = read_settings(folder)
    with RunState(folder, settings) as state:
        return _Shard(folder, settings, state.records(), state.jsonl_committed, *state.shard())


def run_order(record: FileRecord) -> tuple:
    """Where one run over all the inputs puts a recording: its place in the input list, else (journals of older
    versions) the order a folder is listed in (sorted paths)."""
    return (record.position is None, record.position or 0, Path(record.key).parts)


def _final_rows(jsonl: Path, committed: int) -> dict[str, list[bytes]]:
    """Each recording's rows in a shard's JSONL, after its last retraction (only the bytes the journal vouches for)."""
    rows: dict[str, list[bytes]] = {}
    if not jsonl.is_file():
        return rows
    with open(jsonl, "rb") as handle:
        data = handle.read(committed)
    for line in data.splitlines(keepends=True):
        item = json.loads(line)
        if "retract" in item:
            rows[item["retract"]] = []
        else:
            rows.setdefault(item["file"], []).append(line)
    return rows


def _copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise MergeError(f"{src}: listed in its folder's journal but missing; re-run that shard")
    with atomic_open(dst, "wb") as out, src.open("rb") as handle:
        shutil.copyfileobj(handle, out)


def _check(shards: Sequence[_Shard]) -> dict:
    """The output options the shards share (refusing shards that are not the parts of one run)."""
    first = shards[0]
    for shard in shards[1:]:
        if json_sha256(shard.settings) != json_sha256(first.settings):
            raise MergeError(f"{shard.folder} and {first.folder} were made with other settings (changed: "
                             f"{_changed(shard.settings, first.settings)}); merge shards of one run")
    for shard in shards:
        if shard.part is None:
            raise MergeError(f"{shard.folder}: not the output folder of a `stream --shard i/n` run (or of one made by "
                             "a vocalprobe before merge checked runs); merge the --out folders of the shards")
    check_split([(s.folder, Shard.parse(s.part), s.run) for s in shards], MergeError, things="folders",
                command="stream", flag="--out")
    for shard in shards:
        if len(shard.records) < (shard.files or 0):
            raise MergeError(f"{shard.folder}: shard {shard.part} is unfinished ({len(shard.records)} of its "
                             f"{shard.files} file(s) done or failed: its run was stopped); run the same `stream "
                             f"--shard {shard.part}` into it again to finish it, then merge")
    owner: dict[str, Path] = {}
    options: dict[str, tuple[dict, Path]] = {}
    for shard in shards:
        for record in shard.records:
            if record.key in owner:
                raise MergeError(f"{record.name} is in both {owner[record.key]} and {shard.folder}; merge the "
                                 "folders of one --shard i/n split (same n), each once")
            owner[record.key] = shard.folder
            if record.options is not None:
                options.setdefault(json_sha256(record.options), (record.options, shard.folder))
    if len(options) > 1:
        (a, where_a), (b, where_b) = list(options.values())[:2]
        raise MergeError(f"{where_a} and {where_b} hold files written with other output options (changed: "
                         f"{_changed(a, b)}); re-run the shards with the same --format, --min-conf, --top-k, "
                         "--merge, --ignore and --scores (or --rewrite-outputs)")
    return next(iter(options.values()))[0] if options else {}


def _params(shards: Sequence[_Shard]) -> bytes | None:
    found = {shard.folder: (shard.folder / PARAMS_NAME).read_bytes() for shard in shards
             if (shard.folder / PARAMS_NAME).is_file()}
    if len(set(found.values())) > 1:
        raise MergeError(f"the shards' {PARAMS_NAME} differ ({', '.join(str(f) for f in found)}): they were not "
                         "made by one vocalprobe with one model and settings")
    return next(iter(found.values()), None)


def merge_outputs(out_dir: str | Path, shard_dirs: Sequence[str | Path]) -> MergeSummary:
    """Join the shard folders into ``out_dir`` (new or empty); see the module docstring."""
    from vocalprobe.runtime.field.outputs import Outputs

    out_dir, folders = merge_folders(out_dir, shard_dirs, MergeError, what="output folders", one="folder",
                                     flag="--out")
    locks = [OutputLock(f) for f in folders]  # no shard may still be running
    try:
        for lock, folder in zip(locks, folders):
            if not folder.is_dir():
                raise MergeError(f"{folder}: not a folder")
            lock.acquire()
        shards = [_read_shard(f) for f in folders]
        options = _check(shards)
        params = _params(shards)
        records = sorted((r for s in shards for r in s.records), key=run_order)
        source = {r.key: s for s in shards for r in s.records}
        formats = list(options.get("formats", []))
        with Outputs(out_dir, formats, 0.0, scores=options.get("scores")) as outputs, \
                RunState(out_dir, shards[0].settings, options) as state:
            for record in records:
                if record.status == DONE:
                    for rel in record.outputs:
                        if rel != JSONL_NAME:
                            _copy(source[record.key].folder / rel, out_dir / rel)
            if params is not None:
                atomic_write_bytes(out_dir / PARAMS_NAME, params)
            jsonl_end = None
            if "jsonl" in formats or any(JSONL_NAME in r.outputs for r in records):
                rows = {s.folder: _final_rows(s.folder / JSONL_NAME, s.jsonl_committed) for s in shards}
                text = b"".join(line for r in records if r.status == DONE and r.wrote_jsonl
                                for line in rows[source[r.key].folder].get(r.name, []))
                atomic_write_bytes(out_dir / JSONL_NAME, text)
                jsonl_end = len(text)
            state.merge(records, jsonl_committed=jsonl_end)
            outputs.write_errors(state.problems())  # failed files and those read only in part
            outputs.combine(state.done_tables)
    finally:
        for lock in locks:
            lock.release()
    return MergeSummary(len(shards), sum(r.status == DONE for r in records), sum(r.status == FAILED for r in records),
                        sum(r.detections or 0 for r in records if r.status == DONE))
