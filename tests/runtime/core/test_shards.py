"""--shard i/n (runtime/core/shards.py): a stable, complete, disjoint partition that never moves placed files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vocalprobe.runtime.core.shards import Shard, ShardError, parse_shard, shard_of

NAMES = [f"night{n}/2021050{d}_0{h}0000.WAV" for n in range(3) for d in range(1, 8) for h in range(6)]


def test_shards_partition_the_inputs_disjointly_and_completely():
    shards = [Shard(i, 4) for i in range(4)]
    parts = [list(s.select(NAMES, key=str)) for s in shards]
    assert sorted(n for part in parts for n in part) == sorted(NAMES)
    assert sum(len(p) for p in parts) == len(NAMES)
    assert all(parts), "126 names should land in every one of 4 shards"
    assert parts[0] == [n for n in NAMES if n in set(parts[0])]  # input order is kept


def test_adding_files_later_moves_none_of_the_others():
    """New recordings sort in among the old ones (an earlier night, a new folder): each shard still selects the
    files it selected before, so a re-run of one array task finds its finished files (an index-based split, such as
    round-robin over the listing, would move most of them)."""
    late = [f"night{n}/2021050{d}_0{h}3000.WAV" for n in range(3) for d in range(1, 8) for h in range(6)]
    grown = sorted(NAMES + late + [f"a-first/{i}.wav" for i in range(10)])
    for i in range(5):
        before = list(Shard(i, 5).select(NAMES, key=str))
        after = set(Shard(i, 5).select(grown, key=str))
        assert before and after.issuperset(before)
        assert not after.intersection(set(NAMES) - set(before))  # and takes none of the other shards' files


def test_the_partition_is_the_same_in_another_process():
    """sha256, not Python's salted hash(): every array task computes the same partition."""
    code = "from vocalprobe.runtime.core.shards import shard_of; print(shard_of('night1/REC3.FLAC', 7))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123"})
    assert int(other.stdout) == shard_of("night1/REC3.FLAC", 7)


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "a/b", "1/0", "2/"])
def test_bad_shards_are_one_line_errors(text):
    with pytest.raises(ShardError, match="--shard"):
        Shard.parse(text)


def test_parse():
    assert parse_shard("0/1") == Shard(0, 1) and parse_shard(None) is None
    assert str(parse_shard(" 3/8 ")) == "3/8"
    assert all(Shard(0, 1).holds(n) for n in NAMES)
