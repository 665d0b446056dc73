"""The `vocalprobe` console script: one typer app that joins the command groups of ``vocalprobe.commands``.

Each group imports its work (torch, transformers, onnxruntime, the runtime itself) inside its command bodies, so
`vocalprobe --help` loads none of it (benchmarks/bench_cli.py) and the runtime commands work without torch.
"""

from __future__ import annotations

import logging

import typer

from vocalprobe import __version__
from vocalprobe.commands import archive, convert_aves, convert_whisper, data, demo, export, field, segments, study
from vocalprobe.commands.help import HelpGroup

app = typer.Typer(
    name="vocalprobe",
    cls=HelpGroup,
    help="Probe self-supervised speech models layer by layer on animal vocalizations, export the best layer "
    "to ONNX, and run it on field recordings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# In the order of the workflow: the demo, then data -> study -> export -> validate -> field runtime -> the embedding
# archive (embed once, then search, label, fit and apply probes; `export attach` puts one on its graph).
app.add_typer(demo.app)
app.add_typer(data.app, name="data")
app.add_typer(study.app)
app.add_typer(convert_aves.app)
app.add_typer(convert_whisper.app)
app.add_typer(export.app, name="export")
app.add_typer(field.app)
app.add_typer(segments.app)
app.add_typer(archive.app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vocalprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """vocalprobe: bioacoustics with self-supervised speech models."""


def main() -> None:
    # Library modules warn through logging; the terminal shows each warning as one line.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("vocalprobe").addHandler(handler)
    app()
