"""`vocalprobe embed`: every window's ``embedding`` output into an archive, a consumer of the engine's predictions
(``engine.predict``, as ``stream`` is), so an archived vector is exactly what ``stream`` computed on that window, with
one process, ``--workers`` or Ray alike.

Memory is flat in the length of a recording: windows go to the database ``FLUSH_WINDOWS`` at a time inside the
recording's transaction. A recording whose audio (sha256) is already in the archive is skipped, under its own name
(a finished run resumed) or another (the same file copied twice).
"""

from __future__ import annotations

import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from vocalprobe import __version__
from vocalprobe.runtime.archive.store import ArchiveDB, ArchiveError
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.errors import AudioError
from vocalprobe.runtime.core.resample import QUALITY
from vocalprobe.runtime.core.detections.clock import parse_recorder_timestamp
from vocalprobe.runtime.engine.batches import WITH_EMBEDDING
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.engine.predict import predict
from vocalprobe.runtime.engine.scale import ONE_PROCESS, ModelSpec, Scale
from vocalprobe.runtime.engine.sources import FileSource
from vocalprobe.runtime.engine.windows import Window, WindowPlan

#: Windows written to SQLite and the index at a time (bounds memory, not results).
FLUSH_WINDOWS = 512


def archive_settings(model: OnnxModel, plan: WindowPlan, embedding_dim: int) -> dict:
    """What a reader needs to trust the vectors; a later run must match the first five."""
    meta = model.info.metadata
    return {"graph_sha256": file_sha256(model.path), "window_samples": plan.window, "hop_samples": plan.hop,
            "final_window": plan.final_window, "sample_rate": model.sample_rate,
            "window_s": plan.window / model.sample_rate, "hop_s": plan.hop / model.sample_rate,
            "embedding_dim": int(embedding_dim), "graph_file": str(model.path.resolve()),
            "backbone": meta.get("backbone"), "layer": meta.get("layer"), "classes": list(model.classes),
            "resampler": f"soxr {QUALITY}", "vocalprobe_version": __version__}


def hoplite_model_config(model: OnnxModel, plan: WindowPlan, embedding_dim: int) -> dict:
    """hoplite's ``model_config``: the ``TaxonomyModelOnnx`` settings that reproduce these embeddings from the graph
    (perch_hoplite.zoo.models_onnx; its notebooks' model-key lookup has no entry for it, so load it directly)."""
    return {"model_key": "taxonomy_model_onnx", "embedding_dim": int(embedding_dim), "logits_key": None,
            "logits_idxes": None,
            "model_config": {"model_path": str(model.path.resolve()), "sample_rate": model.sample_rate,
                             "window_size_s": plan.window / model.sample_rate,
                             "hop_size_s": plan.hop / model.sample_rate, "target_peak": None,
                             "input_name": "waveform",
                             "output_map": {"embedding": model.info.embedding_outputs_key,
                                            "logits": model.info.class_outputs_key}}}


def input_root(source: FileSource) -> Path:
    """The folder given on the command line (``source.name`` is relative to it)."""
    return source.path.parents[len(Path(source.name).parts) - 1]


def placement(source: FileSource, deployment: str | None) -> tuple[str, str]:
    """``(deployment, project)`` as hoplite's embed names them: the project is the input folder, the deployment
    the first folder below it (or the project, for files directly in it), unless ``--deployment`` names it."""
    project = input_root(source).resolve().name or "audio"
    if deployment is None:
        parts = Path(source.name).parts
        deployment = parts[0] if len(parts) > 1 else project
    return deployment, project


def is_archived(archive: ArchiveDB, source: FileSource, deployment: str | None = None) -> bool:
    """The archive holds ``source`` already, under its name and with its audio (``ArchiveSink.begin`` skips it)."""
    known = archive.finished(source.name, *placement(source, deployment))
    try:
        return known is not None and known == file_sha256(source.path)
    except FileNotFoundError:
        return False


