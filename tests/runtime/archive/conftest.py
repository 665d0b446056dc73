"""Fixtures of the archive tests.

- ``graph``: the band-energy test graph (``runtime_graphs.build_band_graph``), built once per session.
- ``tone_folder``: function (root, n_files=2, seconds=4.0) -> folder of 16 kHz recordings in two deployments, each
  with a "low" and a "high" tone at known times (``TONES``).
- ``run_cli``: run the vocalprobe CLI in-process (typer's CliRunner) and return the result.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from runtime_graphs import build_band_graph, tone_track
from typer.testing import CliRunner

#: (start_s, end_s, frequency, class) of the tones every recording of ``tone_folder`` holds.
TONES = ((0.5, 1.0, 600.0, "low"), (2.0, 2.5, 4200.0, "high"))


@pytest.fixture(scope="session")
def graph(tmp_path_factory):
    return build_band_graph(tmp_path_factory.mktemp("graphs") / "band.onnx", sample_duration=0.5)


def make_tone_folder(root, n_files: int = 2, seconds: float = 4.0) -> Path:
    root = Path(root)
    for i in range(n_files):
        deployment = f"REC{i % 2 + 1:02d}"
        samples = tone_track([(s, e, f) for s, e, f, _ in TONES], seconds, 16_000, seed=i)
        path = root / deployment / f"2021050{i + 1}_040000.WAV"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), samples, 16_000, subtype="FLOAT")
    return root


@pytest.fixture(scope="session")
def tone_folder():
    return make_tone_folder


@pytest.fixture
def run_cli():
    from vocalprobe.cli import app

    def run(args):
        return CliRunner().invoke(app, [str(a) for a in args])

    return run
