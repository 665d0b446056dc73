"""``--workers N``: every core of one machine for ``stream`` (and ``embed``), with outputs identical to one process.

The unit of work is a batch of windows, not a file. One reader thread walks the inputs in order, decodes and
resamples each as a one-process run does (``source.blocks``), cuts the same windows into the same batches
(``window_batches``) and hands them to N worker processes (spawn), each holding its own onnxruntime session with
``threads`` intra-op threads. ``stream.run_sources`` itself runs unchanged in the main process on the wrapped sources
and model of a ``Pipeline``: its ``predict`` takes back the probabilities computed ahead for that very batch, so
events, tables and journal are written as in one process, with the same rows in the same order. Batches rather than
files keep all workers busy on a single long recording too, and the next file is read while one is written out.

Memory is bounded: at most ``inflight`` batches are between the reader and the consumer (inflight x batch x window
samples, held twice: once sent, once kept to check), plus ``prefetch_blocks`` decoded blocks. A plain
``multiprocessing`` queue of numpy arrays carries them (``benchmarks/bench_scale.py`` measures it against the model).
Workers ignore SIGINT: on Ctrl-C the main process stops the reader and the workers (a worker whose parent has gone
exits by itself), and the journal holds every file finished before, so a re-run resumes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.engine.windows import Window, Windower, WindowPlan, WindowSpecError

log = logging.getLogger(__name__)

#: How long a blocked queue read waits before checking that the other side is still alive.
_POLL_S = 0.5


class WorkerError(VocalprobeError):
    """Worker processes that cannot start, or died or failed while predicting."""


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: the same files and options the main process loaded (picklable)."""

    paths: tuple[str, ...]
    weights: str | None = None
    provider: str = "auto"
    threads: int | None = None

    def load(self):
        from vocalprobe.runtime.engine.ensemble import load_models

        return load_models(list(self.paths), weights=self.weights, provider=self.provider, threads=self.threads)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores shared out, at least one."""
    return max(1, available_cores() // max(1, workers))


def check_model_fits(model, plan: WindowPlan, batch: int) -> None:
    """The checks ``stream.window_probabilities`` makes, before anything is read."""
    if batch < 1:
        raise WindowSpecError(f"--batch must be >= 1, got {batch}")
    if model.max_chunk_samples is not None and plan.window > model.max_chunk_samples:
        raise WindowSpecError(f"a window of {plan.window} samples is longer than this graph accepts "
                              f"(max_chunk_samples = {model.max_chunk_samples}); use a shorter --window")


def window_batches(blocks: Iterable[np.ndarray], plan: WindowPlan,
                   batch: int) -> Iterator[tuple[list[Window], np.ndarray]]:
    """The batches ``stream.window_probabilities`` gives the model, in order: ``batch`` full windows at a time, and a
    shorter final window (policy ``shorter``) alone, after the full ones. Equal batches give equal probabilities."""
    windower = Windower(plan)
    pending: list[tuple[Window, np.ndarray]] = []

    def flush() -> tuple[list[Window], np.ndarray]:
        out = ([w for w, _ in pending], np.stack([s for _, s in pending]))
        pending.clear()
        return out

    for block in blocks:
        for win, samples in windower.push(block):
            pending.append((win, samples))
            if len(pending) == batch:
                yield flush()
    for win, samples in windower.finish():
        if len(samples) == plan.window:
            pending.append((win, samples))
        else:
            if pending:
                yield flush()
            yield [win], samples[None, :]
    if pending:
        yield flush()


# -- the worker processes ---------------------------------------------------------------------------------------------

def _predict_clip(model, samples: np.ndarray) -> np.ndarray:
    from vocalprobe.runtime.field.validate import predict_clip

    return predict_clip(model, samples)


def _predict_with_embedding(model, batch: np.ndarray) -> np.ndarray:
    """``[probabilities | embedding]`` of a batch, from one session run (what ``embed`` archives)."""
    probs, embedding = model.predict_with_embedding(batch)
    return np.concatenate([probs, embedding], axis=1)


_OPERATIONS = {"predict": lambda model, x: model.predict(x), "clip": _predict_clip, "embed": _predict_with_embedding}


def _worker_main(spec: ModelSpec, tasks, results, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        model = spec.load()
    except Exception as exc:
        results.put(("failed", os.getpid(), f"{exc}"))
        return
    results.put(("ready", os.getpid(), list(model.providers)))
    while True:
        try:
            item = tasks.get(timeout=_POLL_S)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the main process is gone (killed): nobody wants the results
                return
            continue
        if item is None:
            return
        seq, operation, array = item
        try:
            results.put(("done", seq, _OPERATIONS[operation](model, array)))
        except Exception as exc:
            results.put(("error", seq, f"{type(exc).__name__}: {exc}"))


class WorkerPool:
    """N spawned processes, each with its own model; ``submit`` a batch, ``result`` takes its answer back."""

    def __init__(self, spec: ModelSpec, workers: int):
        if workers < 1:
            raise WorkerError(f"--workers must be >= 1, got {workers}")
        context = mp.get_context("spawn")  # fork would copy onnxruntime's threads and locks
        self._tasks = context.Queue()
        self._results = context.Queue()
        self._done: dict[int, np.ndarray] = {}
        self._next_seq = 0
        self.processes = [context.Process(target=_worker_main, args=(spec, self._tasks, self._results, os.getpid()),
                                          name=f"vocalprobe-worker-{i}", daemon=True) for i in range(workers)]
        for process in self.processes:
            process.start()
        try:
            self.providers = self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> list[str]:
        providers: set[str] = set()
        for _ in self.processes:
            kind, _pid, detail = self._get()
            if kind == "failed":
                raise WorkerError(f"a worker could not load the model: {detail}")
            providers.update(detail)
        return sorted(providers)

    def _get(self) -> tuple:
        while True:
            try:
                return self._results.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    raise WorkerError(f"worker {dead[0].name} died (exit code {dead[0].exitcode}); outputs of "
                                      "finished files are kept, re-run to resume") from None

    def submit(self, array: np.ndarray, operation: str = "predict") -> int:
        seq = self._next_seq
        self._next_seq += 1
        self._tasks.put((seq, operation, array))
        return seq

    def result(self, seq: int) -> np.ndarray:
        while seq not in self._done:
            kind, got, value = self._get()
            if kind == "error":
                raise WorkerError(f"a worker failed: {value}")
            self._done[got] = value
        return self._done.pop(seq)

    def close(self) -> None:
        for _ in self.processes:
            self._tasks.put(None)
        for process in self.processes:
            process.join(timeout=5)
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        for q in (self._tasks, self._results):
            q.cancel_join_thread()  # items nobody will read must not hold up the exit
            q.close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- stream through the pool ------------------------------------------------------------------------------------------

class _Stopped(Exception):
    """The consumer has gone: the reader stops."""


class Pipeline:
    """Reads ``sources`` ahead in a thread, in order, and keeps the pool busy with their window batches.

    ``stream.run_sources`` is then given ``pipeline.sources`` and ``pipeline.model``, and runs exactly as in one
    process: each wrapped source yields the blocks the reader decoded, and the model's ``predict`` returns the
    probabilities a worker computed for that very batch (checked equal to the batch the reader sent). Files keep
    their order, so the next file is read and predicted while the current one is still being written out.
    """

    def __init__(self, pool: WorkerPool, model, config, sources: Sequence, *, inflight: int | None = None,
                 prefetch_blocks: int = 16, operation: str = "predict"):
        check_model_fits(model, config.plan, config.batch)
        self.pool, self.config, self.operation = pool, config, operation
        self.model = PipelinedModel(model, self)
        self.sources = [_AheadSource(source, i, self) for i, source in enumerate(sources)]
        self._blocks: queue.Queue = queue.Queue(maxsize=prefetch_blocks)
        self._submitted: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(inflight or 2 * len(pool.processes) + 2)
        self._stop = threading.Event()
        self.current = -1  # the source run_sources is reading
        self._reader = threading.Thread(target=self._read, args=([s.source for s in self.sources], model.sample_rate),
                                        name="vocalprobe-reader", daemon=True)
        self._reader.start()

    # -- the reader thread
    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                return self._blocks.put(item, timeout=_POLL_S)
            except queue.Full:
                continue
        raise _Stopped

    def _read(self, sources: list, rate: int) -> None:
        plan, batch = self.config.plan, self.config.batch
        try:
            for index, source in enumerate(sources):
                def feed(blocks=source.blocks(rate), index=index) -> Iterator[np.ndarray]:
                    for block in blocks:
                        self._put((index, "block", block))
                        yield block

                try:
                    for _windows, inputs in window_batches(feed(), plan, batch):
                        while not self._slots.acquire(timeout=_POLL_S):
                            if self._stop.is_set():
                                raise _Stopped
                        self._submitted.put((index, self.pool.submit(inputs, self.operation), inputs))
                except AudioError as exc:
                    self._put((index, "error", exc))
                    continue
                self._put((index, "end", None))
        except _Stopped:
            return
        except BaseException as exc:  # raised in the main thread at the consumer's next read
            try:
                self._put((len(sources), "fatal", exc))
            except _Stopped:
                return

    # -- the consumer (main thread)
    def _get(self, q: queue.Queue, idle=None) -> tuple:
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if idle is not None:
                    idle()
                if not self._reader.is_alive() and q.empty():
                    raise WorkerError("internal: the reader stopped before the inputs were all read") from None

    def _drop_earlier(self) -> None:
        """Free the batches of sources the consumer left out without reading them (``embed`` skips recordings the
        archive holds): the reader waits for their slots."""
        while True:
            with self._submitted.mutex:  # only this thread takes items: a peek, then a get
                if not self._submitted.queue or self._submitted.queue[0][0] >= self.current:
                    return
            _index, seq, _inputs = self._submitted.get()
            try:
                self.pool.result(seq)
            finally:
                self._slots.release()

    def blocks_of(self, index: int) -> Iterator[np.ndarray]:
        self.current = index
        self._drop_earlier()
        while True:
            got, kind, value = self._get(self._blocks, idle=self._drop_earlier)
            if kind == "fatal":
                raise value
            if got < index:  # a source run_sources left out before reading it
                continue
            if got > index:
                raise WorkerError(f"internal: input {index} was read twice")
            if kind == "block":
                yield value
            elif kind == "end":
                return
            else:
                raise value  # the file's AudioError: reported and skipped like in one process

    def predict(self, batch: np.ndarray) -> np.ndarray:
        while True:
            index, seq, inputs = self._get(self._submitted)
            try:
                probs = self.pool.result(seq)
            finally:
                self._slots.release()
            if index == self.current:
                break  # earlier indices: batches of a source that failed or was left out part-way
        if inputs.shape != batch.shape or not np.array_equal(inputs, batch):
            raise WorkerError("internal: the batch predicted ahead differs from the one asked for")
        return probs

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _AheadSource:
    """A source as ``run_sources`` sees it, whose blocks the pipeline's reader has already decoded."""

    def __init__(self, source, index: int, pipeline: Pipeline):
        self.source, self._index, self._pipeline = source, index, pipeline

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def blocks(self, target_rate: int) -> Iterator[np.ndarray]:
        return self._pipeline.blocks_of(self._index)


