"""Fixtures of the export tests.

- ``exported``: function (name, layer) -> (pipeline, fp32 graph path) for the ``export_cases.CASES`` entries, each
  exported once per session and shared by every export test file.
"""

from __future__ import annotations

import pytest
from export_cases import export_case


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoints, tiny_stable_checkpoint):
    import torch

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("exported")
    cache = {}

    def get(name: str, layer: int):
        if (name, layer) not in cache:
            checkpoint = tiny_stable_checkpoint if name == "wav2vec2-stable" else tiny_checkpoints[name]
            cache[(name, layer)] = export_case(checkpoint, name, layer, folder)
        return cache[(name, layer)]

    return get
