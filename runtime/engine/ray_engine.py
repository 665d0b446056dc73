"""``--engine ray``: the model work as a Ray Data pipeline, on this machine's cores or on a cluster (``--address``).

Rows are chunks of recordings, ``(recording, first window, number of windows)``, built from the inputs here (never
``ray.data.read_audio``, which reads whole files into memory). ``map_batches`` runs them through ``ChunkPredictor``,
a stateful class holding one onnxruntime session per actor, which decodes its chunk with a seek and cuts it into the
batches a local run makes (``batches.window_batches``). The driver takes the chunks back in input order and hands
each recording's predictions to the consumer (``stream``, ``embed``) with its windows (``windows.plan_windows`` of
its length): the same tables, JSONL, journal and archive as a local run.

Exactness decides where a recording may be cut:
- at the model's rate in a lossless format (WAV, FLAC), nothing is resampled: chunks start at multiples of ``batch``
  windows and hold whole windows (consecutive chunks overlap by ``window - hop``), so every window has the samples
  and the batch-mates it has in a local run;
- anything else is one chunk, resampled per file inside its task: a streamed resampler has state, and a fresh one
  started part-way gives samples that differ in the last bits (pre-roll does not make them equal). Such recordings
  are spread over the cluster file by file.

Actors that die are restarted and their chunks retried by Ray Data; the driver keeps one result per chunk, so the
outputs have no duplicates. Ray is an optional extra: ``pip install 'vocalprobe[ray]'``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.engine.batches import AudioClock, Prediction, run_model, window_batches
from vocalprobe.runtime.engine.scale import ModelSpec, Scale, available_cores
from vocalprobe.runtime.engine.windows import WindowPlan, final_window, full_window_count, plan_windows

logger = logging.getLogger(__name__)

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
    # Ray's own C++ log lines (its core worker's) go to stderr unless told otherwise; a command prints its own
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        if address is not None:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            ray.init(num_cpus=num_cpus or available_cores(), num_gpus=num_gpus, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.ERROR)
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
    last: bool = True  # the chunk reaches the end of the recording (it holds the final incomplete window, if any)
    partial: bool = False  # the source's ``FileSource.partial``: a truncated WAV is read for what it holds


def plan_chunks(sources: Sequence, plan: WindowPlan, batch: int, sample_rate: int,
                chunk_windows: int = DEFAULT_CHUNK_WINDOWS) -> list[Chunk]:
    """The chunks of every source, in input order (see the module docstring for where a recording is cut)."""
    import soundfile as sf

    from vocalprobe.runtime.core.audio import audio_info

    step = max(batch, chunk_windows // batch * batch)
    chunks: list[Chunk] = []
    for index, source in enumerate(sources):
        block_size = source.block_size
        try:
            info = audio_info(source.path)
            kind = sf.info(str(source.path)).format
        except AudioError:  # the task reports it, with the words a local run uses
            info, kind = None, None
        if info is None or info.sample_rate != sample_rate or kind not in _LOSSLESS or info.frames == 0:
            chunks.append(Chunk(index, str(source.path), source.name, 0, 0, True, block_size,
                                partial=source.partial))
            continue
        n = full_window_count(info.frames, plan) + (final_window(info.frames, plan) is not None)
        for first in range(0, max(n, 1), step):
            count = min(step, n - first)
            chunks.append(Chunk(index, str(source.path), source.name, first, count, False, block_size, info.frames,
                                first + count >= n))
    return chunks


def _local_problem(path: str, name: str, block_size: int, sample_rate: int, partial: bool) -> str | None:
    """What a local run says about a file that cannot be read (None: it reads)."""
    from vocalprobe.runtime.engine.sources import FileSource

    try:
        for _ in FileSource(Path(path), name, block_size, partial).blocks(sample_rate):
            pass
    except AudioError as exc:
        return exc.problem
    return None


def _cut_batches(chunk: Chunk, plan: WindowPlan, batch: int, sample_rate: int) -> Iterator[np.ndarray]:
    """The batches a local run makes of windows ``first .. first + count`` of a file at the model's rate: the chunk's
    samples (from its first window's start) through ``window_batches``, as the whole file would go through it."""
    from vocalprobe.runtime.core.audio import read_audio

    if chunk.n_windows == 0:  # a recording shorter than one window, policy drop
        return
    begin = chunk.first_window * plan.hop
    end = chunk.frames if chunk.last else (chunk.first_window + chunk.n_windows - 1) * plan.hop + plan.window
    samples, _ = read_audio(chunk.path, begin / sample_rate, end / sample_rate)
    if len(samples) != end - begin:
        raise AudioError(chunk.path, f"read {len(samples)} samples of {end - begin} at {begin}")
    for _windows, inputs in window_batches([samples], plan, batch, finish=chunk.last):
        yield inputs


class ChunkPredictor:
    """The stateful class of ``map_batches``: one model per actor; each call predicts the chunks of one batch."""

    def __init__(self, spec: ModelSpec, plan: WindowPlan, batch: int, sample_rate: int, outputs: tuple[str, ...]):
        self.model = spec.load()
        self.plan, self.batch, self.sample_rate, self.outputs = plan, batch, sample_rate, outputs
        self.providers = ",".join(self.model.providers)
        self.n_classes = len(self.model.classes)

    def predict_chunk(self, chunk: Chunk) -> dict:
        probs: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        blocks: list[int] = []

        def run(inputs: np.ndarray) -> None:
            p, e = run_model(self.model, inputs, self.outputs)
            probs.append(p)
            if e is not None:
                embeddings.append(e)

        try:
            if chunk.whole:
                from vocalprobe.runtime.engine.sources import FileSource

                def counted() -> Iterator[np.ndarray]:
                    source = FileSource(Path(chunk.path), chunk.name, chunk.block_size, chunk.partial)
                    for block in source.blocks(self.sample_rate):
                        blocks.append(len(block))
                        yield block

                for _windows, inputs in window_batches(counted(), self.plan, self.batch):
                    run(inputs)
            else:
                for inputs in _cut_batches(chunk, self.plan, self.batch, self.sample_rate):
                    run(inputs)
            problem = ""
        except AudioError:
            problem = (_local_problem(chunk.path, chunk.name, chunk.block_size, self.sample_rate, chunk.partial)
                       or "unreadable")
            probs, embeddings, blocks = [], [], []
        array = np.concatenate(probs) if probs else np.zeros((0, self.n_classes), np.float32)
        emb = np.concatenate(embeddings) if embeddings else np.zeros((len(array), 0), np.float32)
        return {"recording": chunk.recording, "first_window": chunk.first_window, "problem": problem,
                "probs": array.astype(np.float32).tobytes(), "n_windows": len(array),
                "embeddings": emb.astype(np.float32).tobytes(), "dim": emb.shape[1],
                "blocks": np.asarray(blocks, np.int64).tobytes(), "providers": self.providers}

    def __call__(self, rows: dict) -> dict:
        fields = list(Chunk.__dataclass_fields__)
        out = [self.predict_chunk(Chunk(*(rows[f][i].item() if hasattr(rows[f][i], "item") else rows[f][i]
                                          for f in fields))) for i in range(len(rows["recording"]))]
        return {key: np.array([o[key] for o in out], dtype=object) for key in out[0]} if out else {}


@dataclass
class RecordingResult:
    """What the driver keeps of one recording: its windows' probabilities (and embeddings), its block lengths, or
    its problem."""

    probs: np.ndarray
    embeddings: np.ndarray | None
    blocks: list[int]
    problem: str


def predict_on_ray(chunks: Sequence[Chunk], spec: ModelSpec, plan: WindowPlan, batch: int, sample_rate: int,
                   outputs: tuple[str, ...], *, concurrency: int | None = None, num_cpus: float | None = None,
                   num_gpus: float | None = None, predictor: type = ChunkPredictor,
                   providers: set | None = None) -> Iterator[tuple[int, dict]]:
    """(chunk position, result) of every chunk, in chunk order, through a Ray Data pipeline."""
    ray = import_ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # recordings are written in input order
    # the command draws its own progress bar: Ray Data's bars, start banner and statistics would only interleave
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    rows = [asdict(c) for c in chunks]
    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 2_000))
    ds = ds.map_batches(predictor, fn_constructor_args=(spec, plan, batch, sample_rate, outputs), batch_size=1,
                        compute=ray.data.ActorPoolStrategy(
                            size=concurrency or max(1, int(ray.available_resources().get("CPU", 1)))),
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
    current, parts, embeddings, blocks, problem = None, [], [], [], ""

    def finished():
        probs = np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)
        emb = np.concatenate(embeddings) if embeddings and embeddings[0].shape[1] else None
        return current, RecordingResult(probs, emb, blocks, problem)

    for position, row in results:
        chunk = chunks[position]
        if current is not None and chunk.recording != current:
            yield finished()
            parts, embeddings, blocks, problem = [], [], [], ""
        current = chunk.recording
        problem = problem or str(row["problem"])
        parts.append(np.frombuffer(row["probs"], np.float32).reshape(-1, n_classes))
        embeddings.append(np.frombuffer(row["embeddings"], np.float32).reshape(len(parts[-1]), int(row["dim"])))
        blocks += np.frombuffer(row["blocks"], np.int64).tolist()
        if not chunk.whole and chunk.first_window == 0:  # read without resampling: the blocks of iter_blocks
            full, rest = divmod(chunk.frames, chunk.block_size)
            blocks += [chunk.block_size] * full + ([rest] if rest else [])
    if current is not None:
        yield finished()


