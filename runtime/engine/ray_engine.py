"""``stream --engine ray``: the job as a Ray Data pipeline, on this machine's cores or on a cluster (``--address``).

Rows are chunks of recordings, ``(recording, first window, number of windows)``, built from the inputs here (never
``ray.data.read_audio``, which reads whole files into memory). ``map_batches`` runs them through ``ChunkPredictor``,
a stateful class holding one onnxruntime session per actor, which decodes its chunk with a seek and returns the
probabilities of exactly its windows. The driver takes the chunks back in input order and runs them through
``stream.run_sources`` like a local run (the same tables, JSONL and journal), replaying the probabilities.

Exactness decides where a recording may be cut:
- at the model's rate in a lossless format (WAV, FLAC), nothing is resampled: chunks start at multiples of ``batch``
  windows and hold whole windows (consecutive chunks overlap by ``window - hop``), so every window has the samples
  and the batch-mates it has in a local run;
- anything else is one chunk, resampled per file inside its task: a streamed resampler has state, and a fresh one
  started part-way gives samples that differ in the last bits (pre-roll does not make them equal). Such recordings
  are spread over the cluster file by file.

``embed --engine ray`` (``embed_with_ray``) runs the same chunks through ``EmbeddingChunkPredictor``, which returns
each window's ``[probabilities | embedding]``, and replays them through ``archive.embed.embed_sources`` into the
archive a local run writes.

Actors that die are restarted and their chunks retried by Ray Data; the driver keeps one result per chunk, so the
outputs have no duplicates. Ray is an optional extra: ``pip install 'vocalprobe[ray]'``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.engine.windows import Window, WindowPlan, final_window, full_window_count
from vocalprobe.runtime.engine.pool import ModelSpec, available_cores, check_model_fits, window_batches

log = logging.getLogger(__name__)

#: Windows per chunk of a recording that can be cut (rounded down to a multiple of ``batch``).
DEFAULT_CHUNK_WINDOWS = 512
_LOSSLESS = ("WAV", "FLAC")


class RayEngineError(VocalprobeError):
    """Ray is missing, cannot start or connect, or a chunk could not be predicted."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the part the engine needs)
    except ModuleNotFoundError as exc:
        raise RayEngineError("--engine ray needs Ray: pip install 'vocalprobe[ray]' (or pip install 'ray[data]')"
                             ) from exc
    return ray


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """Join the cluster at ``address`` (``ray start --head`` prints it), or start a local Ray with this machine's
    cores; a Ray already initialised in this process is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or available_cores(), num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise RayEngineError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc}"
                             ) from exc
    return ray


@dataclass(frozen=True)
class Chunk:
    recording: int  # position in the input order
    path: str
    name: str
    first_window: int
    n_windows: int  # 0 with ``whole``: all the windows of the recording
    whole: bool  # resampled (or read) in one task, from the start of the file
    block_size: int
    frames: int = 0  # of a recording at the model's rate (not whole): a local run reads it in blocks of block_size


def plan_chunks(sources: Sequence, plan: WindowPlan, batch: int, sample_rate: int,
                chunk_windows: int = DEFAULT_CHUNK_WINDOWS) -> list[Chunk]:
    """The chunks of every source, in input order (see the module docstring for where a recording is cut)."""
    import soundfile as sf

    from vocalprobe.runtime.core.audio import audio_info

    step = max(batch, chunk_windows // batch * batch)
    chunks: list[Chunk] = []
    for index, source in enumerate(sources):
        block_size = getattr(source, "block_size", 65_536)
        try:
            info = audio_info(source.path)
            kind = sf.info(str(source.path)).format
        except AudioError:  # the task reports it, with the words a local run uses
            info, kind = None, None
        if info is None or info.sample_rate != sample_rate or kind not in _LOSSLESS or info.frames == 0:
            chunks.append(Chunk(index, str(source.path), source.name, 0, 0, True, block_size))
            continue
        n = full_window_count(info.frames, plan) + (final_window(info.frames, plan) is not None)
        for first in range(0, max(n, 1), step):
            chunks.append(Chunk(index, str(source.path), source.name, first, min(step, n - first), False,
                                block_size, info.frames))
    return chunks


def _local_problem(path: str, name: str, block_size: int, sample_rate: int) -> str | None:
    """What a local run says about a file that cannot be read (None: it reads)."""
    from vocalprobe.runtime.engine.sources import FileSource

    try:
        for _ in FileSource(Path(path), name, block_size).blocks(sample_rate):
            pass
    except AudioError as exc:
        return exc.problem
    return None


def _chunk_windows(total: int, plan: WindowPlan, first: int, count: int) -> list[Window]:
    n_full = full_window_count(total, plan)
    last = final_window(total, plan)
    windows = [Window(k, k * plan.hop, k * plan.hop + plan.window) for k in range(first, min(first + count, n_full))]
    if last is not None and first <= last.index < first + count:
        windows.append(last)
    return windows


def _cut_batches(path: str, plan: WindowPlan, batch: int, sample_rate: int, first: int,
                 count: int) -> Iterator[np.ndarray]:
    """The batches a local run makes of windows ``first .. first + count`` of a file at the model's rate."""
    from vocalprobe.runtime.core.audio import audio_info, read_audio

    total = audio_info(path).frames
    windows = _chunk_windows(total, plan, first, count)
    if not windows:  # a recording shorter than one window, policy drop
        return
    begin, end = windows[0].start, windows[-1].end
    samples, _ = read_audio(path, begin / sample_rate, end / sample_rate)
    if len(samples) != end - begin:
        raise AudioError(path, f"read {len(samples)} samples of {end - begin} at {begin}")
    full, shorter = [], None
    for w in windows:
        cut = samples[w.start - begin:w.end - begin]
        if len(cut) < plan.window and plan.final_window == "pad":
            cut = np.concatenate([cut, np.zeros(plan.window - len(cut), dtype=np.float32)])
        if len(cut) == plan.window:
            full.append(cut)
        else:
            shorter = cut
    for i in range(0, len(full), batch):
        yield np.stack(full[i:i + batch])
    if shorter is not None:
        yield shorter[None, :]


