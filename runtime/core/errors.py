"""Typed errors meant for users: each says what was wrong and, where it can, what to do about it."""

from __future__ import annotations

from pathlib import Path


class VocalprobeError(Exception):
    """Base of every error the CLI reports as one line instead of a traceback."""


class AudioError(VocalprobeError):
    """A file could not be turned into usable audio. Carries the path so batch jobs can report it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class AudioFileNotFound(AudioError):
    pass


class CorruptAudioError(AudioError):
    """Unreadable, corrupt or truncated file."""


class EmptyAudioError(AudioError):
    pass


class InvalidSamplesError(AudioError):
    """NaN or infinite samples."""


class SegmentOutOfRange(AudioError):
    pass


class ManifestError(VocalprobeError):
    pass


class DatasetError(VocalprobeError):
    """A dataset source folder does not look like what its preparer expects."""
