"""benchmarks/gpu_check.py, the script a GPU session runs, on the CPU at tiny sizes: CI has no GPU, so this is what
keeps its imports and calls in step with the code (its .sh predecessor rotted unnoticed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # ~30 s: a study through the CLI in its own process; still part of the default run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    work = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--workdir",
                           str(work)], cwd=REPO, capture_output=True, text=True, timeout=600)
    return done, work


def test_quick_cpu_run_succeeds(quick_run):
    done, work = quick_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" not in done.stdout
    assert (work / "studies" / "gpu-check" / "report.md").is_file()


@pytest.mark.parametrize("header, figure", [
    ("== device cpu:", r"== device cpu: \d+ cores"),
    ("== study feature extraction on cpu", r"\n  float32: \d+x real time \(4 clips, 4 layers"),
    ("== study feature extraction on cpu", r"\n  bfloat16: skipped"),
    ("== an fp32 graph", r"\n  cpu: providers in use: CPUExecutionProvider: \d+x real time"),
    ("== batched probes on cpu", r"batched: +[\d.]+ ms per probe-step wall .* paper's 819 probes in +[\d.]+ h wall"),
    ("== batched probes on cpu", r"\n  speed-up: [\d.]+x wall"),
    ("== batched probes on cpu", r"\n  best layer: one at a time \d, batched \d"),
    ("== study on cpu through the CLI", r"\n  [\d.]+ s wall .*report\.md written .*best layer on Val: L\d"),
    ("== stream with 2 Ray GPU actors: skipped", r"== stream with 2 Ray GPU actors: skipped \(0 GPU"),
    ("== gpu_check done", r"== gpu_check done in \d+ s \(a \d+ s, b \d+ s, c \d+ s, d \d+ s, e \d+ s"),
])
def test_each_section_prints_its_header_and_figures(quick_run, header, figure):
    out = quick_run[0].stdout
    assert header in out, out[-3000:]
    section = out[out.index(header):]
    assert re.search(figure, section), section[:3000]


def test_cuda_without_a_gpu_stops_with_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for torch, here or on a GPU machine
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--workdir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run this on a GPU machine"]
    assert "==" not in done.stdout
