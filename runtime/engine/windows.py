"""Analysis windows over a recording: the plan as sample indices (a pure function, no audio), and the
``Windower`` that cuts a stream of audio blocks into exactly those windows.

Full windows start every ``hop`` samples while they fit in the recording. What remains after them is handled by the
``final_window`` policy:

- ``pad`` (default): one last window starting at the next hop, zero-padded to the window length, so every window the
  model sees has the same shape (onnxruntime plans once); its reported end is the end of the audio.
- ``drop``: the remainder is not analysed (a recording shorter than one window gives no window).
- ``shorter``: the remainder is analysed as a shorter window (the graph repeat-pads clips under 5000 samples).

Only the first incomplete window is kept: with ``hop < window`` the later ones would be subsets of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from vocalprobe.runtime.core.audio import seconds_to_samples
from vocalprobe.runtime.core.errors import VocalprobeError

FINAL_WINDOW_POLICIES = ("pad", "drop", "shorter")
DEFAULT_FINAL_WINDOW = "pad"


class WindowSpecError(VocalprobeError):
    """Window, hop or final-window options that cannot work."""


@dataclass(frozen=True)
class WindowPlan:
    window: int  # samples
    hop: int  # samples
    final_window: str = DEFAULT_FINAL_WINDOW

    def __post_init__(self):
        if self.window < 1 or self.hop < 1:
            raise WindowSpecError(f"window and hop must be at least one sample, got window={self.window}, "
                                  f"hop={self.hop}")
        if self.final_window not in FINAL_WINDOW_POLICIES:
            raise WindowSpecError(f"--final-window must be one of {', '.join(FINAL_WINDOW_POLICIES)}, "
                                  f"got {self.final_window!r}")

    @classmethod
    def from_seconds(cls, window_s: float, hop_s: float | None, sample_rate: int,
                     final_window: str = DEFAULT_FINAL_WINDOW) -> "WindowPlan":
        """``hop_s=None`` means hop = window (no overlap)."""
        if not window_s > 0 or (hop_s is not None and not hop_s > 0):
            raise WindowSpecError(f"--window and --hop must be positive seconds, got window={window_s}, hop={hop_s}")
        window = seconds_to_samples(window_s, sample_rate)
        hop = window if hop_s is None else seconds_to_samples(hop_s, sample_rate)
        return cls(window, hop, final_window)


@dataclass(frozen=True)
class Window:
    index: int
    start: int  # first sample
    end: int  # one past the last sample of audio in the window (< start + window for a final partial window)

    def seconds(self, sample_rate: int) -> tuple[float, float]:
        return self.start / sample_rate, self.end / sample_rate


def full_window_count(total_samples: int, plan: WindowPlan) -> int:
    return 0 if total_samples < plan.window else (total_samples - plan.window) // plan.hop + 1


def final_window(total_samples: int, plan: WindowPlan) -> Window | None:
    """The incomplete window after the full ones, or None (policy ``drop``, or nothing left over)."""
    n_full = full_window_count(total_samples, plan)
    start = n_full * plan.hop
    if plan.final_window == "drop" or start >= total_samples:
        return None
    return Window(n_full, start, total_samples)


def plan_windows(total_samples: int, plan: WindowPlan) -> Iterator[Window]:
    """Every window of a recording of ``total_samples`` samples, in order."""
    if total_samples < 0:
        raise WindowSpecError(f"a recording cannot have {total_samples} samples")
    for k in range(full_window_count(total_samples, plan)):
        yield Window(k, k * plan.hop, k * plan.hop + plan.window)
    last = final_window(total_samples, plan)
    if last is not None:
        yield last


class Windower:
    """Cut a stream of blocks into the windows ``plan_windows`` defines, holding at most ``window + block`` samples."""

    def __init__(self, plan: WindowPlan):
        self.plan = plan
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self._next = 0  # start of the next window
        self._index = 0
        self.total = 0  # samples pushed so far

    def push(self, block: np.ndarray) -> Iterator[tuple[Window, np.ndarray]]:
        window, hop = self.plan.window, self.plan.hop
        self._buffer = np.concatenate([self._buffer, np.asarray(block, dtype=np.float32)])
        self.total += len(block)
        while self._next + window <= self.total:
            offset = self._next - self._buffer_start
            yield Window(self._index, self._next, self._next + window), self._buffer[offset:offset + window].copy()
            self._next += hop
            self._index += 1
        drop = min(self._next, self.total) - self._buffer_start
        self._buffer = self._buffer[drop:]
        self._buffer_start += drop

    def finish(self) -> Iterator[tuple[Window, np.ndarray]]:
        """The final incomplete window, per the plan's ``final_window`` policy (``final_window`` above)."""
        last = final_window(self.total, self.plan)
        if last is None:
            return
        tail = self._buffer[last.start - self._buffer_start:]
        if self.plan.final_window == "pad":
            tail = np.concatenate([tail, np.zeros(self.plan.window - len(tail), dtype=np.float32)])
        yield last, tail.copy()
