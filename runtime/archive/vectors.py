"""The usearch vector index of an archive: the one place that imports usearch.

``import usearch`` before ``import onnxruntime`` in one process segfaults (usearch 2.26.2-2.26.6), so this module
imports onnxruntime first; everything in vocalprobe that needs usearch goes through ``usearch_index()``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vocalprobe.runtime.core.errors import VocalprobeError

#: perch-hoplite's default index settings (``get_default_usearch_config``), except the metric (see ``METRIC``).
DTYPE = "float16"
EXPANSION_ADD = 256
EXPANSION_SEARCH = 128
#: Cosine: an exact copy of a window always scores 1, whatever the loudness-driven length of its embedding;
#: an inner product ranks long vectors first. A valid usearch metric name for hoplite's reader too.
METRIC = "Cos"


class ArchiveDependencyError(VocalprobeError):
    """The archive extra (usearch) is not installed."""


def usearch_index():
    """The ``usearch.index`` module, imported after onnxruntime (the import order that does not crash)."""
    from vocalprobe.runtime.core.imports import import_onnxruntime

    import_onnxruntime()  # must precede usearch: see the module docstring

    try:
        from usearch import index
    except ModuleNotFoundError as exc:
        raise ArchiveDependencyError("the embedding archive needs usearch: pip install 'vocalprobe[archive]'") from exc
    return index


def usearch_config(embedding_dim: int) -> dict[str, Any]:
    """The ``usearch_config`` metadata value hoplite's ``SQLiteUSearchDB.create`` reads."""
    return {"embedding_dim": int(embedding_dim), "dtype": DTYPE, "metric_name": METRIC,
            "expansion_add": EXPANSION_ADD, "expansion_search": EXPANSION_SEARCH}


def new_index(config: dict[str, Any]):
    index = usearch_index()
    return index.Index(ndim=int(config["embedding_dim"]), metric=getattr(index.MetricKind, config["metric_name"]),
                       dtype=index.ScalarKind.F16, expansion_add=int(config["expansion_add"]),
                       expansion_search=int(config["expansion_search"]))


def load_index(path: Path, config: dict[str, Any]):
    """The index at ``path`` loaded into memory (to add to it), or a new empty one when there is no file yet."""
    if not path.exists():
        return new_index(config)
    loaded = usearch_index().Index.restore(str(path), view=False)
    if loaded is None or loaded.ndim != int(config["embedding_dim"]):
        raise VocalprobeError(f"{path}: not a usearch index of {config['embedding_dim']}-dim vectors")
    return loaded


def view_index(path: Path, config: dict[str, Any]):
    """A read-only memory-mapped view (searching never loads the whole index); an empty index without a file."""
    if not path.exists():
        return new_index(config)
    return usearch_index().Index.restore(str(path), view=True)


def add_vectors(index, keys: np.ndarray, vectors: np.ndarray) -> None:
    """``index.add`` on one thread, where Ctrl-C stays a ``KeyboardInterrupt``: usearch checks for signals while it
    inserts and turns a pending one into ``RuntimeError: Operation has been terminated`` (a traceback and exit 1
    instead of the interrupted run's exit 130)."""
    try:
        index.add(keys, vectors, threads=1)
    except RuntimeError as exc:
        if "terminated" in str(exc):
            raise KeyboardInterrupt from exc
        raise


def save_index(index, path: Path, record: Callable[[Path], None] | None = None) -> None:
    """Write atomically: a reader (or a killed run) only ever sees a complete index file. ``record(tmp)`` runs on
    the complete file before it takes the index's place (the archive notes its checksum there)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    index.save(str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    if record is not None:
        record(tmp)
    os.replace(tmp, path)


def keys_sha256(keys: np.ndarray) -> str:
    """A digest of a set of window ids (sorted, little-endian int64): what an index holds, or should."""
    return hashlib.sha256(np.sort(np.asarray(keys, dtype=np.int64)).astype("<i8").tobytes()).hexdigest()


def index_keys(index) -> np.ndarray:
    return np.asarray(index.keys, dtype=np.int64) if index.size else np.zeros(0, np.int64)


def get_vectors(index, keys: np.ndarray) -> np.ndarray:
    """The stored vectors ``[len(keys), dim]`` as float32 (exactly the float16 values stored)."""
    if len(keys) == 0:
        return np.zeros((0, index.ndim), np.float32)
    got = index.get(np.asarray(keys, dtype=np.int64), dtype=np.float32)
    return np.stack(got) if isinstance(got, (tuple, list)) else np.asarray(got, np.float32).reshape(len(keys), -1)
