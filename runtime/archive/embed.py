"""`vocalprobe embed`: every window's ``embedding`` output into an archive, with stream's sources, resampling,
windows and batching (``runtime.field``), so an archived vector is exactly what ``stream`` computed on that window.

Memory is flat in the length of a recording: windows go to the database ``FLUSH_WINDOWS`` at a time inside the
recording's transaction. A recording whose audio (sha256) is already in the archive is skipped, under its own name
(a finished run resumed) or another (the same file copied twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from vocalprobe import __version__
from vocalprobe.runtime.archive.store import ArchiveDB
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.errors import AudioError
from vocalprobe.runtime.core.resample import QUALITY
from vocalprobe.runtime.field.onnx_model import ModelError, OnnxModel
from vocalprobe.runtime.field.sources import FileSource
from vocalprobe.runtime.field.stream import window_probabilities
from vocalprobe.runtime.field.windows import Window, WindowPlan
from vocalprobe.runtime.field.writers import parse_recorder_timestamp

#: Windows written to SQLite and the index at a time (bounds memory, not results).
FLUSH_WINDOWS = 512


class WithEmbedding:
    """A model whose ``predict`` returns ``[probabilities | embedding]`` from ONE session run, so stream's batching
    loop (``window_probabilities``) yields both; ``split`` separates them again."""

    def __init__(self, model: OnnxModel):
        if model.info.embedding_outputs_key is None:
            raise ModelError(f"{model.path.name}: the graph has no embedding output (no embedding_outputs_key)")
        self.model = model
        self.classes = model.classes
        self.sample_rate = model.sample_rate
        self.max_chunk_samples = model.max_chunk_samples

    def predict(self, batch: np.ndarray) -> np.ndarray:
        probs, emb = self.model.predict_with_embedding(batch)
        return np.concatenate([probs, emb], axis=1)

    def split(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.classes)
        return row[..., :k], row[..., k:]


def window_embeddings(blocks: Iterable[np.ndarray], model: OnnxModel, plan: WindowPlan,
                      batch: int = 8) -> Iterable[tuple[Window, np.ndarray]]:
    """``(window, embedding)`` of every window of a stream of model-rate blocks (stream's windows and batches)."""
    both = WithEmbedding(model)
    for window, row in window_probabilities(blocks, both, plan, batch):
        yield window, both.split(row)[1]


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


@dataclass
class EmbedSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    failed: list[tuple[str, str]] = field(default_factory=list)
    windows: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def embed_sources(sources: Sequence[FileSource], model: OnnxModel, plan: WindowPlan, archive: ArchiveDB, *,
                  batch: int = 8, deployment: str | None = None,
                  on_audio: Callable[[float], None] | None = None) -> EmbedSummary:
    """Embed every source not yet in ``archive``; unreadable ones are listed in the summary and skipped."""
    started = time.perf_counter()
    summary = EmbedSummary()
    probe = np.zeros((1, plan.window), np.float32)
    dim = model.predict_with_embedding(probe)[1].shape[1]
    archive.initialise(archive_settings(model, plan, dim), hoplite_model_config(model, plan, dim))
    projects: set[str] = set()
    for source in sources:
        where, project = placement(source, deployment)
        try:
            sha = file_sha256(source.path)
        except FileNotFoundError:
            summary.failed.append((source.name, "file not found"))
            continue
        if archive.finished(source.name, where, project) == sha:
            summary.skipped.append((source.name, "already embedded"))
            continue
        twin = archive.finished_sha256(sha)
        if twin is not None:
            summary.skipped.append((source.name, f"same audio as {twin}, already embedded"))
            continue
        if project not in projects:
            archive.add_audio_source(project, input_root(source))
            projects.add(project)
        stamp = parse_recorder_timestamp(source.name)
        recording_id = archive.begin_recording(source.name, where, project, stamp.isoformat() if stamp else None)
        offsets: list[tuple[float, float]] = []
        rows: list[np.ndarray] = []
        n_windows, seconds = 0, 0.0

        def counted(blocks):
            nonlocal seconds
            for block in blocks:
                seconds += len(block) / model.sample_rate
                if on_audio is not None:
                    on_audio(len(block) / model.sample_rate)
                yield block

        def flush() -> None:
            if rows:
                archive.add_windows(recording_id, offsets, np.stack(rows))
                offsets.clear()
                rows.clear()

        try:
            for window, embedding in window_embeddings(counted(source.blocks(model.sample_rate)), model, plan, batch):
                offsets.append(window.seconds(model.sample_rate))
                rows.append(embedding)
                n_windows += 1
                if len(rows) >= FLUSH_WINDOWS:
                    flush()
            flush()
        except AudioError as exc:
            archive.abort_recording()
            summary.failed.append((source.name, exc.problem))
            continue
        except BaseException:
            archive.abort_recording()
            raise
        if n_windows == 0:
            archive.abort_recording()
            summary.failed.append((source.name, "shorter than one window (use --final-window pad)"))
            continue
        archive.commit_recording(recording_id, sha, n_windows, seconds)
        summary.done.append(source.name)
        summary.windows += n_windows
        summary.audio_seconds += seconds
    summary.wall_seconds = time.perf_counter() - started
    return summary


__all__ = ["embed_sources", "window_embeddings", "WithEmbedding", "EmbedSummary", "archive_settings",
           "hoplite_model_config"]
