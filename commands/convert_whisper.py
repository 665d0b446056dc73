"""`vocalprobe convert-whisper`: turn a faster-whisper / CTranslate2 folder or OpenAI's .pt into a Hugging Face
Whisper folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import friendly_errors

app = typer.Typer()


@app.command("convert-whisper")
@friendly_errors
def convert_whisper(
    source: Annotated[Path, typer.Argument(
        help="A faster-whisper / CTranslate2 model folder (model.bin + config.json; a float16 or float32 model, not "
             "int8) or its model.bin, or an OpenAI whisper checkpoint (.pt holding dims and model_state_dict).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Output folder. Default: artifacts/models/whisper-SIZE[.en], named from the model's "
                      "sizes.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
) -> None:
    """Convert a Whisper checkpoint into a transformers WhisperForConditionalGeneration folder and verify its
    encoder numerically."""
    from rich.console import Console

    from vocalprobe.training.whisper.convert import convert_whisper as run

    console = Console(stderr=True)
    with console.status("converting") as status:
        report = run(source, out, overwrite=force,
                     progress=lambda message: (status.update(message), console.log(message)))
    typer.echo(f"wrote {report.out_dir} ({report.name}, {report.num_tensors} {report.layout} tensors)")
    for name, value in report.checks.items():
        typer.echo(f"encoder output matches {name}: relative max difference {value:.2e} "
                   f"(tolerance {report.tolerances[name]:.0e})")
    for name, why in report.skipped.items():
        typer.echo(f"not checked against {name}: {why}")
