"""``--shard i/n``: a deterministic partition of a job's inputs, for SLURM array jobs and GNU parallel.

An input belongs to shard ``sha256(key) mod n``, where the key is its path relative to its input root (what the
outputs call it), never Python's ``hash()`` (salted per process). So every array task computes the same partition
without talking to the others, and adding files later does not move the ones already placed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

from vocalprobe.runtime.core.errors import VocalprobeError

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