class RayRecording:
    """A recording as Ray predicted it: its block lengths (the audio a local run reads) and its windows'
    predictions, cut into batches of the recording's windows."""

    def __init__(self, source, index: int, run: "_RayRun"):
        self.source, self.index, self._run = source, index, run
        self._clock = AudioClock(run.sample_rate)

    @property
    def audio_seconds(self) -> float:
        return self._clock.seconds

    def predictions(self, on_audio: Callable[[float], None] | None = None) -> Iterator[Prediction]:
        result = self._run.result(self.index)
        if result.problem:
            raise AudioError(self.source.path, result.problem)
        self._clock.on_audio = on_audio
        for n in result.blocks:
            self._clock.add(n)
        windows = list(plan_windows(sum(result.blocks), self._run.plan))
        if len(windows) != len(result.probs):
            raise RayEngineError(f"internal: {self.source.name}: the chunks gave {len(result.probs)} windows of "
                                 f"{len(windows)}")
        step = self._run.batch
        for i in range(0, len(windows), step):
            yield Prediction(windows[i:i + step], result.probs[i:i + step],
                             None if result.embeddings is None else result.embeddings[i:i + step])


class _RayRun:
    """The driver side: the recordings' results, taken in input order from the pipeline."""

    def __init__(self, results: Iterator[tuple[int, RecordingResult]], plan: WindowPlan, batch: int,
                 sample_rate: int):
        self._results, self.plan, self.batch, self.sample_rate = results, plan, batch, sample_rate

    def result(self, index: int) -> RecordingResult:
        for got, result in self._results:  # earlier ones: recordings the consumer left unread
            if got == index:
                return result
            if got > index:
                break
        raise RayEngineError(f"internal: no result for input {index}")


