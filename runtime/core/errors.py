"""Typed errors meant for users: each says what was wrong and, where it can, what to do about it."""

from __future__ import annotations

import errno
from pathlib import Path


class VocalprobeError(Exception):
    """Base of every error the CLI reports as one line instead of a traceback."""


def printable_name(name: str) -> str:
    """A file name as text any table, journal or terminal can hold: unchanged when it is UTF-8; the bytes of a name
    that is not (a latin-1 SD card: ``os.fsdecode`` keeps them as lone surrogates, which no UTF-8 writer accepts)
    written as ``\\xe9`` escapes, as ``ls -b`` shows them."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class AudioError(VocalprobeError):
    """A file could not be turned into usable audio. Carries the path so batch jobs can report it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = printable_name(str(path))
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
