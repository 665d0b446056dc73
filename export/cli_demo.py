"""`vocalprobe demo`: the whole product on the embedded default (study, export, validate, stream), offline."""

from __future__ import annotations

from typing import Annotated

import typer

from vocalprobe.runtime.cli_common import friendly_errors


@friendly_errors
def demo(
    threads: Annotated[int, typer.Option(help="torch CPU threads for the study and export (1 is fastest on a busy "
                                              "2-core machine).")] = 1,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Run the embedded default end to end: study -> export (fp32, int8, fusion) -> validate -> stream + score.

    Everything lands under artifacts/ (start with artifacts/demo/report.md); nothing is downloaded.
    """
    import torch
    from rich.console import Console
    from rich.markdown import Markdown

    from vocalprobe.export.demo import run_demo

    torch.set_num_threads(threads)
    console = Console()
    report = run_demo(".", log=lambda m: console.print(m, markup=False, highlight=False), progress=progress)
    console.print(Markdown(report.read_text(encoding="utf-8")))
    typer.echo(f"report: {report}")