#: Windows per chunk and the actors' class (module settings, so a test can cut small chunks or kill an actor).
PREDICTOR = ChunkPredictor


def predict_with_ray(sources: Sequence, model, plan: WindowPlan, batch: int, outputs: tuple[str, ...],
                     spec: ModelSpec, scale: Scale, *,
                     log: Callable[[str], None] | None = None) -> Iterator[RayRecording]:
    """``predict.predict`` on a Ray Data pipeline (``scale``: the cluster, actors and their resources)."""
    for source in sources:  # a recording of no chunk (none here) would stall the replay
        if source.path is None:
            raise RayEngineError("--engine ray reads files (not stdin or --watch); use the local engine")
    connect(scale.address)
    chunks = plan_chunks(sources, plan, batch, model.sample_rate, DEFAULT_CHUNK_WINDOWS)
    providers: set[str] = set()
    run = _RayRun(recording_results(chunks, predict_on_ray(
        chunks, spec, plan, batch, model.sample_rate, outputs, concurrency=scale.concurrency, num_cpus=scale.cpus,
        num_gpus=scale.gpus, predictor=PREDICTOR, providers=providers), len(model.classes)),
        plan, batch, model.sample_rate)
    for index, source in enumerate(sources):
        yield RayRecording(source, index, run)
    (log or logger.info)(f"Ray actors' providers: {', '.join(sorted(providers)) or 'none'}")
