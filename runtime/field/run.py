"""`vocalprobe stream` as one call: ``run_stream(StreamJob)`` (the shape of BirdNET-Analyzer's ``analyze/core.py``).

The job is every option of the command, parsed; this module holds what happens between them: load the model and
plan the windows, list the inputs (files, stdin or a watched folder) and take this shard's, open the output folder
and its journal, number the inputs (``merge`` lays shards out in that order), leave out what an earlier run
finished, add back the files the archive lacks (``--embeddings``), total the audio for the progress bar, and hand
the rest to ``stream.run_sources``. The CLI face (``commands/field.py``) and the demo both call it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vocalprobe.runtime.core.detections.layout import SCORE_SUFFIXES
from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.core.graph_contract import negative_classes
from vocalprobe.runtime.engine.scale import ONE_PROCESS, ModelSpec, Scale
from vocalprobe.runtime.engine.windows import DEFAULT_FINAL_WINDOW, WindowPlan
from vocalprobe.runtime.field.stream import EmbeddingSink, Progress, RunSummary

DEFAULT_FORMATS = ("raven", "csv", "jsonl")
#: The threshold of a class neither the options nor the graph's ``class_thresholds`` give one.
DEFAULT_MIN_CONF = 0.5


class StreamJobError(VocalprobeError):
    """Options of a stream job that cannot go together."""


@dataclass(frozen=True)
class StreamJob:
    """One `vocalprobe stream` run: its inputs (files and folders, ``("-",)`` for stdin, or ``watch``), models,
    output folder and options, as the command line gives them once parsed."""

    models: tuple[Path, ...]
    out: Path
    inputs: tuple[str, ...] = ()
    formats: tuple[str, ...] = DEFAULT_FORMATS
    window_s: float | None = None  # default: the model's sample_duration
    hop_s: float | None = None  # default: the window
    final_window: str = DEFAULT_FINAL_WINDOW
    batch: int = 8
    threads: int | None = None
    provider: str = "auto"
    weights: str | None = None
    min_conf: float | None = None  # the threshold of every class ``thresholds`` does not list (None: the graph's
    thresholds: tuple[tuple[str, float], ...] = ()  # ``class_thresholds`` when it has them, else DEFAULT_MIN_CONF)
    top_k: int | None = None
    merge: bool = False
    ignore: frozenset[str] = frozenset()
    rewrite_outputs: bool = False
    block_size: int = 65_536
    scale: Scale = ONE_PROCESS
    # stdin ("-") only
    sample_rate: int | None = None
    channels: int = 1
    dtype: str = "s16"
    # --watch only
    watch: Path | None = None
    settle_s: float = 5.0
    poll_s: float = 1.0
    idle_exit_s: float | None = None
    report_background: bool = False  # also report the model's background/negative classes (NEGATIVE_CLASSES)
    scores: bool = False  # also write every window's score of every class (for `vocalprobe rethreshold`)

    def __post_init__(self):
        if not self.inputs and self.watch is None:
            raise StreamJobError("give audio files or folders, - for stdin, or --watch DIR")
        if self.watch is not None and self.inputs:
            raise StreamJobError("--watch follows one folder; give no other inputs with it")
        if "-" in self.inputs and len(self.inputs) > 1:
            raise StreamJobError("- (stdin) cannot be mixed with files or folders")
        self.scale.require_files(bool(self.inputs) and not self.stdin)
        if self.scores and self.stdin:
            raise StreamJobError("--scores needs files or --watch: a stdin stream has no journal to re-threshold "
                                 "from; write the audio to a file first")

    @property
    def stdin(self) -> bool:
        return self.inputs == ("-",)


@dataclass
class StreamOutcome:
    summary: RunSummary
    embeddings: EmbeddingSink | None  # the archive sink of ``--embeddings`` (its summary), or None


#: ``progress(total audio seconds or None, number of files or None)``: a context manager giving a ``Progress``.
ProgressFactory = Callable[[float | None, int | None], AbstractContextManager]
#: ``embeddings(model, plan, stdin)``: a context manager giving the ``--embeddings`` sink, or None.
SinkFactory = Callable[..., AbstractContextManager]


def resolve_thresholds(net, min_conf: float | None, table: tuple[tuple[str, float], ...]
                       ) -> tuple[float, tuple[tuple[str, float], ...], str]:
    """The thresholds a run uses and where they came from: the options when given (``--min-conf``, a number or a
    table), else the graph's own ``class_thresholds`` (a graph from `export attach`), else ``DEFAULT_MIN_CONF``."""
    from vocalprobe.runtime.core.graph_contract import class_thresholds

    if min_conf is not None or table:
        default = DEFAULT_MIN_CONF if min_conf is None else min_conf
        if table:
            return default, table, f"--min-conf table ({len(table)} class(es)), others {default:g}"
        return default, (), f"--min-conf {default:g}"
    info = getattr(net, "info", None)  # one graph; a fusion's members may disagree, so it keeps the default
    graph = class_thresholds(info.metadata, net.classes) if info is not None else {}
    if graph:
        return DEFAULT_MIN_CONF, tuple(sorted(graph.items())), (
            f"the graph's class_thresholds ({len(graph)} class(es)), others {DEFAULT_MIN_CONF:g}; --min-conf "
            "overrides them")
    return DEFAULT_MIN_CONF, (), f"default {DEFAULT_MIN_CONF:g} (--min-conf sets another)"


