"""`vocalprobe embed`, `search`, `label import` and `probe fit|apply`: the embedding archive's commands.

``probe fit`` trains with torch (``training.archive_probe``), imported inside its body like every command's work.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import fail, friendly_errors
from vocalprobe.commands.options import (
    AddressOpt,
    ConcurrencyOpt,
    EngineOpt,
    NumCpusOpt,
    NumGpusOpt,
    ProgressOpt,
    ThreadsOpt,
)

DbOpt = Annotated[Path, typer.Option("--db", help="Archive database folder (perch-hoplite format).")]

app = typer.Typer()
label_app = typer.Typer(help="Reviewed labels into an archive.", no_args_is_help=True)
probe_app = typer.Typer(help="Probes trained on an archive's stored vectors.", no_args_is_help=True)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _embed_progress(files):
    """The bar of `embed`: the audio of every input (unreadable ones count nothing: they are reported at the end)."""
    from vocalprobe.commands.progress import AudioProgress
    from vocalprobe.runtime.core.errors import AudioError

    total = 0.0
    for source in files:
        try:
            total += source.duration()
        except AudioError:
            continue
    return AudioProgress(total, None, "embed")


@app.command("embed")
@friendly_errors
def embed(
    inputs: Annotated[list[str], typer.Argument(help="Audio files or folders (recursive; wav/flac/ogg).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Exported .onnx graph (its embedding output).")],
    db: DbOpt,
    window: Annotated[Optional[float], typer.Option(help="Window in seconds (default: the model's).")] = None,
    hop: Annotated[Optional[float], typer.Option(help="Hop in seconds (default: the window).")] = None,
    final_window: Annotated[str, typer.Option(help="Last incomplete window: pad, drop or shorter.")] = "pad",
    batch: Annotated[int, typer.Option(help="Windows per model call.")] = 8,
    threads: ThreadsOpt = None,
    deployment: Annotated[Optional[str], typer.Option(
        help="Deployment name of every input (default: the first folder below the input folder).")] = None,
    block_size: Annotated[int, typer.Option(hidden=True)] = 65_536,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with its own session and --threads "
                                         "(default: cores / workers); the archive is that of one process.")] = 1,
    shard: Annotated[Optional[str], typer.Option(
        help="Embed shard i/n of the inputs (0-based; by sha256 of the relative path) into its own --db; "
             "`vocalprobe merge --db OUT_DB SHARD_DB...` joins them into the archive of one run.")] = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    num_cpus: NumCpusOpt = None,
    num_gpus: NumGpusOpt = None,
    concurrency: ConcurrencyOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Embed field recordings once into an archive (resumable; a finished recording is never embedded twice)."""
    from vocalprobe.runtime.archive.embed import embed_sources
    from vocalprobe.runtime.archive.store import ArchiveDB
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.engine.scale import ModelSpec, Scale
    from vocalprobe.runtime.engine.sources import collect_files
    from vocalprobe.runtime.engine.windows import WindowPlan

    if "-" in inputs:
        raise fail("embed reads files and folders, not stdin")
    scale = Scale(engine, workers, shard, address, num_cpus, num_gpus, concurrency)
    net = OnnxModel(model, provider="cpu", threads=threads)
    plan = WindowPlan.from_seconds(window if window is not None else net.sample_duration, hop, net.sample_rate,
                                   final_window)
    files = collect_files(inputs, block_size)
    positions = None
    if scale.part is not None:
        positions = {s.name: i for i, s in enumerate(files)}  # before the split: the order one run embeds in
        total = len(files)
        files = scale.select(files, key=lambda s: s.name)
        _say(f"shard {scale.part}: {len(files)} of {total} files")
    spec = ModelSpec((str(model),), None, "auto" if num_gpus else "cpu", scale.threads(threads))
    _say(f"model: {net.describe()}")
    with ArchiveDB.open_writer(db) as archive, (_embed_progress(files) if progress else nullcontext()) as bar:
        run = None
        if positions is not None:
            from vocalprobe.runtime.core.shards import run_identity

            run = run_identity(sorted(positions, key=positions.get))
        archive.mark_shard(None if scale.part is None else str(scale.part), run)
        summary = embed_sources(files, net, plan, archive, batch=batch, deployment=deployment, positions=positions,
                                scale=scale, spec=spec, on_audio=bar.audio if bar is not None else None)
        archive.mark_shard_finished()  # every input of the shard tried: merge --db takes it
    for name, why in summary.skipped:
        _say(f"skipped {name}: {why}")
    for name, why in summary.failed:
        _say(f"could not embed {name}: {why}")
    speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
    _say(f"done: {len(summary.done)} recording(s), {summary.windows} window(s), "
         f"{summary.audio_seconds / 3600:.3f} h of audio at {speed:.1f}x real time -> {db}")
    if summary.failed:
        raise typer.Exit(2)


