"""What every CLI command shares: user errors become one red line and exit code 1, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from vocalprobe.runtime.core.errors import VocalprobeError

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def friendly_errors(func: F) -> F:
    """Turn the errors a user can fix (bad files, bad options, missing extras) into a one-line message."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except VocalprobeError as exc:
            raise fail(str(exc)) from None
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in {"torch", "transformers", "sklearn", "matplotlib", "onnx",
                                                        "onnxscript", "safetensors"}:
                raise fail(f"this command needs `{exc.name}`, which is not installed. Install the training extra: "
                           "pip install torch==2.13.0 && pip install 'vocalprobe[train]'") from None
            raise
        except KeyboardInterrupt:
            typer.secho("interrupted; finished outputs are kept, re-run the command to resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
