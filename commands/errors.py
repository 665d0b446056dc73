"""What every command shares: user errors become one red line and exit code 1, never a traceback.

``vocalprobe.runtime.core.errors`` is imported only once an error is raised, so importing the CLI loads no runtime.
"""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable, TypeVar

import typer

F = TypeVar("F", bound=Callable)

#: Libraries of the training extra: a command missing one says how to install it.
_TRAINING_EXTRA = {"torch", "transformers", "sklearn", "matplotlib", "onnx", "onnxscript", "safetensors"}


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def os_error_line(exc: OSError) -> str:
    """One line for an OS refusal: the file it concerns and what the OS said (permission denied, disk full ...)."""
    from vocalprobe.runtime.core.errors import os_reason

    reason = os_reason(exc)
    if exc.errno == errno.ENOSPC:
        reason += "; free some space and re-run (finished outputs are kept)"
    if exc.filename is None:
        return reason
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{target}: {reason}"


def friendly_errors(func: F) -> F:
    """Turn the errors a user can fix (bad files, bad options, missing extras, a full disk, a folder they may not
    write) into a one-line message. Anything else is a bug and keeps its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            typer.secho("interrupted; finished outputs are kept, re-run the command to resume", err=True)
            sys.exit(130)
        except Exception as exc:
            from vocalprobe.runtime.core.errors import VocalprobeError

            if isinstance(exc, VocalprobeError):
                raise fail(str(exc)) from None
            if isinstance(exc, ModuleNotFoundError):
                if exc.name and exc.name.split(".")[0] in _TRAINING_EXTRA:
                    raise fail(f"this command needs `{exc.name}`, which is not installed. Install the training "
                               "extra: pip install torch==2.13.0 && pip install 'vocalprobe[train]'") from None
                raise
            if isinstance(exc, OSError):
                raise fail(os_error_line(exc)) from None
            raise

    return wrapper  # type: ignore[return-value]
