"""Imports with a known hazard, in the one order that works.

usearch 2.26.2-2.26.6 (the vector index of perch-hoplite's databases and of vocalprobe's archive) and onnxruntime
cannot be loaded in that order into one process: ``import usearch`` then ``import onnxruntime`` dies with a
segmentation fault, while onnxruntime first, then usearch, works. ``import_onnxruntime`` is how vocalprobe imports
onnxruntime: when usearch got there first it raises one clear error instead of letting the process crash; code that
needs usearch imports onnxruntime first (``runtime.archive.vectors.usearch_index``).
"""

from __future__ import annotations

import sys
from types import ModuleType

from vocalprobe.runtime.core.errors import VocalprobeError

__all__ = ["ImportOrderError", "import_onnxruntime", "usearch_loaded_first"]

#: The first usearch release that crashes when onnxruntime is loaded after it; later ones are assumed to.
_FIRST_BAD_USEARCH = (2, 26, 2)


class ImportOrderError(VocalprobeError):
    """onnxruntime asked for in a process where usearch was loaded first."""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def usearch_loaded_first() -> str | None:
    """The usearch version when its compiled module is loaded and onnxruntime is not (the crashing order)."""
    if "onnxruntime" in sys.modules or "usearch.compiled" not in sys.modules:
        return None
    version = str(getattr(sys.modules.get("usearch"), "__version__", "0"))
    return version if _version(version) >= _FIRST_BAD_USEARCH else None


def import_onnxruntime() -> ModuleType:
    """``import onnxruntime``, refused (rather than a segfault) after usearch >= 2.26.2."""
    version = usearch_loaded_first()
    if version is not None:
        raise ImportOrderError(f"usearch {version} was imported before onnxruntime, and loading onnxruntime now would "
                               "crash the process; import onnxruntime (or vocalprobe's runtime) before usearch or "
                               "perch_hoplite's database, or use usearch 2.26.1")
    import onnxruntime

    return onnxruntime
