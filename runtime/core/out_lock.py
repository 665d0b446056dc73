"""One run per output folder: an OS lock (``flock``) on a file in the folder, held for the whole run.

Two runs writing one folder interleave tables and journal records without an error; the lock makes the second one
fail at once, naming the first. The kernel drops the lock when its holder dies (even by SIGKILL), so a stale lock
file never blocks a later run; the temporary files a killed holder left are deleted by the next one to lock. A
holder that stops on an exception (Ctrl-C) deletes its own as it lets go: an interrupt can land between a temporary
file's creation and the ``try`` that would remove it.
POSIX only (``fcntl``), which is what recorders and servers run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from vocalprobe.runtime.core.atomic import remove_stale_temps
from vocalprobe.runtime.core.errors import VocalprobeError

LOCK_NAME = ".vocalprobe.lock"


class OutputBusyError(VocalprobeError):
    """Another process is writing into the same output folder."""


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
        return (f"pid {holder['pid']} on {holder['host']}, started {started}"
                + (f": {holder['command']}" if holder.get("command") else ""))
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between taking the lock and writing its name
        return "a process that has not yet written its name"


class OutputLock:
    """``with OutputLock(out_dir):`` holds ``out_dir`` for this process; a second holder gets ``OutputBusyError``.

    The lock file is left in place on release: deleting it would let two processes lock two different files.
    """

    def __init__(self, out_dir: str | Path, command: str | None = None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "OutputLock":
        import fcntl

        if self._fd is not None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"{self.out_dir} is in use by another vocalprobe run ({_holder_text(self.path)}); "
                                  "wait for it to finish, or give another --out folder") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        self._fd = fd
        remove_stale_temps(self.out_dir, LOCK_NAME)  # only the holder writes here: no temporary file is live
        return self

    def release(self) -> None:
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            remove_stale_temps(self.out_dir, LOCK_NAME)  # still the holder, with its writes over: none is live
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)  # releases the lock too, should the cleanup fail

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
