"""How big a job runs: one frozen ``Scale`` (engine, local workers, shard, Ray's cluster and actors), and the
``ModelSpec`` another process loads the same model from. ``predict`` takes both; nothing else differs between one
process, ``--workers N``, ``--shard i/n`` and ``--engine ray``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.shards import Shard, parse_shard

ENGINES = ("local", "ray")
T = TypeVar("T")


class ScaleError(VocalprobeError):
    """Scale-out options that cannot go together, or cannot serve these inputs."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores shared out, at least one."""
    return max(1, available_cores() // max(1, workers))


@dataclass(frozen=True)
class Scale:
    """``engine``: local or ray; ``workers``: local processes; ``shard``: ``i/n`` of the inputs; ``address``,
    ``cpus``, ``gpus``, ``concurrency``: Ray's cluster, resources per actor and number of actors."""

    engine: str = "local"
    workers: int = 1
    shard: str | None = None
    address: str | None = None
    cpus: float | None = None
    gpus: float | None = None
    concurrency: int | None = None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ScaleError(f"--engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.workers < 1:
            raise ScaleError(f"--workers must be >= 1, got {self.workers}")
        if self.workers > 1 and self.engine == "ray":
            raise ScaleError("--workers is for the local engine; with --engine ray use --concurrency")
        parse_shard(self.shard)  # a bad i/n is refused before anything is loaded

    @property
    def one_process(self) -> bool:
        return self.engine == "local" and self.workers == 1

    @property
    def part(self) -> Shard | None:
        return parse_shard(self.shard)

    def require_files(self, have_files: bool) -> None:
        """stdin and --watch are read in one process, whole."""
        if not have_files and (self.shard is not None or not self.one_process):
            raise ScaleError("--shard, --workers and --engine ray split files and folders; stdin and --watch run "
                             "in one process")

    def select(self, files: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """The files of this shard (all of them without ``--shard``), in input order."""
        part = self.part
        return list(files) if part is None else list(part.select(files, key=key))

    def threads(self, threads: int | None) -> int | None:
        """Intra-op threads of each model session: ``threads`` if given, else the cores shared out among local
        workers, or ``cpus`` per Ray actor."""
        if threads is not None:
            return threads
        if self.engine == "ray":
            return max(1, int(self.cpus or 1))
        return default_threads(self.workers) if self.workers > 1 else None


ONE_PROCESS = Scale()


@dataclass(frozen=True)
class ModelSpec:
    """How another process (a worker, a Ray actor) loads the model this one loaded: files and options (picklable)."""

    paths: tuple[str, ...]
    weights: str | None = None
    provider: str = "auto"
    threads: int | None = None

    def load(self):
        from vocalprobe.runtime.engine.ensemble import load_models

        return load_models(list(self.paths), weights=self.weights, provider=self.provider, threads=self.threads)