class ChunkPredictor:
    """The stateful class of ``map_batches``: one model per actor; each call predicts the chunks of one batch."""

    def __init__(self, spec: ModelSpec, plan: WindowPlan, batch: int, sample_rate: int):
        self.model = spec.load()
        self.plan, self.batch, self.sample_rate = plan, batch, sample_rate
        self.providers = ",".join(self.model.providers)
        self.width = len(self.model.classes)  # values per window

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self.model.predict(inputs)

    def predict_chunk(self, chunk: Chunk) -> dict:
        probs: list[np.ndarray] = []
        blocks: list[int] = []
        try:
            if chunk.whole:
                from vocalprobe.runtime.engine.sources import FileSource

                def counted() -> Iterator[np.ndarray]:
                    for block in FileSource(Path(chunk.path), chunk.name, chunk.block_size).blocks(self.sample_rate):
                        blocks.append(len(block))
                        yield block

                for _windows, inputs in window_batches(counted(), self.plan, self.batch):
                    probs.append(self.run(inputs))
            else:
                for inputs in _cut_batches(chunk.path, self.plan, self.batch, self.sample_rate, chunk.first_window,
                                           chunk.n_windows):
                    probs.append(self.run(inputs))
            problem = ""
        except AudioError:
            problem = _local_problem(chunk.path, chunk.name, chunk.block_size, self.sample_rate) or "unreadable"
            probs, blocks = [], []
        array = np.concatenate(probs) if probs else np.zeros((0, self.width), np.float32)
        return {"recording": chunk.recording, "first_window": chunk.first_window, "problem": problem,
                "probs": array.astype(np.float32).tobytes(), "n_windows": len(array),
                "blocks": np.asarray(blocks, np.int64).tobytes(), "providers": self.providers}

    def __call__(self, rows: dict) -> dict:
        fields = list(Chunk.__dataclass_fields__)
        out = [self.predict_chunk(Chunk(*(rows[f][i].item() if hasattr(rows[f][i], "item") else rows[f][i]
                                          for f in fields))) for i in range(len(rows["recording"]))]
        return {key: np.array([o[key] for o in out], dtype=object) for key in out[0]} if out else {}


class EmbeddingChunkPredictor(ChunkPredictor):
    """``ChunkPredictor`` for ``embed``: each window's ``[probabilities | embedding]`` from one session run."""

    def __init__(self, spec: ModelSpec, plan: WindowPlan, batch: int, sample_rate: int):
        super().__init__(spec, plan, batch, sample_rate)
        self.width += embedding_dim(self.model, plan)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return np.concatenate(self.model.predict_with_embedding(inputs), axis=1)


def embedding_dim(model, plan: WindowPlan) -> int:
    return int(model.predict_with_embedding(np.zeros((1, plan.window), np.float32))[1].shape[1])


@dataclass
class RecordingResult:
    """What the driver keeps of one recording: its windows' probabilities, its block lengths, or its problem."""

    probs: np.ndarray
    blocks: list[int]
    problem: str


