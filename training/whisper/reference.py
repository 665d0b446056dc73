"""Independent encoders to check a converted folder against: CTranslate2's own ``Whisper.encode`` (when ctranslate2
is importable and the source is a CTranslate2 folder) and a functional encoder written from OpenAI's
whisper/model.py that reads the *source* tensors by their source names, so neither shares code with transformers'
modeling or with ``key_map``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

# (layer or None, part) -> (weight, bias or None); parts: conv1 conv2 pos ln_post | q k v out attn_ln fc1 fc2 mlp_ln
Getter = Callable[[int | None, str], tuple[np.ndarray, np.ndarray | None]]

_OPENAI_PARTS = {"conv1": "encoder.conv1", "conv2": "encoder.conv2", "ln_post": "encoder.ln_post",
                 "q": "attn.query", "k": "attn.key", "v": "attn.value", "out": "attn.out", "attn_ln": "attn_ln",
                 "fc1": "mlp.0", "fc2": "mlp.2", "mlp_ln": "mlp_ln"}
_CT2_PARTS = {"conv1": "encoder/conv1", "conv2": "encoder/conv2", "ln_post": "encoder/layer_norm",
              "out": "self_attention/linear_1", "attn_ln": "self_attention/layer_norm", "fc1": "ffn/linear_0",
              "fc2": "ffn/linear_1", "mlp_ln": "ffn/layer_norm"}


def openai_getter(state: Mapping[str, np.ndarray]) -> Getter:
    def get(layer: int | None, part: str):
        if part == "pos":
            return state["encoder.positional_embedding"], None
        name = _OPENAI_PARTS[part] if layer is None else f"encoder.blocks.{layer}.{_OPENAI_PARTS[part]}"
        return state[f"{name}.weight"], state.get(f"{name}.bias")
    return get


def ct2_getter(tensors: Mapping[str, np.ndarray]) -> Getter:
    def get(layer: int | None, part: str):
        if part == "pos":
            return tensors["encoder/position_encodings/encodings"], None
        if part in ("q", "k", "v"):
            base = f"encoder/layer_{layer}/self_attention/linear_0"
            d = tensors[f"{base}/weight"].shape[0] // 3
            rows = slice("qkv".index(part) * d, ("qkv".index(part) + 1) * d)
            return tensors[f"{base}/weight"][rows], tensors[f"{base}/bias"][rows]
        name = _CT2_PARTS[part] if layer is None else f"encoder/layer_{layer}/{_CT2_PARTS[part]}"
        weight_key = "gamma" if part in ("ln_post", "attn_ln", "mlp_ln") else "weight"
        bias_key = "beta" if weight_key == "gamma" else "bias"
        return tensors[f"{name}/{weight_key}"], tensors[f"{name}/{bias_key}"]
    return get


def functional_encoder(get: Getter, num_layers: int, num_heads: int, features: torch.Tensor) -> torch.Tensor:
    """OpenAI's AudioEncoder forward, float64: features (batch, mels, frames) -> (batch, frames // 2, d_model)."""
    import torch
    import torch.nn.functional as F

    def t(a):
        return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))

    def linear(x, layer, part):
        weight, bias = get(layer, part)
        return F.linear(x, t(weight), t(bias))

    def norm(x, layer, part):
        weight, bias = get(layer, part)
        return F.layer_norm(x, x.shape[-1:], t(weight), t(bias), eps=1e-5)

    x = features.to(torch.float64)
    x = F.gelu(F.conv1d(x, *map(t, get(None, "conv1")), padding=1))
    x = F.gelu(F.conv1d(x, *map(t, get(None, "conv2")), stride=2, padding=1)).transpose(1, 2)
    x = x + t(get(None, "pos")[0])[: x.shape[1]]
    batch, frames, width = x.shape
    for i in range(num_layers):
        h = norm(x, i, "attn_ln")
        q, k, v = (linear(h, i, p).view(batch, frames, num_heads, -1).transpose(1, 2) for p in "qkv")
        scores = (q @ k.transpose(-1, -2)) / (width // num_heads) ** 0.5
        h = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, frames, width)
        x = x + linear(h, i, "out")
        x = x + linear(F.gelu(linear(norm(x, i, "mlp_ln"), i, "fc1")), i, "fc2")
    return norm(x, None, "ln_post")


def ctranslate2_encoder(folder: str | Path, features: np.ndarray) -> np.ndarray | str:
    """CTranslate2's float32 encoder output for ``features`` (batch, mels, 3000), or why it could not run."""
    try:
        import ctranslate2
    except ImportError:
        return "ctranslate2 is not installed"
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
                       to_cpu=True)
    return np.array(out)


def check_features(num_mel_bins: int, seconds: float = 30.0, seed: int = 0) -> np.ndarray:
    """A deterministic log-mel input (1, mels, 3000): a gliding tone with harmonics over noise, through
    ``WhisperFeatureExtractor`` (so the check also runs the front end the study uses)."""
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16_000)) / 16_000
    phase = 2 * np.pi * (200 * t + 40 * t ** 2)
    wave = 0.3 * np.sin(phase) + 0.1 * np.sin(3 * phase) + 0.02 * rng.standard_normal(t.size)
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return extractor(wave.astype(np.float32), sampling_rate=16_000, return_tensors="np").input_features


def relative_difference(output: np.ndarray, reference: np.ndarray) -> float:
    """max |output - reference| / max |reference|: the deviation relative to the output's scale."""
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(output, dtype=np.float64) - reference)) / np.max(np.abs(reference)))
