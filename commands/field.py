"""`vocalprobe stream`, `merge`, `rethreshold`, `validate`, `bench`, `score-events` and `review`: the torch-free
commands a recorder runs.

Commands parse options and call ``runtime.field``'s stream, validate, bench, events and review; the runtime and
onnxruntime are imported inside the command bodies, never when the CLI is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vocalprobe.commands.errors import fail, friendly_errors
from vocalprobe.commands.progress import AudioProgress
from vocalprobe.commands.options import (
    AddressOpt,
    AudioRootOpt,
    ConcurrencyOpt,
    DetectionsArg,
    EngineOpt,
    FormatOpt,
    IgnoreOpt,
    MergeOpt,
    MinConfDefaultOpt,
    MinConfOpt,
    NumCpusOpt,
    NumGpusOpt,
    ProgressOpt,
    ReportBackgroundOpt,
    ThreadsOpt,
    TopKOpt,
)

app = typer.Typer()

ModelOpt = Annotated[list[Path], typer.Option("--model", "-m", help="Exported .onnx graph; repeat it to fuse "
                                                                     "several models (probabilities averaged).")]
WindowOpt = Annotated[Optional[float], typer.Option(help="Analysis window in seconds (default: the model's "
                                                          "sample_duration).")]
BatchOpt = Annotated[int, typer.Option(help="Windows per model call (throughput; memory is window x batch).")]
ProviderOpt = Annotated[str, typer.Option(help="auto (CUDA when onnxruntime-gpu finds a GPU, else CPU), cpu or cuda.")]


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.command("validate")
@friendly_errors
def validate(
    model: Annotated[Path, typer.Argument(help="Exported .onnx graph.")],
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (path,label; a split column for train/val/test).")],
    split: Annotated[str, typer.Option(help="train, val or test; or all: every clip of the manifest, which then "
                                       "needs no split column (a labelled set of your own).")] = "test",
    tolerance: Annotated[float, typer.Option(help="Allowed |UAR difference| with the study (or the reference), "
                                             "in UAR points.")] = 0.5,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", help="Compare with this graph's UAR on the same clips instead of the study's (e.g. a "
        "quantized graph against its fp32 graph; works on any labelled manifest).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Report folder (default: MODEL.validate-SPLIT next to the model).")] = None,
    provider: ProviderOpt = "auto",
    threads: ThreadsOpt = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CI.")] = 1000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with its own session(s) and --threads "
                                         "(default: cores / workers); the report is that of one process.")] = 1,
    min_conf: MinConfOpt = None,
    min_conf_default: MinConfDefaultOpt = 0.5,
    report_background: ReportBackgroundOpt = False,
) -> None:
    """Score an exported graph with onnxruntime only and compare with the study's UAR (exit 1 when off); also each
    class's precision and recall at stream's thresholds (the graph's class_thresholds unless --min-conf)."""
    from contextlib import ExitStack

    from rich.progress import Progress

    from vocalprobe.runtime.core.manifest import read_manifest
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.runtime.field.validate import clips_to_score, write_report
    from vocalprobe.runtime.field.stream import read_thresholds
    from vocalprobe.runtime.field.validate import validate as run_validate

    default_conf, thresholds = read_thresholds(min_conf, min_conf_default) if min_conf is not None else (None, ())
    net = OnnxModel(model, provider=provider, threads=threads)
    _say(f"model: {net.describe()}")
    reference_net = None
    if reference is not None:
        reference_net = OnnxModel(reference, provider=provider, threads=threads)
        _say(f"reference: {reference_net.describe()}")
    n_clips = len(clips_to_score(read_manifest(manifest), split))
    with ExitStack() as pools, Progress(transient=True) as progress:
        pool = reference_pool = None
        if workers > 1:
            from vocalprobe.runtime.engine.pool import WorkerPool
            from vocalprobe.runtime.engine.scale import ModelSpec, default_threads

            each = threads if threads is not None else default_threads(workers)
            pool = pools.enter_context(WorkerPool(ModelSpec((str(model),), None, provider, each), workers))
            if reference is not None:
                reference_pool = pools.enter_context(WorkerPool(ModelSpec((str(reference),), None, provider, each),
                                                                workers))
            _say(f"{workers} workers x {each} thread(s), providers in use: {', '.join(pool.providers)}")
        task = progress.add_task(f"validate {split}", total=n_clips)
        report = run_validate(net, manifest, split=split, tolerance_points=tolerance, n_resamples=resamples,
                              on_clip=lambda: progress.advance(task), reference_model=reference_net, pool=pool,
                              reference_pool=reference_pool, min_conf=default_conf, thresholds=thresholds,
                              report_background=report_background)
    out = out if out is not None else model.with_name(f"{model.stem}.validate-{split}")
    json_path, png_path, note = write_report(report, out)
    if report.uar is not None:
        lo, hi = report.uar_ci95
        typer.echo(f"ONNX UAR on {split}: {report.uar * 100:.2f} (95% CI {lo * 100:.2f}-{hi * 100:.2f}) "
                   f"over {report.n_scored} of {report.n_clips} clips")
    if report.reference_uar is not None and report.reference_model is not None:
        typer.echo(f"reference UAR ({report.reference_key}): {report.reference_uar * 100:.2f}; decisions changed: "
                   f"{report.decisions_changed} of {report.n_scored} clips")
    elif report.reference_uar is not None:
        typer.echo(f"study UAR ({report.reference_key}): {report.reference_uar * 100:.2f}")
    if report.difference_points is not None:
        typer.echo(f"difference: {report.difference_points:+.2f} points (tolerance {tolerance:g})")
    if report.detection:
        typer.echo(f"detections at thresholds: {report.thresholds_source}"
                   + (f"; not reported: {', '.join(report.ignored)}" if report.ignored else ""))
        for label, d in report.detection.items():
            precision = "n/a" if d["precision"] is None else f"{d['precision']:.3f}"
            recall = "n/a" if d["recall"] is None else f"{d['recall']:.3f}"
            typer.echo(f"  {label} >= {d['threshold']:g}: precision {precision}, recall {recall} "
                       f"({d['true_positives']} hit(s), {d['false_positives']} false, {d['false_negatives']} missed)")
    for item in report.unreadable:
        typer.secho(f"unreadable: {item['path']}: {item['problem']}", fg=typer.colors.YELLOW, err=True)
    for line in report.notes + ([note] if note else []):
        typer.secho(f"note: {line}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"report: {json_path}" + (f", confusion matrix: {png_path}" if png_path else ""))
    if report.passed is False:
        raise fail(f"the ONNX UAR differs from the {'reference' if reference else 'study'}'s by "
                   f"{report.difference_points:+.2f} points (more than --tolerance {tolerance:g})")
    if report.uar is None:
        raise fail("no clip could be read")


@app.command("stream")
@friendly_errors
def stream(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Audio files, folders (recursive; wav/flac/ogg in any case), or - for raw PCM on stdin.")] = None,
    model: ModelOpt = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (re-running into it resumes).")] = ...,
    format: FormatOpt = "raven,csv,jsonl",
    window: WindowOpt = None,
    hop: Annotated[Optional[float], typer.Option(help="Hop between windows in seconds (default: the window).")] = None,
    final_window: Annotated[str, typer.Option(
        help="Last incomplete window: pad (zero-pad to the window), drop, or shorter.")] = "pad",
    batch: BatchOpt = 8,
    threads: ThreadsOpt = None,
    provider: ProviderOpt = "auto",
    min_conf: MinConfOpt = None,
    min_conf_default: MinConfDefaultOpt = 0.5,
    top_k: TopKOpt = None,
    merge: MergeOpt = False,
    ignore: IgnoreOpt = None,
    report_background: ReportBackgroundOpt = False,
    weights: Annotated[Optional[str], typer.Option(help="Fusion weights, e.g. 2,1,1 (one per --model).")] = None,
    sample_rate: Annotated[Optional[int], typer.Option(help="stdin only: sample rate of the raw PCM.")] = None,
    channels: Annotated[int, typer.Option(help="stdin only: interleaved channels (averaged to mono).")] = 1,
    dtype: Annotated[str, typer.Option(help="stdin only: s16, s32 or f32 (little-endian).")] = "s16",
    watch: Annotated[Optional[Path], typer.Option(help="Follow a folder a recorder writes into.")] = None,
    settle: Annotated[float, typer.Option(help="--watch: seconds a file must stop growing before it is read.")] = 5.0,
    poll: Annotated[float, typer.Option(help="--watch: seconds between folder scans.")] = 1.0,
    idle_exit: Annotated[Optional[float], typer.Option(
        help="--watch: stop after this many seconds without a new file (default: run until interrupted).")] = None,
    rewrite_outputs: Annotated[bool, typer.Option(
        help="Re-analyse files an earlier run into --out finished with other output options (--format, --min-conf, "
             "--top-k, --merge, --ignore), so every file's outputs follow this run's.")] = False,
    block_size: Annotated[int, typer.Option(hidden=True, help="Samples read per block (results do not depend on it).")]
    = 65_536,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes, each with its own model and --threads "
                                         "(default: cores / workers); outputs are those of one process.")] = 1,
    shard: Annotated[Optional[str], typer.Option(help="Analyse only shard i/n of the files (0-based; stable hash of "
                                                 "each file's relative path), e.g. for a SLURM array.")] = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    num_cpus: NumCpusOpt = None,
    num_gpus: NumGpusOpt = None,
    concurrency: ConcurrencyOpt = None,
    embeddings: Annotated[bool, typer.Option(help="Also write each window's embedding into the --db archive, as "
                                             "`vocalprobe embed` would (the backbone runs once).")] = False,
    db: Annotated[Optional[Path], typer.Option("--db", help="--embeddings: the archive folder.")] = None,
    scores: Annotated[bool, typer.Option(
        help="Also write every window's score of every class (NAME.scores.parquet, or .csv without pyarrow; "
             "OpenSoundscape's score table), so `vocalprobe rethreshold` can make the tables again with other "
             "thresholds without the model.")] = False,
    progress: ProgressOpt = True,
) -> None:
    """Detect calls in field recordings with exported models, in constant memory, resumable."""
    from functools import partial

    from vocalprobe.runtime.core.detections.tables import parse_formats
    from vocalprobe.runtime.engine.scale import Scale
    from vocalprobe.runtime.field.run import StreamJob, run_stream
    from vocalprobe.runtime.field.stream import read_thresholds

    default_conf, thresholds = read_thresholds(min_conf, min_conf_default) if min_conf is not None else (None, ())
    scale = Scale(engine, workers, shard, address, num_cpus, num_gpus, concurrency)
    job = StreamJob(tuple(model), out, tuple(inputs or ()), parse_formats(format), window, hop, final_window, batch,
                    threads, provider, weights, default_conf, thresholds, top_k, merge, frozenset(ignore or []),
                    rewrite_outputs, block_size, scale, sample_rate, channels, dtype, watch, settle, poll, idle_exit,
                    report_background, scores)
    sink = None
    if embeddings or db is not None:  # the archive is imported only when asked for
        from vocalprobe.runtime.archive.embed import stream_archive

        sink = partial(stream_archive, db, embeddings=embeddings, scale=scale)
    bar = {"progress": AudioProgress.named("stream")} if progress else {}
    outcome = run_stream(job, say=_say, embeddings=sink, **bar)
    summary = outcome.summary
    speed = summary.audio_seconds / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
    _say(f"done: {len(summary.done)} file(s), {summary.detections} detection(s), "
         f"{summary.audio_seconds / 3600:.3f} h of audio at {speed:.1f}x real time -> {out}")
    if outcome.embeddings is not None:
        for name, why in outcome.embeddings.summary.skipped:
            _say(f"embeddings: skipped {name}: {why}")
        _say(f"embeddings: {len(outcome.embeddings.summary.done)} recording(s), {outcome.embeddings.summary.windows} "
             f"window(s) -> {db}")
    problems = []
    if summary.failed_all:
        earlier = len(summary.failed_all) - len(summary.failed)
        what = "NaN/inf block(s) in the stream" if job.stdin else "file(s) could not be read"
        problems.append(f"{len(summary.failed_all)} {what}"
                        + (f" ({earlier} in an earlier run; they are retried once they change)" if earlier else ""))
    if summary.partial_all:
        problems.append(f"{len(summary.partial_all)} truncated file(s) analysed for the part each holds (re-copied "
                        "whole, they are analysed again)")
    if problems:
        problems_text = "; ".join(problems) + f", listed in {out / 'errors.csv'}"
        if summary.exit_code == 1:
            raise fail(f"nothing could be processed: {problems_text}")
        _say(problems_text)
        raise typer.Exit(summary.exit_code)