def predict_on_ray(chunks: Sequence[Chunk], spec: ModelSpec, plan: WindowPlan, batch: int, sample_rate: int, *,
                   concurrency: int | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                   predictor: type = ChunkPredictor, providers: set | None = None) -> Iterator[tuple[int, dict]]:
    """(chunk position, result) of every chunk, in chunk order, through a Ray Data pipeline."""
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # recordings are written in input order
    rows = [asdict(c) for c in chunks]
    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 2_000))
    ds = ds.map_batches(predictor, fn_constructor_args=(spec, plan, batch, sample_rate), batch_size=1,
                        concurrency=concurrency or max(1, int(ray.available_resources().get("CPU", 1))),
                        num_cpus=num_cpus if num_cpus is not None else (0 if num_gpus else 1),
                        num_gpus=num_gpus or None)
    seen: set[tuple[int, int]] = set()
    position = {(c.recording, c.first_window): i for i, c in enumerate(chunks)}
    for row in ds.iter_rows():
        key = (int(row["recording"]), int(row["first_window"]))
        if key in seen:  # a retried chunk whose first answer also arrived: keep one
            continue
        seen.add(key)
        if providers is not None:
            providers.update(str(row["providers"]).split(","))
        yield position[key], row


def recording_results(chunks: Sequence[Chunk], results: Iterator[tuple[int, dict]],
                      n_classes: int) -> Iterator[tuple[int, RecordingResult]]:
    """Join the chunks of each recording (they arrive in order), per recording."""
    current, parts, blocks, problem = None, [], [], ""

    def finished():
        probs = np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)
        return current, RecordingResult(probs, blocks, problem)

    for position, row in results:
        chunk = chunks[position]
        if current is not None and chunk.recording != current:
            yield finished()
            parts, blocks, problem = [], [], ""
        current = chunk.recording
        problem = problem or str(row["problem"])
        parts.append(np.frombuffer(row["probs"], np.float32).reshape(-1, n_classes))
        blocks += np.frombuffer(row["blocks"], np.int64).tolist()
        if not chunk.whole and chunk.first_window == 0:  # read without resampling: the blocks of iter_blocks
            full, rest = divmod(chunk.frames, chunk.block_size)
            blocks += [chunk.block_size] * full + ([rest] if rest else [])
    if current is not None:
        yield finished()


class _Replayed:
    """A source as ``run_sources`` sees it: silence of the recording's block lengths, and its probabilities."""

    def __init__(self, source, engine: "RayRun", index: int):
        self.source, self._engine, self._index = source, engine, index

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]:
        result = self._engine.result(self._index)
        if result.problem:
            raise AudioError(self.source.path, result.problem)
        for n in result.blocks:
            yield np.zeros(n, dtype=np.float32)


