"""The `vocalprobe` console script: one typer app that joins each subpackage's commands.

Heavy libraries (torch, transformers, onnxruntime) are imported inside command bodies only, so `vocalprobe --help`
is instant and the runtime commands work where torch is not installed.
"""

from __future__ import annotations

import logging

import typer

from vocalprobe import __version__
from vocalprobe import demo
from vocalprobe.export import attach as export_attach
from vocalprobe.export import cli as export_cli
from vocalprobe.runtime.archive import cli as archive_cli
from vocalprobe.runtime.datasets import cli as data_cli
from vocalprobe.runtime.field import cli as field_cli
from vocalprobe.training import archive_probe
from vocalprobe.training.aves import cli as aves_cli
from vocalprobe.training.study import cli as study_cli

app = typer.Typer(
    name="vocalprobe",
    help="Probe self-supervised speech models layer by layer on animal vocalizations, export the best layer "
    "to ONNX, and run it on field recordings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# In the order of the workflow: the demo, then data -> study -> export -> validate -> field runtime.
app.command("demo")(demo.demo_command)
app.add_typer(data_cli.app, name="data")
app.command("study")(study_cli.study)
app.command("convert-aves")(aves_cli.convert_aves)
app.add_typer(export_cli.app, name="export")
app.command("validate")(field_cli.validate)
app.command("stream")(field_cli.stream)
app.command("merge")(field_cli.merge)
app.command("bench")(field_cli.bench)
app.command("score-events")(field_cli.score_events)
app.command("review")(field_cli.review)
# The embedding archive: embed once, then search, label, fit and apply probes, attach one to its graph.
app.command("embed")(archive_cli.embed)
app.command("search")(archive_cli.search)
app.add_typer(archive_cli.label_app, name="label")
archive_cli.probe_app.command("fit")(archive_cli.fit_command(archive_probe.fit_head))
app.add_typer(archive_cli.probe_app, name="probe")
export_cli.app.command("attach")(archive_cli.attach_command(export_attach.attach_head))


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
