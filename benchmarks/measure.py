"""What the benchmark scripts measure the same way: throughput over a time budget, and bytes written to storage."""

from __future__ import annotations

import time
from pathlib import Path


def rate(run, audio_seconds: float, budget: float) -> float:
    """Audio seconds processed per wall second, over at least ``budget`` seconds (after one warm-up run)."""
    run()
    runs, start = 0, time.perf_counter()
    while True:
        run()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return runs * audio_seconds / elapsed


def write_bytes() -> int | None:
    """Bytes this process has caused to be written to storage (``/proc/self/io``), None where that is not available."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