class _ReplayModel:
    def __init__(self, model, engine: "RayRun"):
        self.inner, self._engine = model, engine

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._engine.take(len(batch))

    def predict_with_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) of a run of ``EmbeddingChunkPredictor``. Before the first recording is read
        (the archive's probe of the embedding size) the model in this process answers."""
        if not self._engine.started:
            return self.inner.predict_with_embedding(batch)
        both = self._engine.take(len(batch))
        k = len(self.inner.classes)
        return both[:, :k], both[:, k:]


class RayRun:
    """The driver side: chunks out, probabilities back in input order, replayed through ``run_sources``."""

    def __init__(self, sources: Sequence, model, config, spec: ModelSpec, *, concurrency: int | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 chunk_windows: int = DEFAULT_CHUNK_WINDOWS, predictor: type = ChunkPredictor,
                 width: int | None = None):
        """``width``: values per window the predictor returns (default: one per class)."""
        check_model_fits(model, config.plan, config.batch)
        self.started = False
        self.sources = [_Replayed(s, self, i) for i, s in enumerate(sources)]
        self.model = _ReplayModel(model, self)
        self.providers: set[str] = set()
        self.chunks = plan_chunks(sources, config.plan, config.batch, model.sample_rate, chunk_windows)
        for source in sources:  # a recording of no chunk (none here) would stall the replay
            if not hasattr(source, "path"):
                raise RayEngineError("--engine ray reads files (not stdin or --watch); use the local engine")
        self._results = recording_results(
            self.chunks, predict_on_ray(self.chunks, spec, config.plan, config.batch, model.sample_rate,
                                        concurrency=concurrency, num_cpus=num_cpus, num_gpus=num_gpus,
                                        predictor=predictor, providers=self.providers),
            width or len(model.classes))
        self._probs = np.zeros((0, width or len(model.classes)), np.float32)
        self._offset = 0

    def result(self, index: int) -> RecordingResult:
        self.started = True
        for got, result in self._results:
            if got == index:
                self._probs, self._offset = result.probs, 0
                return result
            if got > index:
                break
        raise RayEngineError(f"internal: no result for input {index}")

    def take(self, n: int) -> np.ndarray:
        out = self._probs[self._offset:self._offset + n]
        if len(out) != n:
            raise RayEngineError("internal: the chunks gave fewer windows than the recording has")
        self._offset += n
        return out


def run_with_ray(sources: Sequence, model, config, outputs, state=None, *, spec: ModelSpec,
                 address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                 concurrency: int | None = None, chunk_windows: int = DEFAULT_CHUNK_WINDOWS,
                 predictor: type = ChunkPredictor, **run_options):
    """``stream.run_sources`` with the model work done by a Ray Data pipeline: the same outputs and summary."""
    from vocalprobe.runtime.field.stream import run_sources

    connect(address)
    run = RayRun(list(sources), model, config, spec, concurrency=concurrency, num_cpus=num_cpus,
                 num_gpus=num_gpus, chunk_windows=chunk_windows, predictor=predictor)
    summary = run_sources(run.sources, run.model, config, outputs, state, **run_options)
    (run_options.get("log") or log.info)(f"Ray actors' providers: {', '.join(sorted(run.providers)) or 'none'}")
    return summary


def embed_with_ray(sources: Sequence, model, plan: WindowPlan, archive, *, spec: ModelSpec, batch: int = 8,
                   address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                   concurrency: int | None = None, chunk_windows: int = DEFAULT_CHUNK_WINDOWS,
                   deployment: str | None = None, **embed_options):
    """``archive.embed.embed_sources`` with the model work done by a Ray Data pipeline: the same archive and
    summary. Recordings the archive already holds are not sent to the cluster (the local loop lists them)."""
    from vocalprobe.runtime.archive.embed import embed_sources, in_input_order, not_archived
    from vocalprobe.runtime.field.stream import DetectConfig

    connect(address)
    sources = list(sources)
    pending = not_archived(archive, sources, deployment)
    run = RayRun(pending, model, DetectConfig(plan, batch=batch), spec, concurrency=concurrency, num_cpus=num_cpus,
                 num_gpus=num_gpus, chunk_windows=chunk_windows, predictor=EmbeddingChunkPredictor,
                 width=len(model.classes) + embedding_dim(model, plan))
    summary = embed_sources(in_input_order(sources, pending, run.sources), run.model, plan, archive, batch=batch, deployment=deployment, **embed_options)
    log.info("Ray actors' providers: %s", ", ".join(sorted(run.providers)) or "none")
    return summary


ENGINES = ("local", "ray")


def scale_out(run_sources: Callable, files: list | None, *, model_paths: Sequence, weights: str | None,
              provider: str, threads: int | None, workers: int = 1, shard: str | None = None,
              engine: str = "local", address: str | None = None, num_cpus: float | None = None,
              num_gpus: float | None = None, concurrency: int | None = None,
              say: Callable[[str], None] | None = None) -> tuple[Callable, list | None]:
    """The stream CLI's scale-out options -> (what runs the files, the files of this shard). One process, local
    workers (``workers.run_with_workers``) or Ray (``run_with_ray``) all take ``run_sources``' arguments."""
    from functools import partial

    from vocalprobe.runtime.core.shards import Shard
    from vocalprobe.runtime.engine.pool import default_threads, run_with_workers

    if engine not in ENGINES:
        raise RayEngineError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if files is None and (shard is not None or workers > 1 or engine == "ray"):
        raise RayEngineError("--shard, --workers and --engine ray split files and folders; stdin and --watch run in "
                             "one process")
    if workers > 1 and engine == "ray":
        raise RayEngineError("--workers is for the local engine; with --engine ray use --concurrency")
    if shard is not None:
        part = Shard.parse(shard)
        total = len(files)
        files = list(part.select(files, key=lambda s: s.name))
        if say is not None:
            say(f"shard {part}: {len(files)} of {total} files")
    paths = tuple(str(p) for p in model_paths)
    if engine == "ray":
        spec = ModelSpec(paths, weights, provider, threads if threads is not None else max(1, int(num_cpus or 1)))
        return partial(run_with_ray, spec=spec, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                       concurrency=concurrency), files
    if workers > 1:
        spec = ModelSpec(paths, weights, provider, threads if threads is not None else default_threads(workers))
        if say is not None:
            say(f"{workers} workers x {spec.threads} thread(s)")
        return partial(run_with_workers, spec=spec, workers=workers), files
    return run_sources, files
