"""``--shard i/n``: a deterministic partition of a job's inputs, for SLURM array jobs and GNU parallel.

An input belongs to shard ``sha256(key) mod n``, where the key is its path relative to its input root (what the
outputs call it), never Python's ``hash()`` (salted per process). So every array task computes the same partition
without talking to the others, and adding files later does not move the ones already placed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from vocalprobe.runtime.core.digests import json_sha256
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.out_lock import LOCK_NAME

T = TypeVar("T")


class ShardError(VocalprobeError):
    """A --shard value that is not ``i/n`` with 0 <= i < n."""


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based, like $SLURM_ARRAY_TASK_ID of an array 0-(n-1)
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(f"--shard {self.index}/{self.count}: expected i/n with n >= 1 and 0 <= i < n "
                             "(e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-(n-1))")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        index, slash, count = text.strip().partition("/")
        try:
            if not slash:
                raise ValueError
            return cls(int(index), int(count))
        except ValueError:
            raise ShardError(f"--shard {text!r}: expected i/n, e.g. 0/4 (0-based)") from None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index

    def select(self, items: Iterable[T], key: Callable[[T], str]) -> Iterator[T]:
        """The items of this shard, in their given order."""
        return (item for item in items if self.holds(key(item)))


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of an input named ``key`` (a POSIX relative path)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(text: str | None) -> Shard | None:
    return None if text is None else Shard.parse(text)


def missing_shards(parts: Iterable[Shard]) -> list[Shard]:
    """The shards of the split ``parts`` belong to that are not among them (all of one count, checked before)."""
    parts = list(parts)
    if not parts:
        return []
    count = parts[0].count
    have = {p.index for p in parts}
    return [Shard(i, count) for i in range(count) if i not in have]


def run_identity(names: Sequence[str]) -> dict[str, Any]:
    """What every shard records of its whole run, for a merge to compare: the length and digest of the input list
    before ``--shard`` split it (the names in their order). Shards of runs over other inputs differ here."""
    return {"inputs": len(names), "inputs_sha256": json_sha256(list(names))}


def check_split(parts: Sequence[tuple[Path, Shard, Any]], error: type[Exception], *, things: str, command: str,
                flag: str) -> None:
    """Refuse parts that are not every shard of one run, before anything is written: ``parts`` holds each folder's
    (folder, shard, run identity). A shard given twice, shards of different splits, missing shard numbers (named)
    and shards of runs over other inputs are each one ``error``."""
    seen: dict[Shard, Path] = {}
    for folder, part, _ in parts:
        if part in seen:
            raise error(f"{folder} and {seen[part]} both hold shard {part}; give each shard once")
        seen[part] = folder
    if len({part.count for part in seen}) > 1:
        raise error(f"the {things} are shards of different splits ({', '.join(map(str, sorted(seen, key=str)))}); "
                    "merge the shards of one --shard i/n split (same n)")
    missing = missing_shards(seen)
    if missing:
        raise error(f"shard(s) {', '.join(map(str, missing))} of the split are missing; give the {flag} folders of "
                    f"every shard ({command} the missing ones with the same inputs and --shard first)")
    runs = {json_sha256(run): folder for folder, _, run in parts}
    if len(runs) > 1:
        raise error(f"the {things} are shards of runs over different inputs ({', '.join(map(str, runs.values()))}); "
                    f"merge the shards of one {command} run (the same input folders)")


def merge_folders(out_dir: str | Path, shard_dirs: Sequence[str | Path], error: type[Exception], *, what: str,
                  one: str, flag: str) -> tuple[Path, list[Path]]:
    """The checks every merge of shard folders makes (stream outputs in ``runtime/field/merge``, archives in
    ``runtime/archive/merge``): shards given, each once, a new or empty ``out_dir`` that is none of them. ``error``
    is raised naming ``what``."""
    out_dir = Path(out_dir)
    folders = [Path(d) for d in shard_dirs]
    if not folders:
        raise error(f"give the {what} of the shards to merge")
    if any(p.name != LOCK_NAME for p in out_dir.glob("*")) if out_dir.is_dir() else out_dir.exists():
        raise error(f"{out_dir} is not empty; merge into a new folder")
    resolved = [f.resolve() for f in folders]
    if len(set(resolved)) != len(resolved):
        raise error(f"a shard {one} is given twice; give each shard's {flag} folder once")
    if out_dir.resolve() in resolved:
        raise error(f"{out_dir} is one of the shards; merge into a new folder")
    return out_dir, folders
