"""The metadata export writes into every graph, so the runtime needs nothing but the .onnx file.

The keys, their types and what the runtime requires are the graph contract's (``vocalprobe.runtime.core.graph_contract
.METADATA_KEYS``); ``build_metadata`` writes them and checks the result with the contract's own parser, so export can
never write a graph the runtime refuses. Reading and writing the map of a file is ``export.onnx_io``'s job.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from vocalprobe.export.onnx_io import OnnxFileError, get_metadata, read_metadata, set_metadata
from vocalprobe.runtime.core.graph_contract import VERSION, GraphMetadata

__all__ = ["build_metadata", "set_metadata", "get_metadata", "read_metadata", "MetadataError"]

#: ``read_metadata``'s error (a missing or unreadable file); invalid values raise ``GraphContractError``.
MetadataError = OnnxFileError


def build_metadata(*, classes: list[str] | tuple[str, ...], sample_rate: int, sample_duration: float,
                   max_chunk_samples: int | None, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The metadata map: the contract's keys first; ``extra`` values that are not strings are written as JSON."""
    meta = GraphMetadata(classes=tuple(str(c) for c in classes), sample_rate=int(sample_rate),
                         sample_duration=float(sample_duration), max_chunk_samples=max_chunk_samples).to_map()
    for key, value in (extra or {}).items():
        if value is None:
            continue
        meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    from vocalprobe import __version__

    meta.setdefault(VERSION, __version__)
    GraphMetadata.from_map(meta, source="the metadata to write")  # extras may not break the contract either
    return meta
