"""Typed errors meant for users: each says what was wrong and, where it can, what to do about it."""

from __future__ import annotations

import errno
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


class UnreadableAudioError(AudioError):
    """The OS refused to open the file (permissions, I/O error): the audio itself may be fine."""


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


def os_reason(exc: OSError) -> str:
    """What the OS said, in words a user acts on ("permission denied", not libsndfile's "System error.")."""
    words = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
             errno.ENOENT: "not found", errno.EISDIR: "is a folder", errno.ENOTDIR: "a parent is not a folder",
             errno.ELOOP: "too many levels of symbolic links (a symlink loop)", errno.EIO: "input/output error"}
    return words.get(exc.errno, exc.strerror or type(exc).__name__)
