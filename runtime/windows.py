"""Analysis windows over a recording, as sample indices: a pure function, no audio.

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

from vocalprobe.runtime.audio import seconds_to_samples
from vocalprobe.runtime.errors import VocalprobeError

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
