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
                                           help="--group-by none: split every class on its own (keeps class "
                                                "proportions per split). Group splits are always balanced per class.")]


class GroupBy(str, Enum):
    group = "group"
    none = "none"


GroupByOpt = Annotated[Optional[GroupBy], typer.Option(
    "--group-by", help="Unit of the split. group: every group (the manifest's group column: individual, recording) "
    "stays in one split, so Test never shares an individual with Train (the default when the manifest has groups). "
    "none: per clip, the paper's protocol (the default without groups).", show_default=False)]


def _report_splits(report) -> None:
    for warning in report.warnings():
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    if report.group_by == "group":
        typer.echo("split by group: " + ", ".join(f"{n} group{'s' if n != 1 else ''} in {s}"
                                                  for s, n in report.groups.items()))


def _split_rows(rows, seed: int, stratify: bool, group_by):
    from vocalprobe.runtime.datasets.splits import assign_splits

    rows, report = assign_splits(rows, seed=seed, stratify=stratify, group_by=group_by.value if group_by else None)
    _report_splits(report)
    return rows, report


@app.command()
@friendly_errors
def prepare(
    kind: Annotated[Kind, typer.Argument(help="Dataset layout: folders (one sub-folder per class), watkins, imv, "
                                              "abzaliev, or synthetic (the embedded default, generated).")],
    source: Annotated[Optional[Path], typer.Argument(help="Folder of the downloaded dataset (not used by synthetic).",
                                                     readable=False)] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Folder to write manifest.csv into (default: artifacts/data/synthetic for synthetic, "
        "artifacts/data/SOURCE_FOLDER_NAME for folders, artifacts/data/KIND for the others).",
        show_default=False)] = None,
    seed: SeedOpt = 42,
    stratify: StratifyOpt = False,
    group_by: GroupByOpt = None,
    exclude: Annotated[Optional[list[str]], typer.Option(help="Drop a class (repeatable), e.g. Abzaliev's non-dog "
                                                              "sounds.")] = None,
    clips_per_class: Annotated[int, typer.Option(help="synthetic: clips per call type.")] = 60,
    field_minutes: Annotated[float, typer.Option(help="synthetic: length of the field recording (0: none).")] = 10.0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave unusable files (empty, text, truncated, NaN, "
                                                              "undecodable, refused links) out of the manifest, "
                                                              "report them and go on, instead of stopping.")] = False,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Also use symlinks (and listed paths) that lead "
                                                                      "outside the source folder.")] = False,
    group_folders: Annotated[bool, typer.Option(
        "--group-folders", help="folders: the folder under each class folder is the clips' group "
        "(CLASS/INDIVIDUAL/clip.wav: an individual, recording or site), so the split keeps each in one split.")
    ] = False,
    background: Annotated[Optional[Path], typer.Option(
        "--background", help="Folder of field recordings with no target call in them (long wavs); cut into windows "
        "of the clips' median length and added as a 'background' class, grouped by recording. A detector needs "
        "this negative class: without one, every window above the threshold is reported as a call.",
        readable=False)] = None,
    background_seconds: Annotated[Optional[float], typer.Option(
        "--background-seconds", help="Length of a background window (default: the median clip length).")] = None,
    background_max: Annotated[Optional[int], typer.Option(
        "--background-max", min=0, help="At most this many background windows, evenly spread over the recordings "
        "(default: as many as the largest class; 0: every window).")] = None,
) -> None:
    """Write OUT/manifest.csv for a dataset, with a seeded Train/Val/Test split, and print its Table I summary.

    Every audio file is decoded once; if any is unusable, each is listed (and written to OUT/errors.csv) and no
    manifest is written, unless --skip-bad.
    """
    from vocalprobe.runtime.datasets import preparers, synthetic
    from vocalprobe.runtime.datasets.describe import render, summarize
    from vocalprobe.runtime.core.errors import DatasetError
    from vocalprobe.runtime.core.manifest import read_manifest, write_manifest
    from vocalprobe.runtime.datasets.provenance import write_provenance
    from vocalprobe.runtime.datasets.scan import describe_skipped

    out = out if out is not None else default_out(kind, source)
    manifest_path = out / "manifest.csv"
    if kind is Kind.synthetic and background is not None:
        raise DatasetError("the synthetic dataset has its own background class; --background is for real datasets")
    if group_folders and kind is not Kind.folders:
        raise DatasetError(f"--group-folders is for `data prepare folders`; {kind.value} has its own layout")
    if kind is Kind.synthetic:
        typer.echo(f"generating the synthetic dataset in {out} (seed {seed}) ...")
        synthetic.generate_dataset(out, seed=seed, clips_per_class=clips_per_class, field_minutes=field_minutes,
                                   stratify=True)
    else:
        if source is None:
            raise DatasetError(f"`data prepare {kind.value}` needs the dataset folder: "
                               f"vocalprobe data prepare {kind.value} SOURCE_DIR --out DIR")
        out.mkdir(parents=True, exist_ok=True)
        extra = {"group_folders": group_folders} if kind is Kind.folders else {}
        prepared = preparers.PREPARERS[kind.value](source, out, follow_links=follow_links, **extra)
        for note in prepared.notes:
            typer.echo(f"note: {note}", err=True)
        if background is not None:
            from vocalprobe.runtime.datasets.background import add_background

            prepared, note = add_background(prepared, background, out, seconds=background_seconds,
                                            max_windows=background_max, follow_links=follow_links)
            typer.echo(note, err=True)
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
        rows, _ = _split_rows(rows, seed, stratify, group_by)
        write_manifest(manifest_path, rows)
        write_provenance(out, kind.value, source)
    typer.echo(f"wrote {manifest_path}")
    _print(render(summarize(read_manifest(manifest_path)), kind.value))