def no_negative_class_warning(classes) -> str:
    """What ``stream`` says once, at start, about a model without a background/negative class."""
    from vocalprobe.runtime.core.graph_contract import NEGATIVE_CLASSES

    return (f"warning: the model has no background/negative class (none of its classes {', '.join(classes)} is "
            f"named {', '.join(NEGATIVE_CLASSES)}): every window whose score is above the threshold becomes a "
            "detection, even with no call in it. Add a class of noise-only clips (e.g. 'background') to the "
            "training manifest and export again, or raise --min-conf.")


def _no_progress(total: float | None, n_files: int | None) -> AbstractContextManager[Progress | None]:
    return nullcontext(None)


def run_stream(job: StreamJob, *, say: Callable[[str], None] | None = None,
               progress: ProgressFactory = _no_progress, embeddings: SinkFactory | None = None) -> StreamOutcome:
    """Run ``job``; ``say`` gets what a user should read (stderr), ``progress`` makes the progress display,
    ``embeddings`` opens the archive sink of ``--embeddings`` (``archive.embed.stream_archive``, wired by the
    command: the stream product does not import the archive)."""
    from vocalprobe.runtime.core.detections.scores import scores_format
    from vocalprobe.runtime.engine.ensemble import load_models
    from vocalprobe.runtime.engine.sources import FolderWatcher, StdinSource, collect_files
    from vocalprobe.runtime.field.outputs import Outputs
    from vocalprobe.runtime.field.run_state import JOURNAL_NAME, RunState
    from vocalprobe.runtime.field.stream import (
        DetectConfig,
        analysis_params,
        output_options,
        run_settings,
        run_sources,
    )

    say = say or (lambda message: None)
    net = load_models([str(p) for p in job.models], weights=job.weights, provider=job.provider, threads=job.threads)
    plan = WindowPlan.from_seconds(job.window_s if job.window_s is not None else net.sample_duration, job.hop_s,
                                   net.sample_rate, job.final_window)
    unknown = sorted(job.ignore - set(net.classes))
    if unknown:
        raise StreamJobError(f"--ignore {', '.join(unknown)}: not a class of the model (classes: "
                             f"{', '.join(net.classes)})")
    min_conf, thresholds, source = resolve_thresholds(net, job.min_conf, job.thresholds)
    negative = negative_classes(net.classes)
    ignore = job.ignore | (frozenset() if job.report_background else frozenset(negative))
    config = DetectConfig(plan, batch=job.batch, min_conf=min_conf, top_k=job.top_k, merge=job.merge,
                          ignore=ignore, thresholds=thresholds)
    config.class_thresholds(net.classes)  # a table naming classes the model lacks is refused before any work
    watcher = FolderWatcher(job.watch, settle_s=job.settle_s) if job.watch is not None else None
    # a truncated WAV in the inputs is analysed for the part it holds (noted in errors.csv); --watch waits instead
    every_file = collect_files(job.inputs, job.block_size, partial=True) if job.inputs and not job.stdin else None
    files = every_file  # ``every_file``: before --shard, the order `merge` lays the shards out in
    scale = job.scale
    if scale.shard is not None:
        files = scale.select(every_file, key=lambda s: s.name)
        say(f"shard {scale.part}: {len(files)} of {len(every_file)} files")
    spec = None
    if not scale.one_process:
        spec = ModelSpec(tuple(str(p) for p in job.models), job.weights, job.provider, scale.threads(job.threads))
        if scale.workers > 1:
            say(f"{scale.workers} workers x {spec.threads} thread(s)")
    say(f"model: {net.describe()}")
    say(f"providers in use: {', '.join(net.providers)}")
    say(f"windows: {plan.window / net.sample_rate:g} s, hop {plan.hop / net.sample_rate:g} s, final window "
        f"{plan.final_window}; batch {job.batch}" + ("; merged events" if job.merge else ""))
    say(f"thresholds: {source}")
    if not negative:
        say(no_negative_class_warning(net.classes))
    elif not job.report_background:
        say(f"not reported: {', '.join(negative)} (the model's background class; --report-background reports it)")
    params = analysis_params(net, config, job.formats)
    overlap_s = (plan.window - plan.hop) / net.sample_rate
    run = dict(log=say, params=params, scale=scale, spec=spec)
    scores = scores_format() if job.scores else None
    if scores is not None:
        say(f"scores: every window's score of every class -> *{SCORE_SUFFIXES[scores]} (`vocalprobe rethreshold` "
            "re-thresholds them without the model)")

    # The folder is ours, or this fails at once.
    with Outputs(job.out, job.formats, net.sample_rate / 2, overlap_s=overlap_s, scores=scores, classes=net.classes,
                 sample_rate=net.sample_rate) as outputs, \
            (embeddings(net, plan, stdin=job.stdin) if embeddings is not None else nullcontext(None)) as sink:
        if job.stdin:
            source = StdinSource(job.sample_rate, job.channels, job.dtype, block_frames=job.block_size)
            if (job.out / JOURNAL_NAME).exists():  # its live rows would not be in the journal's count of the JSONL
                raise StreamJobError(f"{job.out} holds the outputs of a run over files; stream stdin into another "
                                     "--out folder")
            with progress(None, None) as bar:
                return StreamOutcome(run_sources([source], net, config, outputs, None, progress=bar, **run), None)
        with RunState(job.out, run_settings(net, config), output_options(config, job.formats, scores),
                      rewrite_outputs=job.rewrite_outputs) as state:
            for described, n in state.other_options().items():
                say(f"note: {n} file(s) done earlier were written with other output options ({described}); "
                    + ("they are analysed again" if job.rewrite_outputs
                       else "they keep those outputs (--rewrite-outputs analyses them again)"))
            if watcher is not None:
                say(f"watching {job.watch} (a file is read once it has not changed for {job.settle_s:g} s and, for "
                    "WAV, once its header's data size is all there; Ctrl-C to stop)")
                sources = state.todo(watcher.source(p, job.block_size)
                                     for p in watcher.follow(poll_s=job.poll_s, idle_exit_s=job.idle_exit_s))
                with progress(None, None) as bar:
                    return StreamOutcome(run_sources(sources, net, config, outputs, state, progress=bar,
                                                     embeddings=sink, **run), sink)
            state.number(every_file)
            if every_file is not None and scale.shard is not None:
                from vocalprobe.runtime.core.shards import run_identity

                state.mark_shard(str(scale.part), run_identity([s.name for s in every_file]), len(files))
            elif every_file is not None:
                state.mark_shard(None)
            todo = list(state.todo(files))
            if sink is not None:
                todo, again = sink.with_unembedded(files, todo, state.skipped)
                if again:
                    say(f"embeddings: {again} file(s) done earlier in {job.out} are not in the archive; they are "
                        "streamed again")
            total = 0.0
            for s in todo:
                try:
                    total += s.duration()
                except AudioError:  # reported (and listed in errors.csv) when the file's turn comes
                    continue
            if state.skipped:
                say(f"resuming: {len(state.skipped)} of {len(files)} files already done in {job.out}")
            with progress(total, len(todo)) as bar:
                return StreamOutcome(run_sources(todo, net, config, outputs, state, progress=bar, embeddings=sink,
                                                 **run), sink)
