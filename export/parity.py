"""Parity: does the exported graph, run by onnxruntime, compute what the PyTorch pipeline computes?

For every parity clip (real audio of several lengths) and batch size the graph's outputs are compared with the
PyTorch reference, and the maximum absolute difference of every output is recorded:

* clips up to the chunk limit: ``b`` clips of equal length (the clip and ``b - 1`` circular shifts of it, so every
  row differs) in ONE onnxruntime call, against the pipeline run on each clip alone (batching must not change a
  clip's result);
* clips longer than the chunk limit: ``vocalprobe.runtime.engine.long_clips.predict_long`` (onnxruntime, chunk by chunk
  with carried statistics) against the study's definition (``training.deployable.study_features``: float64 merge of
  per-chunk statistics) followed by the probe.

All cases run before anything is raised, so the error lists every failing output, e.g.
``- probabilities: max diff = 3.1e-03 > 1e-04 (7 s, batch 3)``.

``relative`` (a family's choice, ``export.families``): each difference is divided by the largest |value| of the
reference output in that case, so the bar follows the output's scale (Whisper's embedding is dominated by one
outlier channel).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import EMBEDDING, PROBABILITIES
from vocalprobe.runtime.core.resample import MODEL_SAMPLE_RATE

__all__ = ["ParityError", "ParityCase", "ParityReport", "check_parity"]


class ParityError(VocalprobeError):
    """The exported graph does not reproduce the PyTorch pipeline within tolerance."""


@dataclass(frozen=True)
class ParityCase:
    output: str  # the graph output compared: PROBABILITIES or EMBEDDING
    samples: int  # clip length
    batch: int
    chunked: bool  # fed chunk by chunk (longer than the chunk limit)
    max_diff: float  # max |Δ|, or max |Δ| / max |reference| when ``relative``
    tolerance: float | None  # None: recorded, not checked
    relative: bool = False

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.max_diff <= self.tolerance

    def describe(self) -> str:
        where = f"{self.samples / MODEL_SAMPLE_RATE:g} s, batch {self.batch}" + (", chunked" if self.chunked else "")
        limit = "" if self.tolerance is None else (f" {'<=' if self.passed else '>'} {self.tolerance:.3g}")
        what = "max diff / peak" if self.relative else "max diff"
        return f"- {self.output}: {what} = {self.max_diff:.2e}{limit} ({where})"


@dataclass
class ParityReport:
    model: str
    label: str  # "fp32", "int8", ...
    cases: list[ParityCase] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def max_diff(self, output: str = PROBABILITIES) -> float:
        return max((c.max_diff for c in self.cases if c.output == output), default=float("nan"))

    def to_dict(self) -> dict:
        return {"model": self.model, "label": self.label, "passed": self.passed,
                "cases": [asdict(c) | {"passed": c.passed} for c in self.cases]}

    def summary(self) -> str:
        return "\n".join([f"parity {self.label} ({Path(self.model).name}): "
                          f"{'passed' if self.passed else 'FAILED'}"] + [c.describe() for c in self.cases])


def _shifted_batch(clip: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` rows: the clip and circular shifts of it by i/batch of its length."""
    n = clip.shape[0]
    return np.stack([np.roll(clip, (i * n) // batch) for i in range(batch)]).astype(np.float32)


def check_parity(pipeline, onnx_path: str | Path, clips: Sequence[np.ndarray], *, chunk_samples: int,
                 atol: float, atol_embedding: float | None = None, batch_sizes: Sequence[int] = (1, 3),
                 label: str = "fp32", raise_on_failure: bool = True, relative: bool = False) -> ParityReport:
    """Compare ``onnx_path`` (onnxruntime) with ``pipeline`` (PyTorch) on ``clips``; raise ``ParityError`` on failure.

    ``atol``: tolerance of max |Δprobability|; ``atol_embedding``: of max |Δembedding| (None: recorded only);
    ``relative``: both measured as max |Δ| / max |reference|.
    """
    import torch

    from vocalprobe.runtime.engine.long_clips import predict_long
    from vocalprobe.runtime.engine.onnx_model import OnnxModel
    from vocalprobe.training.deployable import study_features

    def diff(ref: np.ndarray, got: np.ndarray) -> float:
        worst = float(np.max(np.abs(ref - got)))
        return worst / max(float(np.max(np.abs(ref))), np.finfo(np.float32).tiny) if relative else worst

    model = OnnxModel(onnx_path, provider="cpu")
    report = ParityReport(str(onnx_path), label)
    tolerances = {PROBABILITIES: atol, EMBEDDING: atol_embedding}
    for clip in clips:
        clip = np.ascontiguousarray(clip, dtype=np.float32)
        n = clip.shape[0]
        if n > chunk_samples:
            with torch.no_grad():
                features = study_features(pipeline.features, clip, chunk_samples)[0]  # (2D,)
                reference_p = torch.softmax(pipeline.probe(torch.from_numpy(features)[None]), -1)[0].numpy()
            got_p, got_e = predict_long(model, clip, chunk_samples)
            pairs = {PROBABILITIES: (reference_p, got_p), EMBEDDING: (features, got_e)}
            for output, (ref, got) in pairs.items():
                report.cases.append(ParityCase(output, n, 1, True, diff(ref, got), tolerances[output], relative))
            continue
        for batch in batch_sizes:
            rows = _shifted_batch(clip, batch)
            with torch.no_grad():
                refs = [pipeline.predict(torch.from_numpy(row[None])) for row in rows]
            reference_p = np.concatenate([r.probabilities.numpy() for r in refs])
            reference_e = np.concatenate([r.embedding.numpy() for r in refs])
            got_p, got_e = model.predict_with_embedding(rows)
            for output, ref, got in ((PROBABILITIES, reference_p, got_p), (EMBEDDING, reference_e, got_e)):
                if ref.shape != got.shape:
                    raise ParityError(f"{onnx_path}: {output} has shape {got.shape}, PyTorch gives {ref.shape}")
                report.cases.append(ParityCase(output, n, batch, False, diff(ref, got), tolerances[output],
                                               relative))
    if raise_on_failure and not report.passed:
        failing = [c.describe() for c in report.cases if not c.passed]
        raise ParityError(f"{onnx_path}: the {label} graph does not match PyTorch:\n" + "\n".join(failing))
    return report
