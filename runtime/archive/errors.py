"""The archive's errors, apart from the modules that raise them so that both the store and its index notes can."""

from __future__ import annotations

from vocalprobe.runtime.core.errors import VocalprobeError


class ArchiveError(VocalprobeError):
    """A database folder that cannot be used as asked (another graph, other windows, not an archive)."""


class ArchiveIndexError(ArchiveError):
    """SQLite's windows and the vector index disagree (a stopped run, a damaged or foreign index)."""
