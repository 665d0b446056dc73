"""One declarative entry per backbone family: how its probe pipeline is exported and how closely it must match.

Every family is exported the same way (``torch.onnx.export(dynamo=True)`` of ``training.deployable.ProbePipeline``);
the entries say what differs: the opset, the parity tolerances and how the backbone is truncated after layer L.
Measured here (torch 2.13, transformers 5.24): the TorchScript exporter cannot trace the symbolic repeat padding
(``torch.sym_max`` on a traced size), while the dynamo exporter gives a truly dynamic batch and time axis for all
families, so dynamo is the one used. Whisper's log-mel front end exports with a dynamic time axis too; its STFT is a
Conv1d with a fixed DFT basis, because ``torch.stft`` becomes ONNX's STFT op, whose onnxruntime kernel is far less
precise (training/whisper/encoder.py).

Whisper's bars are relative: trained Whisper encoders carry residual channels far larger than the rest (base cut
after block 5: the embedding's largest element is 114x its median), so the embedding's scale is set by them and an
absolute bar says nothing about the other channels' precision, or fails on float32 rounding of the large ones.
Figures: docs/whisper.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.graph_contract import INPUT_AXES, WAVEFORM

__all__ = ["ExportFamily", "FAMILIES", "family_of", "INPUT_NAME", "DYNAMIC_AXES"]

#: The graph contract's input name and named dynamic axes, the same for every family.
INPUT_NAME = WAVEFORM
DYNAMIC_AXES = INPUT_AXES


class UnsupportedFamilyError(VocalprobeError):
    """A backbone whose model_type has no export entry."""


@dataclass(frozen=True)
class ExportFamily:
    """fp32's parity bars. A quantized graph's bar is its mode's (``export.quant_modes``)."""

    name: str  # transformers model_type
    opset: int  # ONNX opset of the exported graph
    atol: float  # max |Δprobability| torch vs onnxruntime, fp32 (the bar)
    atol_embedding: float  # max |Δembedding|, fp32 (features are O(1) after peak normalisation)
    truncation: str  # what "truncated after layer L" keeps, for the docs and the metadata
    relative: bool = False  # the bars are relative: max |Δ| / max |reference| of each output (export.parity)


_BASE_TRUNCATION = ("feature encoder, feature projection, positional conv, encoder input LayerNorm, "
                    "transformer layers 1..L; stable-layer-norm checkpoints drop the final encoder LayerNorm")

_TOLERANCES = dict(atol=1e-4, atol_embedding=1e-3)

FAMILIES: dict[str, ExportFamily] = {
    "hubert": ExportFamily("hubert", opset=18, truncation=_BASE_TRUNCATION, **_TOLERANCES),
    "wav2vec2": ExportFamily("wav2vec2", opset=18, truncation=_BASE_TRUNCATION, **_TOLERANCES),
    # WavLM's relative position bias is computed by layer 1 and reused by later layers: kept whenever L >= 1
    "wavlm": ExportFamily("wavlm", opset=18, truncation=_BASE_TRUNCATION + "; the relative position bias comes from "
                          "layer 1", **_TOLERANCES),
    # the positional table is sliced to the clip's own frames; clips longer than 30 s go in chunks (max_chunk_samples)
    "whisper": ExportFamily("whisper", opset=18, atol=1e-4, atol_embedding=1e-4, relative=True,
                            truncation="log-mel front end (WhisperFeatureExtractor semantics on the clip's own "
                            "frames), 2 convolutions, positional table sliced to the clip's frames, blocks 1..L; "
                            "the final encoder LayerNorm only when L is the last layer"),
}


def family_of(model_type: str) -> ExportFamily:
    try:
        return FAMILIES[str(model_type)]
    except KeyError:
        raise UnsupportedFamilyError(f"no ONNX export entry for model_type {model_type!r}; supported: "
                                     f"{', '.join(FAMILIES)}") from None
