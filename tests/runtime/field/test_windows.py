"""Window plans (runtime/engine/windows.py): every final-window policy, and the Windower cutting any block size into
exactly the planned windows."""

from __future__ import annotations

import numpy as np
import pytest

from vocalprobe.runtime.engine.windows import Window, Windower, WindowPlan, WindowSpecError, plan_windows


def test_window_plans():
    plan = WindowPlan(window=10, hop=10)
    assert [(w.start, w.end) for w in plan_windows(35, plan)] == [(0, 10), (10, 20), (20, 30), (30, 35)]
    assert [(w.start, w.end) for w in plan_windows(30, plan)] == [(0, 10), (10, 20), (20, 30)]
    drop = WindowPlan(10, 10, "drop")
    assert [(w.start, w.end) for w in plan_windows(35, drop)] == [(0, 10), (10, 20), (20, 30)]
    assert list(plan_windows(7, drop)) == []
    assert list(plan_windows(7, plan)) == [Window(0, 0, 7)]
    overlap = WindowPlan(10, 4)
    assert [(w.start, w.end) for w in plan_windows(23, overlap)] == [(0, 10), (4, 14), (8, 18), (12, 22), (16, 23)]
    gaps = WindowPlan(4, 10)
    assert [(w.start, w.end) for w in plan_windows(23, gaps)] == [(0, 4), (10, 14), (20, 23)]
    assert [(w.start, w.end) for w in plan_windows(25, gaps)] == [(0, 4), (10, 14), (20, 24)]
    assert WindowPlan.from_seconds(1.0, 0.25, 16_000) == WindowPlan(16_000, 4_000, "pad")
    with pytest.raises(WindowSpecError, match="final-window"):
        WindowPlan(10, 10, "wrap")
    with pytest.raises(WindowSpecError):
        WindowPlan.from_seconds(0.0, None, 16_000)


@pytest.mark.parametrize("plan", [WindowPlan(1000, 1000), WindowPlan(1000, 300), WindowPlan(300, 1000),
                                  WindowPlan(1000, 250, "shorter"), WindowPlan(1000, 1000, "drop")])
def test_windower_matches_plan_for_any_block_size(plan):
    x = np.arange(5_321, dtype=np.float32)
    expected = list(plan_windows(len(x), plan))
    for block in (1, 77, 1000, 4096, 10_000):
        windower = Windower(plan)
        got = []
        for i in range(0, len(x), block):
            got.extend(windower.push(x[i:i + block]))
            assert len(windower._buffer) <= plan.window + block  # bounded by window + block, not the stream
        got.extend(windower.finish())
        assert [w for w, _ in got] == expected
        for window, samples in got:
            audio = x[window.start:window.end]
            assert np.array_equal(samples[:len(audio)], audio)
            assert len(samples) == (len(audio) if plan.final_window == "shorter" else plan.window)
            assert not samples[len(audio):].any()  # zero padding
