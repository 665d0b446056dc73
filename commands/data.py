"""`vocalprobe data ...`: prepare, split and describe datasets (torch-free)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import friendly_errors

app = typer.Typer(help="Prepare, split and describe datasets (manifests).", no_args_is_help=True)
# Path arguments are declared readable=False: click would refuse an unreadable path as a usage error (exit 2, a
# box); the readers say what the OS said instead, as the one-line `error: ...` every command gives.


class Kind(str, Enum):
    folders = "folders"
    watkins = "watkins"
    imv = "imv"
    abzaliev = "abzaliev"
    synthetic = "synthetic"


SeedOpt = Annotated[int, typer.Option(help="Seed of the random 70:20:10 Train/Val/Test split (the paper's protocol).")]
StratifyOpt = Annotated[bool, typer.Option("--stratify/--no-stratify",
                                           help="Split every class on its own (keeps class proportions per split).")]


def _report_splits(report) -> None:
    for warning in report.warnings():
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


@app.command()
@friendly_errors
def prepare(
    kind: Annotated[Kind, typer.Argument(help="Dataset layout: folders (one sub-folder per class), watkins, imv, "
                                              "abzaliev, or synthetic (the embedded default, generated).")],
    source: Annotated[Optional[Path], typer.Argument(help="Folder of the downloaded dataset (not used by synthetic).",
                                                     readable=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder to write manifest.csv into.")] = Path(
        "artifacts/data/synthetic"),
    seed: SeedOpt = 42,
    stratify: StratifyOpt = False,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Drop a class (repeatable), e.g. Abzaliev's non-dog "
                                                              "sounds.")] = None,
    clips_per_class: Annotated[int, typer.Option(help="synthetic: clips per call type.")] = 60,
    field_minutes: Annotated[float, typer.Option(help="synthetic: length of the field recording (0: none).")] = 10.0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave unusable files (empty, text, truncated, NaN, "
                                                              "undecodable, refused links) out of the manifest, "
                                                              "report them and go on, instead of stopping.")] = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Also use symlinks (and listed paths) that lead "
                                                                      "outside the source folder.")] = False,
) -> None:
    """Write OUT/manifest.csv for a dataset, with a seeded Train/Val/Test split, and print its Table I summary.

    Every audio file is decoded once; if any is unusable, each is listed (and written to OUT/errors.csv) and no
    manifest is written, unless --skip-bad.
    """
    from vocalprobe.runtime.datasets import preparers, synthetic
    from vocalprobe.runtime.datasets.describe import render, summarize
    from vocalprobe.runtime.core.errors import DatasetError
    from vocalprobe.runtime.core.manifest import read_manifest, write_manifest
    from vocalprobe.runtime.datasets.scan import describe_skipped
    from vocalprobe.runtime.datasets.splits import assign_splits

    manifest_path = out / "manifest.csv"
    if kind is Kind.synthetic:
        typer.echo(f"generating the synthetic dataset in {out} (seed {seed}) ...")
        synthetic.generate_dataset(out, seed=seed, clips_per_class=clips_per_class, field_minutes=field_minutes,
                                   stratify=True)
    else:
        if source is None:
            raise DatasetError(f"`data prepare {kind.value}` needs the dataset folder: "
                               f"vocalprobe data prepare {kind.value} SOURCE_DIR --out DIR")
        out.mkdir(parents=True, exist_ok=True)
        prepared = preparers.PREPARERS[kind.value](source, out, follow_links=follow_links)
        for line in describe_skipped(prepared.skipped):
            typer.echo(line, err=True)
        errors_csv = preparers.write_problems(out, prepared.problems)
        for problem in prepared.problems:
            typer.secho(f"{'left out' if skip_bad else 'problem'}: {problem}", fg=typer.colors.YELLOW, err=True)
        if prepared.problems and not skip_bad:
            raise DatasetError(f"{len(prepared.problems)} unusable file(s) or folder(s) in {source}, listed above and "
                               f"in {errors_csv}; fix them, or pass --skip-bad to leave them out (no manifest written)")
        rows = preparers.drop_labels(prepared.rows, exclude or [])
        if not rows:
            raise DatasetError(f"{source}: no clips left after preparing")
        rows, report = assign_splits(rows, seed=seed, stratify=stratify)
        _report_splits(report)
        write_manifest(manifest_path, rows)
    typer.echo(f"wrote {manifest_path}")
    _print(render(summarize(read_manifest(manifest_path)), kind.value))


@app.command()
@friendly_errors
def split(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV to (re-)split in place.", readable=False)],
    seed: SeedOpt = 42,
    stratify: StratifyOpt = False,
) -> None:
    """(Re-)assign the seeded 70:20:10 Train/Val/Test split of a manifest, in place (atomic write)."""
    from vocalprobe.runtime.core.manifest import read_manifest, write_manifest
    from vocalprobe.runtime.datasets.splits import assign_splits

    loaded = read_manifest(manifest)
    rows, report = assign_splits(loaded.rows, seed=seed, stratify=stratify)
    _report_splits(report)
    write_manifest(manifest, rows)
    typer.echo(f"split {len(rows)} clips of {manifest} (seed {seed}{', stratified' if stratify else ''})")


@app.command()
@friendly_errors
def describe(manifest: Annotated[Path, typer.Argument(help="Manifest CSV.", readable=False)]) -> None:
    """Print the paper's Table I for a manifest and its clips per class and split."""
    from vocalprobe.runtime.datasets.describe import render, summarize
    from vocalprobe.runtime.core.manifest import read_manifest

    summary = summarize(read_manifest(manifest))
    _print(render(summary, str(manifest)))
    if summary.unreadable:
        raise typer.Exit(1)


def _print(renderables: list) -> None:
    from rich.console import Console

    console = Console()
    for item in renderables:
        console.print(item)