@app.command("merge")
@friendly_errors
def merge(
    folders: Annotated[list[Path], typer.Argument(
        help="OUT (a new output folder) then the --out folders of the `stream --shard i/n` runs; with --db, the "
             "--db folders of the `embed --shard i/n` runs.", metavar="FOLDER")],
    db: Annotated[Optional[Path], typer.Option(
        "--db", help="Merge archives instead: this new archive folder gets what one `embed` over all the inputs "
                     "writes.")] = None,
) -> None:
    """Join the output folders of `stream --shard i/n` runs into the outputs of one run (tables, JSONL, journal),
    or, with --db, the archives of `embed --shard i/n` runs into the archive of one run."""
    if db is not None:
        from vocalprobe.runtime.archive.merge import merge_archives

        merged = merge_archives(db, folders)
        for name, why in merged.skipped:
            typer.echo(f"skipped {name}: {why}", err=True)
        typer.echo(f"merged {merged.shards} archive(s): {merged.recordings} recording(s), {merged.windows} "
                   f"window(s) -> {db}")
        return
    from vocalprobe.runtime.field.merge import merge_outputs

    out, shards = folders[0], folders[1:]
    if shards and all((f / "hoplite.sqlite").is_file() for f in shards):
        raise fail("these are archive folders: vocalprobe merge --db OUT_DB SHARD_DB...")
    summary = merge_outputs(out, shards)
    typer.echo(f"merged {summary.shards} shard(s): {summary.done} file(s) done, {summary.failed} failed, "
               f"{summary.detections} detection(s) -> {out}")


