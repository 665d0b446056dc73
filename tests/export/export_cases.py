"""The export tests' shared subjects: tiny checkpoints of every family cut at a few layers, with a random probe."""

from __future__ import annotations

import torch

from vocalprobe.export.metadata import build_metadata
from vocalprobe.export.onnx_export import export_pipeline
from vocalprobe.training.backbones import load_backbone
from vocalprobe.training.deployable import ProbePipeline
from vocalprobe.training.probe import MLPProbe

SR = 16_000
CHUNK = 2 * SR  # a small chunk limit, so the long-clip path is cheap
CLASSES = ("bark", "chirp", "hoot", "trill")
# (checkpoint, layer): layer 0 and the last layer (2), all three families, and a stable-layer-norm model
CASES = [("hubert", 0), ("hubert", 2), ("wav2vec2", 1), ("wavlm", 2), ("wav2vec2-stable", 1)]


def random_probe(n_features: int, seed: int) -> MLPProbe:
    """A probe with non-trivial weights and z-score statistics (an untrained probe outputs near-uniform values)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = MLPProbe(n_features, len(CLASSES), (16, 8))
        for p in probe.parameters():
            p.data.normal_(0, 0.5)
        probe.set_normalization(torch.randn(n_features) * 0.1, torch.rand(n_features) + 0.05)
    return probe.eval()


def export_case(checkpoint, name: str, layer: int, folder):
    """(pipeline, fp32 graph path) of one CASES entry."""
    backbone = load_backbone(checkpoint)
    pipeline = ProbePipeline(backbone.model, random_probe(2 * backbone.dim, seed=layer), layer)
    meta = build_metadata(classes=CLASSES, sample_rate=SR, sample_duration=1.5, max_chunk_samples=CHUNK,
                          extra={"backbone": name, "layer": str(layer), "test_uar": "0.5"})
    return pipeline, export_pipeline(pipeline, folder / f"{name}_L{layer}.onnx", metadata=meta)
