"""Atomic file writes: a reader (or a killed job) never sees a half-written output."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterator

logger = logging.getLogger(__name__)

#: The temporary files of ``atomic_open`` (``.NAME.`` + mkstemp's 8 characters + ``.tmp``) and of writers that name
#: theirs by process id (``.NAME.PID.tmp``: the usearch index).
_TEMP_NAME = re.compile(r"^\..+\.([a-z0-9_]{8}|[0-9]+)\.tmp$")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions open() would give
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_save_npy(path: str | Path, array) -> None:
    """``np.save`` without pickle (``allow_pickle=False``: caches must not carry code), atomically."""
    import numpy as np

    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def replace_folder(tmp: str | Path, out_dir: str | Path) -> None:
    """Put the complete folder ``tmp`` at ``out_dir``; an existing ``out_dir`` is moved aside first and removed only
    once the new one is in place (a converted checkpoint never appears half written)."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if out_dir.exists():
        import shutil

        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)


def remove_stale_temps(folder: str | Path, keep_below: str) -> list[Path]:
    """Delete the temporary files a killed run left in ``folder`` and its subfolders; call it holding the folder's
    lock, when no write of this folder can be under way. A subfolder holding a file named ``keep_below`` (another
    run's lock) is that run's to clean, and is left alone."""
    removed: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (Path(root) / d / keep_below).exists()]
        for name in files:
            if _TEMP_NAME.match(name):
                path = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) a killed run left in {folder}")
    return removed
