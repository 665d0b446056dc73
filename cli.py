"""The `vocalprobe` console script: one typer app that joins each subpackage's commands.

Heavy libraries (torch, transformers, onnxruntime) are imported inside command bodies only, so `vocalprobe --help`
is instant and the runtime commands work where torch is not installed.
"""

from __future__ import annotations

import typer

from vocalprobe import __version__
from vocalprobe.runtime import cli_data, cli_runtime
from vocalprobe.export import cli_demo, cli_export
from vocalprobe.training import cli_aves, cli_study

app = typer.Typer(
    name="vocalprobe",
    help="Probe self-supervised speech models layer by layer on animal vocalizations, export the best layer "
    "to ONNX, and run it on field recordings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# In the order of the workflow: the demo, then data -> study -> export -> validate -> field runtime.
app.command("demo")(cli_demo.demo)
app.add_typer(cli_data.app, name="data")
app.command("study")(cli_study.study)
app.command("convert-aves")(cli_aves.convert_aves)
app.add_typer(cli_export.app, name="export")
app.command("validate")(cli_runtime.validate)
app.command("stream")(cli_runtime.stream)
app.command("bench")(cli_runtime.bench)
app.command("score-events")(cli_runtime.score_events)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vocalprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """vocalprobe: bioacoustics with self-supervised speech models."""


def main() -> None:
    app()