@app.command("rethreshold")
@friendly_errors
def rethreshold(
    run_dir: Annotated[Path, typer.Argument(help="The --out folder of a `stream --scores` run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New output folder for the re-made tables.")],
    min_conf: MinConfOpt = None,
    min_conf_default: MinConfDefaultOpt = 0.5,
    top_k: TopKOpt = None,
    merge: MergeOpt = None,
    ignore: IgnoreOpt = None,
    report_background: ReportBackgroundOpt = None,
    format: FormatOpt = None,
) -> None:
    """Make a stream run's detection tables again from its stored scores (`stream --scores`) with other thresholds,
    --top-k, --merge or --ignore, in seconds and without the model; each option left out keeps the run's."""
    from vocalprobe.runtime.core.detections.tables import parse_formats
    from vocalprobe.runtime.field.rethreshold import Rethreshold
    from vocalprobe.runtime.field.rethreshold import rethreshold as run_rethreshold
    from vocalprobe.runtime.field.stream import read_thresholds

    default_conf, thresholds = read_thresholds(min_conf, min_conf_default) if min_conf is not None else (None, ())
    change = Rethreshold(default_conf, thresholds, top_k, merge, frozenset(ignore) if ignore else None,
                         report_background, parse_formats(format) if format is not None else None)
    summary = run_rethreshold(run_dir, out, change)
    typer.echo(f"rethreshold: {summary.done} file(s), {summary.windows} window(s), {summary.detections} "
               f"detection(s) -> {out}")
    if summary.failed:
        _say(f"{summary.failed} file(s) the run could not read, listed in {out / 'errors.csv'}")


