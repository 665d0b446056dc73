"""Help that names values the way command-line users expect (``--batch INTEGER``, ``MODEL...``), not typer's type
placeholders (``<int>``, ``<list[Path]>``, ``--help <bool>``).

The root group (``HelpGroup``) gives every parameter of every command a metavar once, when the CLI is built: flags
show none, options show their value (INTEGER, FLOAT, PATH, TEXT, or the choices), arguments their name.
"""

from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperGroup

#: typer's type labels (``display_type`` without its brackets) -> the metavar a help shows.
_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH", "Path": "PATH", "bool": ""}


class _Argument(TyperArgument):
    """An argument shows its name (the metavar) only; typer would add its type to it."""

    def display_type_rich(self, ctx):
        return None


def _value_name(param, ctx) -> str:
    label = param.display_type(ctx).strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list["):-1]
    return _NAMES.get(label, label.upper() if "|" not in label else label)


def _name_values(command, ctx) -> None:
    for param in command.params:
        if isinstance(param, TyperArgument):
            if param.metavar is None:
                param.metavar = (param.name or "").upper()
            param.__class__ = _Argument
        elif param.metavar is None:
            param.metavar = "" if getattr(param, "is_flag", False) else _value_name(param, ctx)
    help_option = command.get_help_option(ctx)  # created once per command and cached by it
    if help_option is not None:
        help_option.metavar = ""


def name_values(command) -> None:
    """Give ``command`` and every command under it help metavars (see the module's docstring)."""
    _name_values(command, typer.Context(command))
    for sub in getattr(command, "commands", {}).values():
        name_values(sub)


class HelpGroup(TyperGroup):
    """The root group: names the values of every command under it as it is built."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        name_values(self)
