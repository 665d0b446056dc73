"""`vocalprobe data ...`: prepare, split and describe datasets (torch-free)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Prepare, split and describe datasets (manifests).", no_args_is_help=True)
