"""Reading a Whisper source into numpy tensors by source name: a CTranslate2 folder (faster-whisper) or OpenAI's
``.pt`` (``{"dims": ..., "model_state_dict": ...}``, loaded with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from vocalprobe.training.whisper.config import check_ct2_scalars
from vocalprobe.training.whisper.ct2_file import WhisperConversionError, read_ct2_model

SUPPORTED_CT2_REVISIONS = (3,)
_OPENAI_DIMS = ("n_mels", "n_audio_head", "n_text_head", "n_audio_layer", "n_text_layer")


@dataclass
class WhisperSource:
    path: Path  # the file that holds the weights (model.bin or the .pt)
    layout: str  # "ctranslate2" or "openai"
    tensors: dict[str, np.ndarray]  # by source name
    encoder_heads: int
    decoder_heads: int
    folder: Path | None = None  # the CTranslate2 folder (what ctranslate2 loads), else None


def read_source(path: str | Path) -> WhisperSource:
    """A CTranslate2 folder (or its ``model.bin``), or an OpenAI ``.pt``/``.pth`` checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
        if not path.is_file():
            raise WhisperConversionError(f"{path.parent}: no model.bin; expected a faster-whisper / CTranslate2 "
                                         "model folder or an OpenAI whisper .pt checkpoint")
    if not path.is_file():
        raise WhisperConversionError(f"{path}: not found")
    if path.suffix in (".pt", ".pth"):
        return _read_openai(path)
    return _read_ct2(path)


def _read_ct2(path: Path) -> WhisperSource:
    model = read_ct2_model(path)
    if model.spec != "WhisperSpec":
        raise WhisperConversionError(f"{path}: a CTranslate2 {model.spec} model, not Whisper (WhisperSpec)")
    if model.revision not in SUPPORTED_CT2_REVISIONS:
        raise WhisperConversionError(f"{path}: WhisperSpec revision {model.revision}; this converter reads revision "
                                     f"{', '.join(map(str, SUPPORTED_CT2_REVISIONS))} (ctranslate2 3.x-4.x)")
    quantized = sorted(k for k, v in model.tensors.items() if v.dtype == np.int8 or k.endswith("weight_scale"))
    if quantized:
        raise WhisperConversionError(f"{path}: int8-quantized weights ({quantized[0]}, ...) cannot be turned back into "
                                     "the trained weights; convert a float16/float32 model (faster-whisper's default "
                                     "downloads are float16)")
    check_ct2_scalars(model.scalars, str(path))
    tensors = dict(model.tensors)
    for alias, target in model.aliases.items():
        if alias != "decoder/projection/weight" or target != "decoder/embeddings/weight":
            raise WhisperConversionError(f"{path}: unexpected alias {alias} -> {target}")
    projection = tensors.pop("decoder/projection/weight", None)  # untied output projection: must equal the embedding
    if projection is not None and not np.array_equal(projection, tensors.get("decoder/embeddings/weight")):
        raise WhisperConversionError(f"{path}: decoder/projection/weight differs from the token embedding; "
                                     "transformers' Whisper ties them")
    return WhisperSource(path, "ctranslate2", tensors, int(model.scalars["encoder/num_heads"]),
                         int(model.scalars["decoder/num_heads"]), folder=path.parent)


def _to_numpy(value) -> np.ndarray:
    import torch

    if value.dtype == torch.bfloat16:
        value = value.float()
    return value.detach().cpu().numpy()


def _read_openai(path: Path) -> WhisperSource:
    import pickle

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WhisperConversionError(f"{path}: stores Python objects torch's safe loader refuses ({exc}); OpenAI's "
                                     "checkpoints hold only dims and tensors, so this is not one") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise WhisperConversionError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("dims"), Mapping) \
            or not isinstance(checkpoint.get("model_state_dict"), Mapping):
        raise WhisperConversionError(f"{path}: expected OpenAI's {{'dims': ..., 'model_state_dict': ...}}")
    dims = checkpoint["dims"]
    if missing := [k for k in _OPENAI_DIMS if k not in dims]:
        raise WhisperConversionError(f"{path}: dims lack {', '.join(missing)}")
    state = checkpoint["model_state_dict"]
    if bad := [k for k, v in state.items() if not isinstance(v, torch.Tensor)]:
        raise WhisperConversionError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    # non-persistent buffers that a state dict saved from a live model may still carry
    tensors = {k: _to_numpy(v) for k, v in state.items() if k not in ("decoder.mask", "alignment_heads")}
    return WhisperSource(path, "openai", tensors, int(dims["n_audio_head"]), int(dims["n_text_head"]))
