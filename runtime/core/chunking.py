"""How long clips are cut into chunks: one pure function shared by training and the runtime (no torch).

Training extracts a clip longer than the chunk limit chunk by chunk and merges the per-chunk frame statistics; the
deployed graph gets the same chunks from ``vocalprobe.runtime.engine.long_clips``. Both must cut at the same samples, so
both call ``chunk_bounds``.
"""

from __future__ import annotations

__all__ = ["chunk_bounds"]


def chunk_bounds(n_samples: int, chunk_samples: int) -> list[tuple[int, int]]:
    """Cut ``n_samples`` into ``n = ceil(n_samples / chunk_samples)`` near-equal chunks ``[(start, end), ...]``.

    Boundary i is ``round(i * n_samples / n)`` (halves rounded up, in exact integer arithmetic), so chunk lengths
    differ by at most one sample and none is shorter than ``chunk_samples / 2``.
    """
    if n_samples <= 0:
        raise ValueError(f"cannot chunk {n_samples} samples")
    if chunk_samples <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_samples}")
    n = -(-n_samples // chunk_samples)
    edges = [(2 * i * n_samples + n) // (2 * n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))
