"""The options several commands share, declared once (typer aliases), so every command says the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

#: onnxruntime's intra-op threads: stream, validate, bench, embed and search.
ThreadsOpt = Annotated[Optional[int], typer.Option(help="onnxruntime intra-op threads (default: onnxruntime's).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]

# What review and segments read: a stream output folder's detections and the audio they came from.
DetectionsArg = Annotated[Path, typer.Argument(help="A stream output folder (its detections.csv), or the table.")]
AudioRootOpt = Annotated[Path, typer.Option(help="The folder stream was given: the table's file column is relative "
                                            "to it.")]

# The scale-out of stream and embed (and --address of study's Ray extraction).
# "\[" keeps rich's help renderer from reading [ray] as markup (it would print 'vocalprobe').
EngineOpt = Annotated[str, typer.Option(help="local, or ray (pip install 'vocalprobe\\[ray]').")]
AddressOpt = Annotated[Optional[str], typer.Option(help="--engine ray: a running cluster (default: start a local "
                                                   "Ray on this machine's cores).")]
NumCpusOpt = Annotated[Optional[float], typer.Option(help="--engine ray: CPUs per actor (default 1, 0 with GPUs).")]
NumGpusOpt = Annotated[Optional[float], typer.Option(help="--engine ray: GPUs per actor.")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(help="--engine ray: actors (default: the cluster's CPUs).")]

# How stream turns window scores into detections, and rethreshold again from stored scores (`stream --scores`).
FormatOpt = Annotated[str, typer.Option("--format", help="Comma-separated: raven, csv, jsonl, birdnet-csv, audacity, "
                                        "kaleidoscope, parquet (pip install 'vocalprobe\\[parquet]').")]
MinConfOpt = Annotated[Optional[str], typer.Option(
    help="Report classes with probability >= this, per window; or a class,threshold CSV of per-class thresholds "
         "(classes it does not list use --min-conf-default). Default: the graph's own class_thresholds (`export "
         "attach` writes them), else 0.5; rethreshold: the run's.")]
MinConfDefaultOpt = Annotated[float, typer.Option(
    help="With a --min-conf CSV: the threshold of the classes it does not list.")]
TopKOpt = Annotated[Optional[int], typer.Option(help="At most this many classes per window.")]
MergeOpt = Annotated[bool, typer.Option(help="Join consecutive windows of the same class into one event.")]
IgnoreOpt = Annotated[Optional[list[str]], typer.Option(
    help="Never report this class (repeatable); the model's background/negative class is never reported anyway "
         "(see --report-background).")]
ReportBackgroundOpt = Annotated[bool, typer.Option(
    help="Also report the model's background/negative class (a class named background, noise, negative, other or "
         "none), left out by default.")]