@app.command("search")
@friendly_errors
def search(
    query: Annotated[Path, typer.Argument(help="Audio file holding the example call.")],
    db: DbOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Raven table of the hits (a .csv is written beside).")],
    start: Annotated[Optional[float], typer.Option(help="Seconds into QUERY where the call starts.")] = None,
    end: Annotated[Optional[float], typer.Option(help="Seconds into QUERY where the call ends.")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 100,
    exact: Annotated[bool, typer.Option(help="Score every stored window (no index).")] = False,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="The archive's graph, if it moved.")] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Find the archived windows most like an example call; writes a Raven table to review."""
    from vocalprobe.runtime.archive.search import archive_model, archive_plan, embed_query, write_hits
    from vocalprobe.runtime.archive.search import search as run_search
    from vocalprobe.runtime.archive.store import ArchiveDB

    with ArchiveDB.open_reader(db) as archive:
        net = archive_model(archive, model, threads=threads)
        embedded = embed_query(query, net, archive_plan(archive), start=start, end=end)
        typer.echo(embedded.describe(query.name))
        started = time.perf_counter()
        hits = run_search(archive, embedded.vector, k, exact=exact)
        took = time.perf_counter() - started
    raven, csv_path = write_hits(hits, out, net.sample_rate / 2)
    typer.echo(f"{len(hits)} hit(s) in {took * 1000:.1f} ms ({'exact' if exact else 'approximate + re-ranked'}), "
               f"best score {hits[0].score:.4f}" if hits else "no windows in the archive")
    typer.echo(f"wrote {raven} and {csv_path}")


@label_app.command("import")
@friendly_errors
def label_import(
    tables: Annotated[list[Path], typer.Argument(help="Raven selection tables (reviewed).")],
    db: DbOpt,
    label_column: Annotated[Optional[str], typer.Option(
        help="Column holding the label (default: the first of Label, Annotation, Class).")] = None,
    one_class: Annotated[Optional[str], typer.Option(
        "--class", help="Values are positive/negative for this one class.")] = None,
    recording: Annotated[Optional[str], typer.Option(
        help="The archived recording of tables that name none (no Begin Path/Begin File, not NAME.Table...).")] = None,
) -> None:
    """Turn reviewed Raven tables (or .csv tables) into annotations of the windows they overlap; exits 2 when no
    row labelled a window."""
    from vocalprobe.runtime.archive.labels import import_tables
    from vocalprobe.runtime.archive.store import ArchiveDB

    with ArchiveDB.open_writer(db, repair=False) as archive:
        report = import_tables(archive, tables, label_column=label_column, one_class=one_class,
                               recording=recording)
    for table, line, why in report.unmatched:
        _say(f"unmatched: {table}:{line}: {why}")
    typer.echo(f"{report.rows} row(s) read, {report.annotations} annotation(s) added, "
               f"{len(report.unmatched)} row(s) unmatched")
    if report.matched == 0:
        _say("nothing was imported: no row labelled a window of the archive")
        raise typer.Exit(2)


@probe_app.command("apply")
@friendly_errors
def probe_apply(
    db: DbOpt,
    head: Annotated[Path, typer.Option("--head", help="Head folder written by `vocalprobe probe fit`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the detection tables.")],
) -> None:
    """Score every archived window with a probe head (no backbone pass) and write Raven/CSV tables."""
    from vocalprobe.runtime.archive.apply import apply_head
    from vocalprobe.runtime.archive.head import load_head
    from vocalprobe.runtime.archive.store import ArchiveDB

    loaded = load_head(head)
    started = time.perf_counter()
    with ArchiveDB.open_reader(db) as archive:
        summary = apply_head(loaded, archive, out)
    took = max(time.perf_counter() - started, 1e-9)
    typer.echo(f"{summary.windows} window(s) of {summary.recordings} recording(s) scored at "
               f"{summary.windows / took:,.0f} windows/s: {summary.detections} detection(s) -> {out}")


@probe_app.command("fit")
@friendly_errors
def probe_fit(
    db: DbOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Head folder to write.")],
    linear: Annotated[bool, typer.Option(help="A linear probe instead of the paper's MLP.")] = False,
    precision: Annotated[float, typer.Option(help="Target precision of each class's threshold.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Split, weights and batch order.")] = 0,
) -> None:
    """Train a probe on the archive's annotated windows (stored vectors only; no audio is read)."""
    from vocalprobe.training.archive_probe import fit_head

    report = fit_head(db, out, linear=linear, precision=precision, seed=seed)
    lo, hi = report.test_uar_ci95
    typer.echo(f"classes: {', '.join(f'{c} ({n})' for c, n in report.counts.items())}; split "
               f"{report.n_train}/{report.n_val}/{report.n_test} (train/val/test)")
    typer.echo(f"held-out UAR {report.test_uar * 100:.1f} (95% CI {lo * 100:.1f}-{hi * 100:.1f})")
    for c, t in report.thresholds.items():
        note = "" if report.precision_reached[c] else f" (precision {precision:g} not reached)"
        if c in report.too_few_held_out:
            note = f" (precision not shown: set on {report.held_out[c]} held-out window(s))"
        typer.echo(f"  threshold {c}: {t:.4f}{note}")
    if report.too_few_held_out:
        from vocalprobe.training.archive_probe import MIN_HELD_OUT_PER_CLASS, RECOMMENDED_PER_CLASS

        typer.secho(f"WARNING: too few labels to trust this head: {', '.join(report.too_few_held_out)} "
                    f"{'has' if len(report.too_few_held_out) == 1 else 'have'} fewer than {MIN_HELD_OUT_PER_CLASS} "
                    f"held-out windows, so the held-out UAR and their thresholds' precision are not evidence; label "
                    f"at least {RECOMMENDED_PER_CLASS} windows per class and fit again", fg=typer.colors.YELLOW)
    if report.left_out:
        _say(f"note: {report.left_out} window(s) with two different positive labels were left out")
    typer.echo(f"wrote {report.out_dir}")


app.add_typer(label_app, name="label")
app.add_typer(probe_app, name="probe")
