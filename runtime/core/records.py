"""Dataclasses as JSON records: one pair of functions instead of a hand-written ``to_dict``/``from_dict`` per class.

JSON has arrays, not tuples: ``to_record`` writes every tuple as a list, and ``from_record`` turns lists back into
tuples (nested ones too) and dicts back into nested dataclasses by reading the dataclass's field annotations.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def to_record(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` with tuples as lists, so the dict equals what reading its JSON gives back."""
    return _plain(dataclasses.asdict(obj))


def from_record(cls: type[T], data: Mapping[str, Any], *, ignore_unknown: bool = False) -> T:
    """``cls(**data)`` with each value typed by its field's annotation (lists -> tuples, dicts -> dataclasses).

    Missing fields take their defaults; unknown keys are an error unless ``ignore_unknown`` (a newer writer's extras).
    """
    types_of = _field_types(cls)
    unknown = sorted(set(data) - set(types_of))
    if unknown and not ignore_unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; known: {', '.join(types_of)}")
    return cls(**{name: _typed(types_of[name], value) for name, value in data.items() if name in types_of})


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _typed(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _typed(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], item) for item in value)
        if args:
            return tuple(_typed(a, item) for a, item in zip(args, value, strict=True))
        return tuple(value)
    if origin is list:
        return [_typed(args[0], item) for item in value] if args else list(value)
    if origin is dict:
        return {key: _typed(args[1], item) for key, item in value.items()} if args else dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_record(hint, value)
    return value