def not_archived(archive: ArchiveDB, sources: Sequence[FileSource], deployment: str | None = None) -> list:
    """The sources the engine must still predict: those the archive does not hold yet."""
    return [s for s in sources if not is_archived(archive, s, deployment)]


@dataclass
class EmbedSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    failed: list[tuple[str, str]] = field(default_factory=list)
    windows: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


class ArchiveSink:
    """Window embeddings into an archive, one recording (one transaction) at a time: ``embed``'s loop, and the
    hook ``stream --embeddings`` hands to ``run_sources`` (``begin`` / ``add`` / ``commit`` / ``abort``).

    A recording already in the archive (same name and audio, or the same audio under another name) is listed as
    skipped and its windows are ignored."""

    def __init__(self, archive: ArchiveDB, model: OnnxModel, plan: WindowPlan, *, deployment: str | None = None,
                 positions: Mapping[str, int] | None = None):
        self.archive = archive
        self.positions = positions  # a shard's: each source's place in the whole input list, by name
        self.sample_rate = model.sample_rate
        self.deployment = deployment
        self.summary = EmbedSummary()
        probe = np.zeros((1, plan.window), np.float32)
        dim = model.predict_with_embedding(probe)[1].shape[1]
        archive.initialise(archive_settings(model, plan, dim), hoplite_model_config(model, plan, dim))
        self._projects: set[str] = set()
        self._open: tuple[str, int, str] | None = None  # (name, recording id, sha256) of the recording being written
        self._offsets: list[tuple[float, float]] = []
        self._rows: list[np.ndarray] = []

    def begin(self, source: FileSource) -> bool:
        """Open ``source``'s recording; False when the archive has it already (or the file is gone)."""
        self._open = None
        where, project = placement(source, self.deployment)
        try:
            sha = file_sha256(source.path)
        except FileNotFoundError:
            self.summary.failed.append((source.name, "file not found"))
            return False
        if self.archive.finished(source.name, where, project) == sha:
            self.summary.skipped.append((source.name, "already embedded"))
            return False
        twin = self.archive.finished_sha256(sha)
        if twin is not None:
            self.summary.skipped.append((source.name, f"same audio as {twin}, already embedded"))
            return False
        if project not in self._projects:
            self.archive.add_audio_source(project, input_root(source))
            self._projects.add(project)
        stamp = parse_recorder_timestamp(source.name)
        recording_id = self.archive.begin_recording(source.name, where, project,
                                                    stamp.isoformat() if stamp else None)
        self._open = (source.name, recording_id, sha)
        self._offsets.clear()
        self._rows.clear()
        return True

    def with_unembedded(self, files: Sequence, todo: Sequence, done_names: Sequence[str]) -> tuple[list, int]:
        """A resumed stream's ``todo`` plus the files it finished earlier (``done_names``) that the archive lacks,
        in input order, and how many those are: an earlier run without --embeddings, or a kill before the index was
        saved (the archive then drops the recording), would otherwise leave them out of the archive for good."""
        stored = {r.filename for r in self.archive.recordings().values()}
        again = {n for n in done_names if n not in stored}
        if not again:
            return list(todo), 0
        names = {s.name for s in todo} | again
        return [f for f in files if f.name in names], len(again)

    def add(self, window: Window, embedding: np.ndarray) -> None:
        if self._open is None:
            return
        self._offsets.append(window.seconds(self.sample_rate))
        self._rows.append(embedding)
        if len(self._rows) >= FLUSH_WINDOWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self.archive.add_windows(self._open[1], self._offsets, np.stack(self._rows))
            self._offsets.clear()
            self._rows.clear()

    def commit(self, n_windows: int, audio_seconds: float) -> None:
        """The recording is finished (``n_windows`` windows, ``audio_seconds`` of audio): make it visible."""
        if self._open is None:
            return
        name, recording_id, sha = self._open
        if n_windows == 0:
            self.abort()
            self.summary.failed.append((name, "shorter than one window (use --final-window pad)"))
            return
        self._flush()
        position = None if self.positions is None else self.positions[name]
        self.archive.commit_recording(recording_id, sha, n_windows, audio_seconds, position)
        self._open = None
        self.summary.done.append(name)
        self.summary.windows += n_windows
        self.summary.audio_seconds += audio_seconds

    def abort(self, problem: str | None = None) -> None:
        """Drop the open recording (it failed: ``problem``, listed; or the run stops); nothing of it is kept."""
        if self._open is None:
            return
        self.archive.abort_recording()
        if problem is not None:
            self.summary.failed.append((self._open[0], problem))
        self._open = None
        self._offsets.clear()
        self._rows.clear()


