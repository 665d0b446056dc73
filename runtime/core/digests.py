"""sha256 digests the project keys caches and fingerprints with: of JSON-able settings, and of files (read in
1 MiB blocks, so a large checkpoint or model never sits in memory whole)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def json_sha256(obj: Any) -> str:
    """Hex sha256 of ``obj`` as canonical JSON (sorted keys; values JSON cannot hold, such as paths, as ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def update_with_file(digest, path: str | Path) -> None:
    """Feed the bytes of the file at ``path`` into ``digest`` (a hashlib object)."""
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()
