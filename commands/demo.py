"""`vocalprobe demo`: the whole product on the embedded default, offline (``vocalprobe.demo`` does the work)."""

from __future__ import annotations

from typing import Annotated

import typer

from vocalprobe.commands.errors import friendly_errors
from vocalprobe.commands.options import ProgressOpt

app = typer.Typer()


@app.command("demo")
@friendly_errors
def demo(
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads for the study and export (1 is fastest on "
                                                     "a busy 2-core machine).")] = 1,
    progress: ProgressOpt = True,
) -> None:
    """Run the embedded default end to end: study -> export (fp32, int8, fusion) -> validate -> stream + score ->
    the agile loop (embed, search, label, probe fit/apply, attach, stream).

    Everything lands under artifacts/ (start with artifacts/demo/report.md); nothing is downloaded.
    """
    import torch
    from rich.console import Console
    from rich.markdown import Markdown

    from vocalprobe.demo import run_demo

    torch.set_num_threads(threads)
    console = Console()
    report = run_demo(".", log=lambda m: console.print(m, markup=False, highlight=False), progress=progress)
    console.print(Markdown(report.read_text(encoding="utf-8")))
    typer.echo(f"report: {report}")