@app.command()
@friendly_errors
def split(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV to (re-)split in place.", readable=False)],
    seed: SeedOpt = 42,
    stratify: StratifyOpt = False,
    group_by: GroupByOpt = None,
) -> None:
    """(Re-)assign the seeded 70:20:10 Train/Val/Test split of a manifest, in place (atomic write)."""
    from vocalprobe.runtime.core.manifest import read_manifest, write_manifest

    loaded = read_manifest(manifest)
    _note_unused(loaded, manifest)
    rows, report = _split_rows(loaded.rows, seed, stratify, group_by)
    write_manifest(manifest, loaded.with_rows(rows))
    how = "by group" if report.group_by == "group" else "per clip" + (", stratified" if stratify else "")
    typer.echo(f"split {len(rows)} clips of {manifest} (seed {seed}, {how})")


@app.command()
@friendly_errors
def describe(manifest: Annotated[Path, typer.Argument(help="Manifest CSV.", readable=False)]) -> None:
    """Print the paper's Table I for a manifest and its clips per class and split."""
    from vocalprobe.runtime.datasets.describe import render, summarize
    from vocalprobe.runtime.core.manifest import read_manifest

    loaded = read_manifest(manifest)
    _note_unused(loaded, manifest)
    summary = summarize(loaded)
    _print(render(summary, str(manifest)))
    if summary.unreadable:
        raise typer.Exit(1)


def default_out(kind: Kind, source: Optional[Path]) -> Path:
    """Each kind its own folder: only `prepare synthetic` writes the demo's artifacts/data/synthetic."""
    root = Path("artifacts/data")
    if kind is Kind.folders and source is not None:
        name = Path(source).resolve().name
        if name and name != Kind.synthetic.value:
            return root / name
    return root / kind.value


def _note_unused(manifest, path: Path) -> None:
    if manifest.unused_columns:
        typer.echo(f"note: {path}: column(s) {', '.join(manifest.unused_columns)} kept but not used", err=True)


def _print(renderables: list) -> None:
    from rich.console import Console

    console = Console()
    for item in renderables:
        console.print(item)