def embed_sources(sources: Sequence[FileSource], model: OnnxModel, plan: WindowPlan, archive: ArchiveDB, *,
                  batch: int = 8, deployment: str | None = None, positions: Mapping[str, int] | None = None,
                  on_audio: Callable[[float], None] | None = None, scale: Scale = ONE_PROCESS,
                  spec: ModelSpec | None = None) -> EmbedSummary:
    """Embed every source not yet in ``archive``; unreadable ones are listed in the summary and skipped.
    ``positions`` (a shard's run): every source's place in the whole input list, kept for ``merge --db``.
    ``scale`` and ``spec``: where the engine runs the model; recordings the archive holds are not predicted at all,
    so a resumed run costs only what is left."""
    started = time.perf_counter()
    sink = ArchiveSink(archive, model, plan, deployment=deployment, positions=positions)
    sources = list(sources)
    pending = not_archived(archive, sources, deployment)
    todo = {id(s) for s in pending}
    with closing(predict(pending, model, plan, batch, scale, WITH_EMBEDDING, spec=spec)) as recordings:
        for source in sources:
            recording = next(recordings) if id(source) in todo else None
            if not sink.begin(source):  # listed as skipped: archived already (under its name, or as a twin)
                continue
            if recording is None:  # not_archived said it was archived, begin says not: it changed meanwhile
                sink.abort("changed while the run started; run again")
                continue
            n_windows = 0
            try:
                for prediction in recording.predictions(on_audio):
                    for window, embedding in zip(prediction.windows, prediction.embeddings):
                        sink.add(window, embedding)
                    n_windows += len(prediction)
            except AudioError as exc:
                sink.abort(exc.problem)
                continue
            except BaseException:
                sink.abort()
                raise
            sink.commit(n_windows, recording.audio_seconds)
    sink.summary.wall_seconds = time.perf_counter() - started
    return sink.summary


@contextmanager
def stream_archive(db: Path | None, model, plan: WindowPlan, *, embeddings: bool, stdin: bool = False,
                   scale: Scale = ONE_PROCESS) -> Iterator[ArchiveSink | None]:
    """``stream --embeddings --db DIR``: the sink ``run_sources`` writes each window's embedding to (None without
    the options); the combinations one archive writer cannot serve are refused before any work."""
    if not embeddings and db is None:
        yield None
        return
    if not embeddings or db is None:
        raise ArchiveError("--embeddings and --db DIR go together: --embeddings writes each window's embedding "
                           "into the archive folder --db names")
    if stdin:
        raise ArchiveError("--embeddings stores recordings by file: it reads files and folders, not stdin")
    if not scale.one_process or scale.shard is not None:
        raise ArchiveError("--embeddings writes one archive from one process: drop --workers/--shard/--engine ray, "
                           "or write the archive with `vocalprobe embed`, which takes them")
    if not isinstance(model, OnnxModel):
        raise ArchiveError("--embeddings needs one --model graph (a fusion of several has no single embedding)")
    with ArchiveDB.open_writer(db) as archive:
        yield ArchiveSink(archive, model, plan)


__all__ = ["embed_sources", "not_archived", "ArchiveSink", "EmbedSummary", "stream_archive", "archive_settings",
           "hoplite_model_config"]
