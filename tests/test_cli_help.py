"""Every command's help reads as written: typer renders help through rich markup, which silently drops a bracketed
word such as the ``[parquet]`` of ``pip install 'vocalprobe[parquet]'`` unless it is escaped (``\\[``)."""

from __future__ import annotations

import typer
from rich.text import Text

from vocalprobe.cli import app


def _texts(command, path: str):
    yield path, command.help or ""
    for param in command.params:
        yield f"{path} {param.name}", getattr(param, "help", None) or ""
    for name, sub in getattr(command, "commands", {}).items():  # typer's own click copy: no isinstance
        yield from _texts(sub, f"{path} {name}")


def test_rich_markup_drops_nothing_from_any_help_text():
    eaten = []
    for where, text in _texts(typer.main.get_command(app), "vocalprobe"):
        shown = Text.from_markup(text).plain
        if shown != text.replace("\\[", "["):
            eaten.append(f"{where}: {text!r} shows as {shown!r}")
    assert not eaten, "escape '[' as '\\\\[' in these help texts:\n" + "\n".join(eaten)
