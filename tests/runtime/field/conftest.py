"""Fixtures of the field-runtime tests.

- ``graph``: path of the band-energy test graph (``runtime_graphs.build_band_graph``: three tone classes, the
  vocalprobe graph contract, no torch), built once per session.
"""

from __future__ import annotations

import pytest
from runtime_graphs import build_band_graph


@pytest.fixture(scope="session")
def graph(tmp_path_factory):
    return build_band_graph(tmp_path_factory.mktemp("graphs") / "band.onnx")
