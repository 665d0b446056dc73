"""Source tensor names -> transformers ``WhisperForConditionalGeneration`` names, for the two layouts Whisper ships
in: CTranslate2 (faster-whisper's ``model.bin``) and OpenAI's ``.pt`` ``model_state_dict``.

CTranslate2 fuses projections: ``self_attention/linear_0`` is [q; k; v] stacked on the output axis and the
decoder's ``attention/linear_1`` (cross-attention) is [k; v]. Its k rows carry a bias that transformers' ``k_proj``
lacks; CTranslate2's converter writes zeros there, and a key bias adds the same constant to every score of a query,
which softmax cancels, so dropping it changes nothing. Both maps return every source name they consumed, so the
converter can refuse leftovers.
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from vocalprobe.training.whisper.ct2_file import WhisperConversionError

_NORM = {"gamma": "weight", "beta": "bias"}
# per layer: CTranslate2 module -> the transformers modules its rows split into (in order)
_CT2_LAYER = {
    "self_attention/linear_0": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attention/linear_1": ("self_attn.out_proj",),
    "self_attention/layer_norm": ("self_attn_layer_norm",),
    "attention/linear_0": ("encoder_attn.q_proj",),
    "attention/linear_1": ("encoder_attn.k_proj", "encoder_attn.v_proj"),
    "attention/linear_2": ("encoder_attn.out_proj",),
    "attention/layer_norm": ("encoder_attn_layer_norm",),
    "ffn/linear_0": ("fc1",),
    "ffn/linear_1": ("fc2",),
    "ffn/layer_norm": ("final_layer_norm",),
}
_CT2_TOP = {
    "encoder/conv1": "model.encoder.conv1", "encoder/conv2": "model.encoder.conv2",
    "encoder/layer_norm": "model.encoder.layer_norm", "decoder/layer_norm": "model.decoder.layer_norm",
    "encoder/position_encodings/encodings": "model.encoder.embed_positions.weight",
    "decoder/position_encodings/encodings": "model.decoder.embed_positions.weight",
    "decoder/embeddings/weight": "model.decoder.embed_tokens.weight",
}
_CT2_LAYER_RE = re.compile(r"(encoder|decoder)/layer_(\d+)/(.+)/(weight|bias|gamma|beta)")
_CT2_TOP_RE = re.compile(r"(.+)/(weight|bias|gamma|beta)")


def map_ct2(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
    """CTranslate2 variable names -> transformers names; returns (mapped tensors, consumed source names)."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, value in tensors.items():
        if name in _CT2_TOP and _CT2_TOP[name].endswith(".weight"):
            out[_CT2_TOP[name]] = value
            used.add(name)
            continue
        layer = _CT2_LAYER_RE.fullmatch(name)
        if layer:
            side, index, module, kind = layer.groups()
            targets = _CT2_LAYER.get(module)
            if targets is None or (side == "encoder" and module.startswith("attention/")):
                continue  # left over: reported by the converter
            parts = np.split(value, len(targets), axis=0)
            for target, part in zip(targets, parts):
                if target.endswith("k_proj") and kind == "bias":
                    continue  # softmax-invariant (see the module docstring)
                out[f"model.{side}.layers.{index}.{target}.{_NORM.get(kind, kind)}"] = part
            used.add(name)
            continue
        top = _CT2_TOP_RE.fullmatch(name)
        if top and top.group(1) in _CT2_TOP:
            out[f"{_CT2_TOP[top.group(1)]}.{_NORM.get(top.group(2), top.group(2))}"] = value
            used.add(name)
    return out, used


# OpenAI whisper/model.py names (regex on the whole key) -> transformers names
_OPENAI_RULES = [
    (r"encoder\.conv([12])\.(weight|bias)", r"model.encoder.conv\1.\2"),
    (r"encoder\.positional_embedding", "model.encoder.embed_positions.weight"),
    (r"encoder\.ln_post\.(weight|bias)", r"model.encoder.layer_norm.\1"),
    (r"decoder\.token_embedding\.weight", "model.decoder.embed_tokens.weight"),
    (r"decoder\.positional_embedding", "model.decoder.embed_positions.weight"),
    (r"decoder\.ln\.(weight|bias)", r"model.decoder.layer_norm.\1"),
]
_OPENAI_BLOCK = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
                 "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
                 "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
                 "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
                 "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2",
                 "mlp_ln": "final_layer_norm"}
_OPENAI_BLOCK_RE = re.compile(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)")


def map_openai(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
    """OpenAI ``model_state_dict`` names -> transformers names; returns (mapped tensors, consumed source names)."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for name, value in state.items():
        block = _OPENAI_BLOCK_RE.fullmatch(name)
        if block:
            side, index, module, kind = block.groups()
            if module in _OPENAI_BLOCK and not (side == "encoder" and module.startswith("cross_attn")):
                out[f"model.{side}.layers.{index}.{_OPENAI_BLOCK[module]}.{kind}"] = value
                used.add(name)
            continue
        for pattern, replacement in _OPENAI_RULES:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, replacement, name)] = value
                used.add(name)
                break
    return out, used


def check_complete(mapped: Mapping[str, np.ndarray], used: set[str], source: Mapping[str, np.ndarray],
                   expected: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Every source tensor consumed, every expected transformers tensor present with its shape, nothing extra."""
    problems = []
    if leftover := sorted(set(source) - used):
        problems.append("source tensors with no place in transformers' Whisper: " + ", ".join(leftover[:8]))
    if missing := sorted(set(expected) - set(mapped)):
        problems.append("transformers tensors the source lacks: " + ", ".join(missing[:8]))
    if unexpected := sorted(set(mapped) - set(expected)):
        problems.append("mapped names transformers does not have: " + ", ".join(unexpected[:8]))
    shapes = [f"{k} {tuple(mapped[k].shape)} vs {tuple(expected[k])}" for k in sorted(set(mapped) & set(expected))
              if tuple(mapped[k].shape) != tuple(expected[k])]
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes[:5]))
    if problems:
        raise WhisperConversionError(f"{where}: not a complete Whisper checkpoint: " + " | ".join(problems))
