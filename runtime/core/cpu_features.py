"""CPU features that change what an int8 graph computes.

onnxruntime multiplies uint8 activations by int8 weights with ``vpmaddubsw`` on x86 CPUs without VNNI (AVX2, and
AVX-512 before VNNI): it adds two products into a saturating int16, so 8-bit weight codes can overflow there and
the graph answers differently than on a VNNI CPU or an ARM board. vocalprobe writes codes that cannot overflow
since the ``int8_weights`` metadata key exists (``export.int8_weights``); older int8 graphs need re-exporting before
they run on such a CPU.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

__all__ = ["int8_pairs_saturate"]

_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@lru_cache(maxsize=1)
def int8_pairs_saturate(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True where this CPU is x86 without VNNI, as far as /proc/cpuinfo tells (False where it cannot tell)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    try:
        flags = _cpu_flags(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:
        return False
    return bool(flags) and not flags & _VNNI_FLAGS