@app.command("bench")
@friendly_errors
def bench(
    model: Annotated[list[Path], typer.Argument(help="Exported .onnx graph(s); several are also timed as a fusion.")],
    window: WindowOpt = None,
    batch: BatchOpt = 8,
    threads: ThreadsOpt = None,
    provider: ProviderOpt = "auto",
    seconds: Annotated[float, typer.Option(help="Seconds of synthetic audio per measurement.")] = 60.0,
    pipeline: Annotated[bool, typer.Option(help="Also time the whole streaming pipeline and its overhead.")] = True,
) -> None:
    """Speed (x real time), per-window latency and peak memory of models on this machine, with synthetic audio."""
    from vocalprobe.runtime.field.bench import bench_model, bench_stream
    from vocalprobe.runtime.engine.ensemble import Ensemble
    from vocalprobe.runtime.engine.onnx_model import OnnxModel

    nets = [OnnxModel(p, provider=provider, threads=threads) for p in model]
    fusable = len(nets) > 1 and len({frozenset(n.classes) for n in nets}) == 1 and len({
        n.sample_rate for n in nets}) == 1
    candidates = list(nets) + ([Ensemble(nets)] if fusable else [])
    typer.echo(f"providers in use: {', '.join(sorted({p for n in nets for p in n.providers}))}; "
               f"threads: {threads or 'onnxruntime default'}; batch {batch}")
    if len(nets) > 1 and not fusable:
        _say("note: the graphs have different classes or sample rates, so each is timed alone and not as a fusion")
    for net in candidates:
        window_s = window if window is not None else net.sample_duration
        result = bench_model(net, window_s=window_s, batch=batch, seconds=seconds)
        memory = f"{result.peak_rss_mb:.0f} MB" if result.peak_rss_mb is not None else "n/a"
        typer.echo(f"{net.name}: {result.x_realtime:.1f}x real time ({result.x_realtime:.1f} audio-s/s), "
                   f"window {window_s:g} s latency {result.latency_ms_median:.1f} ms "
                   f"(p95 {result.latency_ms_p95:.1f}), peak RSS {memory}")
        if pipeline:
            s = bench_stream(net, window_s=window_s, batch=batch, seconds=seconds)
            typer.echo(f"  streaming a 48 kHz file: {s.x_realtime:.1f}x real time, the model inside it "
                       f"{s.model_x_realtime:.1f}x; overhead {s.overhead * 100:.1f}% of that model time")


