"""``--workers N``: every core of one machine for ``stream`` and ``embed`` (and ``validate``), with outputs identical
to one process.

The unit of work is a batch of windows, not a file. One reader thread walks the inputs in order, decodes and
resamples each as one process does (``source.blocks``), cuts the same batches (``batches.window_batches``, once) and
hands them to N worker processes (spawn), each holding its own onnxruntime session with ``threads`` intra-op
threads. The consumer (``stream``, ``embed``) takes each recording's predictions back in order, with the windows the
reader cut: batches rather than files keep all workers busy on a single long recording too, and the next file is
read while one is written out.

Memory is bounded: at most ``inflight`` batches are between the reader and the consumer (inflight x batch x window
samples). A plain ``multiprocessing`` queue of numpy arrays carries them (``benchmarks/bench_scale.py`` measures it
against the model). Workers ignore SIGINT: on Ctrl-C the main process stops the reader and the workers, and the
journal holds every file finished before, so a re-run resumes. A worker whose parent has gone (SIGKILL, SIGTERM)
exits at once, whatever it is doing: a queue's pipe is held at both ends by every process that has the queue, so
a worker blocked writing an answer nobody reads (or exiting, which waits for that write) would otherwise live on,
holding the caller's stdout open (see ``_end_with_parent``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

from vocalprobe.runtime.core.errors import AudioError, VocalprobeError
from vocalprobe.runtime.engine.batches import AudioClock, Prediction, window_batches
from vocalprobe.runtime.engine.scale import ModelSpec
from vocalprobe.runtime.engine.windows import WindowPlan

logger = logging.getLogger(__name__)

#: How long a blocked queue read waits before checking that the other side is still alive.
_POLL_S = 0.5


class WorkerError(VocalprobeError):
    """Worker processes that cannot start, or died or failed while predicting."""


# -- the worker processes ---------------------------------------------------------------------------------------------

def _predict_clip(model, samples: np.ndarray) -> np.ndarray:
    from vocalprobe.runtime.engine.long_clips import predict_clip

    return predict_clip(model, samples)


#: What a worker does with an array: a batch's probabilities, (probabilities, embeddings), or a whole clip's.
_OPERATIONS = {"predict": lambda model, x: model.predict(x), "embed": lambda model, x: model.predict_with_embedding(x),
               "clip": _predict_clip}


#: prctl(2) option: the signal the kernel sends a process when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent_pid: int, by_thread: bool) -> None:
    """End this worker when ``parent_pid`` ends, by any signal: the kernel's parent-death signal on Linux (only where
    the parent's main thread started the worker: the kernel signals when that thread ends, not the process), and a
    thread that polls ``getppid`` everywhere. Both end with ``os._exit``: a plain exit would wait for queued
    answers to be written into a pipe nobody reads."""
    if by_thread and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the poll below still ends the worker
    if os.getppid() != parent_pid:  # gone before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="vocalprobe-parent-watch", daemon=True).start()


def _worker_main(spec: ModelSpec, tasks, results, parent_pid: int, parent_is_main_thread: bool = False) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _end_with_parent(parent_pid, parent_is_main_thread)
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
        args = (spec, self._tasks, self._results, os.getpid(), threading.current_thread() is threading.main_thread())
        self.processes = [context.Process(target=_worker_main, args=args, name=f"vocalprobe-worker-{i}", daemon=True)
                          for i in range(workers)]
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

    def result(self, seq: int):
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


# -- predict through the pool -----------------------------------------------------------------------------------------

class _Stopped(Exception):
    """The consumer has gone: the reader stops."""


class _Reader:
    """Reads ``sources`` ahead in a thread, in order, cuts their batches and keeps the pool busy with them.

    It tells the consumer, in one ordered queue, ``(index, kind, value)``: ``audio`` (samples read), ``batch``
    (the windows and the pool's ticket), ``error`` (the source's ``AudioError``), ``end``; or ``fatal``.
    """

    def __init__(self, pool: WorkerPool, sources: Sequence, rate: int, plan: WindowPlan, batch: int,
                 operation: str, inflight: int | None = None):
        self.pool = pool
        self._messages: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(inflight or 2 * len(pool.processes) + 2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(sources, rate, plan, batch, operation),
                                        name="vocalprobe-reader", daemon=True)
        self._thread.start()

    # -- the reader thread
    def _read(self, sources: Sequence, rate: int, plan: WindowPlan, batch: int, operation: str) -> None:
        try:
            for index, source in enumerate(sources):
                def counted(blocks=source.blocks(rate), index=index) -> Iterator[np.ndarray]:
                    for block in blocks:
                        self._messages.put((index, "audio", len(block)))
                        yield block

                try:
                    for windows, samples in window_batches(counted(), plan, batch):
                        while not self._slots.acquire(timeout=_POLL_S):
                            if self._stop.is_set():
                                raise _Stopped
                        self._messages.put((index, "batch", (windows, self.pool.submit(samples, operation))))
                except AudioError as exc:
                    self._messages.put((index, "error", exc))
                    continue
                self._messages.put((index, "end", None))
        except _Stopped:
            return
        except BaseException as exc:  # raised in the main thread at the consumer's next read
            self._messages.put((len(sources), "fatal", exc))

    # -- the consumer (main thread)
    def messages(self, index: int) -> Iterator[tuple[str, object]]:
        """The messages of source ``index`` up to its ``end`` (or ``error``); a batch's is ``(windows, result)``."""
        while True:
            try:
                got, kind, value = self._messages.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._messages.empty():
                    raise WorkerError("internal: the reader stopped before the inputs were all read") from None
                continue
            if kind == "fatal":
                raise value
            if got != index:
                raise WorkerError(f"internal: a message of input {got} while reading input {index}")
            if kind == "batch":
                windows, seq = value
                try:
                    value = (windows, self.pool.result(seq))
                finally:
                    self._slots.release()
            yield kind, value
            if kind in ("end", "error"):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class PooledRecording:
    """A recording as the pool predicts it: the reader's block lengths and the workers' predictions, in order."""

    def __init__(self, source, index: int, reader: _Reader, rate: int, outputs: tuple[str, ...]):
        self.source, self.index, self._reader, self._outputs = source, index, reader, outputs
        self._clock = AudioClock(rate)
        self._messages = reader.messages(index)  # one pass over this recording's messages, shared with ``drain``

    @property
    def audio_seconds(self) -> float:
        return self._clock.seconds

    def predictions(self, on_audio: Callable[[float], None] | None = None) -> Iterator[Prediction]:
        self._clock.on_audio = on_audio
        for kind, value in self._messages:
            if kind == "audio":
                self._clock.add(value)
            elif kind == "batch":
                windows, result = value
                yield Prediction(windows, *(result if "embedding" in self._outputs else (result, None)))
            elif kind == "error":
                raise value

    def drain(self) -> None:
        """Take back what the consumer left unread (the pool's slots are freed as results are taken)."""
        for _ in self._messages:
            pass


def predict_with_workers(sources: Sequence, model, plan: WindowPlan, batch: int, outputs: tuple[str, ...],
                         spec: ModelSpec, workers: int, *,
                         log: Callable[[str], None] | None = None) -> Iterator[PooledRecording]:
    """``predict.predict`` on ``workers`` processes, each loading ``spec``: the same predictions, in order."""
    operation = "embed" if "embedding" in outputs else "predict"
    with WorkerPool(spec, workers) as pool:
        (log or logger.info)(f"{workers} workers, providers in use: {', '.join(pool.providers)}")
        reader = _Reader(pool, sources, model.sample_rate, plan, batch, operation)
        try:
            for index, source in enumerate(sources):
                recording = PooledRecording(source, index, reader, model.sample_rate, outputs)
                yield recording
                recording.drain()
        finally:
            reader.close()