class PipelinedModel:
    """The model as ``run_sources`` sees it: metadata of the loaded model, predictions from the pool."""

    def __init__(self, model, pipeline: Pipeline):
        self.inner, self._pipeline = model, pipeline

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._pipeline.predict(batch)

    def predict_with_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, embeddings) of a pipeline of operation ``embed``. Before the first input is read (the
        archive's probe of the embedding size) the model in this process answers."""
        if self._pipeline.current < 0:
            return self.inner.predict_with_embedding(batch)
        both = self._pipeline.predict(batch)
        k = len(self.inner.classes)
        return both[:, :k], both[:, k:]


def run_with_workers(sources: Sequence, model, config, outputs, state=None, *, spec: ModelSpec, workers: int,
                     **run_options):
    """``stream.run_sources`` with the model work spread over ``workers`` processes: the same outputs and summary.
    ``spec`` loads the model ``model`` is (``ModelSpec(paths, weights, provider, threads)``)."""
    from vocalprobe.runtime.field.stream import run_sources

    with WorkerPool(spec, workers) as pool, Pipeline(pool, model, config, list(sources)) as pipeline:
        say = run_options.get("log") or log.info
        say(f"{workers} workers, providers in use: {', '.join(pool.providers)}")
        return run_sources(pipeline.sources, pipeline.model, config, outputs, state, **run_options)


def embed_with_workers(sources: Sequence, model, plan: WindowPlan, archive, *, spec: ModelSpec, workers: int,
                       batch: int = 8, deployment: str | None = None, **embed_options):
    """``archive.embed.embed_sources`` with the model work spread over ``workers`` processes: the same archive.
    Recordings the archive already holds are not read ahead nor sent to the pool (the local loop lists them), so
    a resumed run costs only what is left."""
    from vocalprobe.runtime.archive.embed import embed_sources, in_input_order, not_archived
    from vocalprobe.runtime.field.stream import DetectConfig

    config = DetectConfig(plan, batch=batch)
    sources = list(sources)
    pending = not_archived(archive, sources, deployment)
    with WorkerPool(spec, workers) as pool, Pipeline(pool, model, config, pending, operation="embed") as pipeline:
        log.info("%d workers, providers in use: %s", workers, ", ".join(pool.providers))
        return embed_sources(in_input_order(sources, pending, pipeline.sources), pipeline.model, plan, archive, batch=batch, deployment=deployment,
                             **embed_options)
