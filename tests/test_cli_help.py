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


def _paths(command, path=()):
    yield list(path)
    for name, sub in getattr(command, "commands", {}).items():
        yield from _paths(sub, (*path, name))


def test_every_help_names_values_not_type_placeholders():
    """typer shows `<int>`, `<list[Path]>` and `--help <bool>` unless a parameter has a metavar (commands/help.py)."""
    import re

    from typer.testing import CliRunner

    runner = CliRunner()
    placeholders = {}
    paths = list(_paths(typer.main.get_command(app)))
    assert len(paths) > 20  # every group and command, nested ones included
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        found = set(re.findall(r"<[\w\[\]|,.]+>", result.output))  # <int>, <list[Path]>, <a|b>
        if found:
            placeholders[" ".join(path) or "vocalprobe"] = sorted(found)
    assert not placeholders, placeholders
    bench = runner.invoke(app, ["bench", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--batch\s+INTEGER", bench) and "MODEL" in bench
