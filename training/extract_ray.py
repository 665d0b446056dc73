"""``study --engine ray``: feature extraction as Ray tasks, one per (backbone, dataset, shard) unit.

Each task runs ``extract_features(shard=i/n)`` into the study's shared feature cache, so the cache holds exactly
what a local run would compute (each unit writes only its own index: ``extract.unit_files``), and the study then
trains its probes as today, reading the features from the cache. A task asks for one GPU when the cluster has GPUs
(``CUDA_VISIBLE_DEVICES`` gives it its own), else for one CPU. A task whose process dies (a preempted node, an OOM
kill) is retried by Ray and resumes from the cache shards it had written, so no clip is stored twice.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.shards import Shard

log = logging.getLogger(__name__)

#: Ray retries a task whose worker died this many times before the study fails.
MAX_RETRIES = 3


class RayExtractionError(VocalprobeError):
    """A unit of feature extraction that failed on the Ray cluster."""


@dataclass(frozen=True)
class ExtractionUnit:
    """One Ray task's work: shard ``shard`` of one dataset's clips through one backbone (picklable)."""

    backbone: str  # as the study config gives it (the cache key holds this name)
    manifest: str
    shard: str  # i/n
    cache_dir: str
    layers: tuple[int, ...] | None = None
    chunk_seconds: float = 20.0
    batch_size: int = 8
    dtype: str = "float32"
    shard_size: int = 256  # clips per cache file (how much a killed task loses)
    workdir: str = "."  # the driver's: relative names in the config mean the same on every node (a shared disk)


def extract_unit(unit: ExtractionUnit, device: str = "cpu", threads: int = 1,
                 on_shard: Callable[[int], None] | None = None) -> dict:
    """Run one unit here (inside a Ray task): its clips into the shared cache; a few counts back."""
    import torch

    from vocalprobe.training.extract import extract_features

    torch.set_num_threads(threads)
    before = os.getcwd()
    os.chdir(unit.workdir)
    try:
        fs = extract_features(unit.manifest, unit.backbone, layers=unit.layers, device=device,
                              cache_dir=unit.cache_dir, chunk_seconds=unit.chunk_seconds,
                              batch_size=unit.batch_size, dtype=unit.dtype, progress=False,
                              shard_size=unit.shard_size,
                              shard=Shard.parse(unit.shard), on_shard=on_shard)
    finally:
        os.chdir(before)
    return {"backbone": unit.backbone, "manifest": unit.manifest, "shard": unit.shard, "clips": len(fs.rows),
            "failed": len(fs.failed), "computed": fs.stats["computed"], "device": device}


def _task(unit: ExtractionUnit, task: Callable) -> dict:
    import ray

    gpus = ray.get_gpu_ids()
    return task(unit, device="cuda" if gpus else "cpu", threads=max(1, int(os.environ.get("OMP_NUM_THREADS", 1))))


def shards_per_pair(ray) -> int:
    """Units per (dataset, backbone): one per GPU of the cluster, else one per CPU."""
    resources = ray.cluster_resources()
    return max(1, int(resources.get("GPU", 0)) or int(resources.get("CPU", 1)))


def make_units(pairs: Sequence[tuple[str, str | Path]], n_shards: int, *, cache_dir: str | Path,
               layers: Sequence[int] | None, chunk_seconds: float, batch_size: int, dtype: str,
               shard_size: int = 256) -> list[ExtractionUnit]:
    """The units of (backbone, manifest) pairs, each cut into ``n_shards`` shards."""
    workdir = os.getcwd()
    return [ExtractionUnit(backbone, str(manifest), str(Shard(i, n_shards)), str(cache_dir),
                           None if layers is None else tuple(layers), chunk_seconds, batch_size, dtype, shard_size,
                           workdir)
            for backbone, manifest in pairs for i in range(n_shards)]


def extract_on_ray(units: Sequence[ExtractionUnit], *, task: Callable = extract_unit,
                   max_retries: int = MAX_RETRIES) -> list[dict]:
    """Run every unit as a Ray task (Ray already connected: ``ray_engine.connect``); their counts, in unit order."""
    from vocalprobe.runtime.engine.ray_engine import import_ray

    ray = import_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    remote = ray.remote(_task).options(max_retries=max_retries, **resources)
    refs = [remote.remote(unit, task) for unit in units]
    try:
        results = ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise RayExtractionError(f"feature extraction on Ray failed: {str(cause).strip().splitlines()[-1]}") from exc
    except ray.exceptions.WorkerCrashedError as exc:
        raise RayExtractionError(f"a feature-extraction task died {max_retries + 1} times (out of memory?); "
                                 "re-run the study: finished cache shards are kept") from exc
    for result in results:
        log.info("%s shard %s on %s: %d clips (%d computed), %d failed", Path(result["backbone"]).name,
                 result["shard"], result["device"], result["clips"], result["computed"], result["failed"])
    return results
