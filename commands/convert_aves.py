"""`vocalprobe convert-aves`: turn the AVES release into a Hugging Face HubertModel directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import friendly_errors

app = typer.Typer()


@app.command("convert-aves")
@friendly_errors
def convert_aves(
    checkpoint: Annotated[Path, typer.Argument(
        help="AVES checkpoint: aves-base-bio.torchaudio.pt (TorchAudio state dict) or aves-base-bio.pt (fairseq), "
             "or a .safetensors state dict in either layout.")],
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Model config JSON (TorchAudio wav2vec2_model arguments, e.g. "
                         "aves-base-bio.torchaudio.model_config.json, or a fairseq model cfg). Default: the cfg "
                         "stored in a fairseq checkpoint, else <checkpoint stem>.model_config.json beside it.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Output directory. Default: $VOCALPROBE_AVES_DIR or artifacts/models/aves-bio, where the "
                      "`aves-bio` backbone is looked up.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
) -> None:
    """Convert an AVES checkpoint into a Hugging Face HubertModel directory and verify it numerically."""
    from rich.console import Console

    from vocalprobe.training.aves.convert import convert_aves as run

    console = Console(stderr=True)
    with console.status("converting") as status:
        report = run(checkpoint, out, config_path=config, overwrite=force,
                     progress=lambda message: (status.update(message), console.log(message)))
    typer.echo(f"wrote {report.out_dir} ({report.num_tensors} tensors, {report.layout} layout)")
    if report.dropped:
        typer.echo(f"dropped pre-training tensors: {', '.join(report.dropped)}")
    typer.echo(f"hidden states match the {report.reference} reference: max abs diff {report.max_abs_diff:.2e} "
               f"(tolerance {report.tolerance:.1e})")