@app.command("score-events")
@friendly_errors
def score_events(
    detections: Annotated[Path, typer.Argument(help="A stream output folder (its detections.csv), or the table.")],
    truth: Annotated[Path, typer.Argument(help="Ground truth: a CSV (file,start_s,end_s,label), a Raven selection "
                                          "table or a BirdNET CSV.")],
    collar: Annotated[float, typer.Option(help="DCASE event-based F1: onsets (and offsets) match within this many "
                                          "seconds.")] = 0.2,
    offset_fraction: Annotated[float, typer.Option(
        help="DCASE event-based F1: offsets also match within this fraction of the true event's length.")] = 0.5,
    offsets: Annotated[bool, typer.Option(help="DCASE event-based F1: check offsets too (--no-offsets: onsets "
                                          "only).")] = True,
) -> None:
    """Precision/recall of detected events against a ground-truth table (same label, overlapping in time), and
    the DCASE event-based F1 with onset/offset collars."""
    from vocalprobe.runtime.field.events import (
        align_files,
        chance_score,
        detected_events,
        read_events,
        score_events_collar,
    )
    from vocalprobe.runtime.field.events import score_events as score

    reference = read_events(truth)
    detected = align_files(detected_events(detections), reference)
    files = {e.file for e in reference}
    outside = [d for d in detected if d.file not in files]
    if outside:
        typer.secho(f"note: {len(outside)} detection(s) in files the ground truth does not cover are not scored",
                    fg=typer.colors.YELLOW, err=True)
    detected = [d for d in detected if d.file in files]
    result = score(detected, reference)
    chance_p, chance_r = chance_score(detected, reference)
    typer.echo(f"events: {result.n_detected} detected, {result.n_truth} in the ground truth")
    typer.echo(f"precision {result.precision:.3f} ({result.n_correct}/{result.n_detected}), recall "
               f"{result.recall:.3f} ({result.n_found}/{result.n_truth}), F1 {result.f1:.3f}")
    typer.echo(f"chance (labels shuffled): precision {chance_p:.3f}, recall {chance_r:.3f}")
    for label, (p, r, nd, nt) in result.per_class.items():
        typer.echo(f"  {label}: precision {p:.3f} of {nd}, recall {r:.3f} of {nt}")
    dcase = score_events_collar(detected, reference, collar_s=collar, offset_fraction=offset_fraction if offsets
                                else None)
    rule = f"onset within {collar:g} s" + (f", offset within max({collar:g} s, {offset_fraction:g} x length)"
                                            if offsets else "")
    typer.echo(f"DCASE event-based ({rule}): F1 {dcase.f1:.3f} (precision {dcase.precision:.3f}, recall "
               f"{dcase.recall:.3f}, {dcase.n_matched} matched), class-wise mean F1 {dcase.f1_macro:.3f}")
    for label, (p, r, f1, matched, nd, nt) in dcase.per_class.items():
        typer.echo(f"  {label}: F1 {f1:.3f}, precision {p:.3f}, recall {r:.3f} ({matched} of {nd} detected, "
                   f"{nt} true)")


@app.command("review")
@friendly_errors
def review(
    detections: DetectionsArg,
    audio: AudioRootOpt = Path("."),
    top: Annotated[int, typer.Option(help="Detections per class, best scores first.")] = 50,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file to write (default: "
                                                "DETECTIONS/review.html).")] = None,
) -> None:
    """One HTML page (no server) with a spectrogram, an audio player and the score of each top detection."""
    from vocalprobe.runtime.core.detections.layout import REVIEW_NAME
    from vocalprobe.runtime.field.review import write_review

    out = out if out is not None else (detections if detections.is_dir() else detections.parent) / REVIEW_NAME
    sheet = write_review(detections, out, audio_root=audio, top=top)
    if sheet.unreadable:
        file, reason = sheet.unreadable[0]
        _say(f"note: {len(sheet.unreadable)} clip(s) could not be read and are shown without sound "
             f"(first: {file}: {reason}); is --audio the folder stream was given?")
    shown = ", ".join(f"{label} {n}" for label, n in sheet.shown.items()) or "no detections"
    typer.echo(f"review: {sheet.path} ({shown})")
