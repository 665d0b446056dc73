"""Dataclasses <-> JSON records: tuples survive the trip through JSON arrays, nested dataclasses come back typed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from vocalprobe.runtime.core.records import from_record, to_record


@dataclass(frozen=True)
class Inner:
    name: str
    span: tuple[float, float]


@dataclass(frozen=True)
class Outer:
    labels: tuple[str, ...]
    grid: tuple[tuple[int, ...], ...]
    inners: list[Inner]
    limits: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = "default"


def _example() -> Outer:
    return Outer(labels=("a", "b"), grid=((1, 2), (3, 4)), inners=[Inner("x", (0.5, 1.0))], limits=(3,),
                 extra={"nested": [1, 2], "t": "s"})


def test_record_equals_its_json_and_round_trips():
    original = _example()
    record = to_record(original)
    assert record == json.loads(json.dumps(record))  # no tuples left: what is written is what is read back
    assert record["grid"] == [[1, 2], [3, 4]] and record["inners"] == [{"name": "x", "span": [0.5, 1.0]}]
    back = from_record(Outer, json.loads(json.dumps(record)))
    assert back == original
    assert isinstance(back.grid[0], tuple) and isinstance(back.inners[0], Inner)
    assert isinstance(back.inners[0].span, tuple) and isinstance(back.limits, tuple)


def test_none_and_missing_fields_take_none_and_defaults():
    record = {"labels": ["a"], "grid": [], "inners": [], "limits": None}
    back = from_record(Outer, record)
    assert back.limits is None and back.note == "default" and back.extra == {} and back.labels == ("a",)


def test_unknown_keys_are_named_unless_ignored():
    record = {**to_record(_example()), "newer": 1}
    with pytest.raises(ValueError, match="Outer has no field.*newer"):
        from_record(Outer, record)
    assert from_record(Outer, record, ignore_unknown=True) == _example()


def test_fixed_length_tuple_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError):
        from_record(Inner, {"name": "x", "span": [1.0, 2.0, 3.0]})
