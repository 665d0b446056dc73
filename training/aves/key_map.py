"""Tensor names: AVES source keys (fairseq or TorchAudio) <-> transformers HubertModel keys, both ways, so the
forward map and the inverse that feeds the reference check each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from vocalprobe.training.aves.checkpoints import AvesConversionError

if TYPE_CHECKING:  # torch/transformers are imported inside functions: importing this module stays cheap
    import torch


# Source tensors with no Hugging Face HubertModel counterpart, dropped on purpose (pre-training heads).
FAIRSEQ_DROPPED: dict[str, str] = {
    "label_embs_concat": "HuBERT pre-training cluster embeddings (targets of the masked prediction)",
    "final_proj.weight": "HuBERT pre-training projection onto the cluster embeddings",
    "final_proj.bias": "HuBERT pre-training projection onto the cluster embeddings",
}
TORCHAUDIO_DROPPED: dict[str, str] = {
    "aux.weight": "CTC output head of a fine-tuned model, not part of the encoder",
    "aux.bias": "CTC output head of a fine-tuned model, not part of the encoder",
}


# ---------------------------------------------------------------------------------------------------------------
# Key mapping. Forward maps (source -> HF) are regex rules; the inverse (HF -> source) is written separately and
# feeds the reference, so the two cross-check each other. Weight norm is canonical as `weight_g`/`weight_v` here.
# ---------------------------------------------------------------------------------------------------------------

_FAIRSEQ_RULES: list[tuple[str, str]] = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"encoder\.pos_conv\.0\.(weight_g|weight_v|bias)", r"encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.pos_conv\.0\.parametrizations\.weight\.original0", "encoder.pos_conv_embed.conv.weight_g"),
    (r"encoder\.pos_conv\.0\.parametrizations\.weight\.original1", "encoder.pos_conv_embed.conv.weight_v"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"mask_emb", "masked_spec_embed"),
]
# The CNN's norm sits at index 2 (group norm, layer 0 only) or 2.1 (layer norm inside a TransposeLast sequence).
_FAIRSEQ_NORM_RULES = {
    "group": [(r"feature_extractor\.conv_layers\.0\.2\.(weight|bias)",
               r"feature_extractor.conv_layers.0.layer_norm.\1")],
    "layer": [(r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)",
               r"feature_extractor.conv_layers.\1.layer_norm.\2")],
}

_TORCHAUDIO_RULES: list[tuple[str, str]] = [
    (r"feature_extractor\.(.+)", r"feature_extractor.\1"),
    (r"encoder\.feature_projection\.(.+)", r"feature_projection.\1"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original0",
     "encoder.pos_conv_embed.conv.weight_g"),
    (r"encoder\.transformer\.pos_conv_embed\.conv\.parametrizations\.weight\.original1",
     "encoder.pos_conv_embed.conv.weight_v"),
    (r"encoder\.transformer\.(.+)", r"encoder.\1"),
]


def _rules(layout: str, feat_extract_norm: str) -> list[tuple[re.Pattern, str]]:
    if layout == "fairseq":
        rules = _FAIRSEQ_NORM_RULES[feat_extract_norm] + _FAIRSEQ_RULES
    elif layout == "torchaudio":
        rules = _TORCHAUDIO_RULES
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return [(re.compile(pattern), repl) for pattern, repl in rules]


def source_to_hf_name(key: str, layout: str, feat_extract_norm: str) -> str | None:
    """The canonical HF name of one source key, or None when no rule matches."""
    for pattern, repl in _rules(layout, feat_extract_norm):
        if pattern.fullmatch(key):
            return pattern.sub(repl, key)
    return None


def hf_to_source_name(key: str, layout: str, feat_extract_norm: str) -> str:
    """The source name of one canonical HF key (inverse of ``source_to_hf_name``, written independently)."""
    if layout == "torchaudio":
        if key.startswith("feature_extractor."):
            return key
        if key.startswith("feature_projection."):
            return "encoder." + key
        if key.startswith("encoder."):
            return "encoder.transformer." + key[len("encoder."):]
        raise KeyError(key)
    if key == "masked_spec_embed":
        return "mask_emb"
    parts = key.split(".")
    if parts[0] == "feature_extractor":  # feature_extractor.conv_layers.N.(conv|layer_norm).P
        n, module, param = parts[2], parts[3], parts[4]
        if module == "conv":
            return f"feature_extractor.conv_layers.{n}.0.{param}"
        index = "2" if feat_extract_norm == "group" else "2.1"
        return f"feature_extractor.conv_layers.{n}.{index}.{param}"
    if parts[0] == "feature_projection":
        return {"layer_norm": "layer_norm", "projection": "post_extract_proj"}[parts[1]] + "." + parts[2]
    if parts[:2] == ["encoder", "pos_conv_embed"]:
        return "encoder.pos_conv.0." + parts[-1]
    if parts[:2] == ["encoder", "layer_norm"]:
        return key
    if parts[:2] == ["encoder", "layers"]:
        n, rest = parts[2], ".".join(parts[3:])
        renamed = {"attention.q_proj": "self_attn.q_proj", "attention.k_proj": "self_attn.k_proj",
                   "attention.v_proj": "self_attn.v_proj", "attention.out_proj": "self_attn.out_proj",
                   "layer_norm": "self_attn_layer_norm", "feed_forward.intermediate_dense": "fc1",
                   "feed_forward.output_dense": "fc2", "final_layer_norm": "final_layer_norm"}
        module, param = rest.rsplit(".", 1)
        return f"encoder.layers.{n}.{renamed[module]}.{param}"
    raise KeyError(key)


def canonical_name(hf_key: str) -> str:
    """HF model state-dict name -> canonical name (weight norm as weight_g / weight_v)."""
    return (hf_key.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"))


def map_state_dict(state: Mapping[str, torch.Tensor], layout: str, model_state: Mapping[str, torch.Tensor],
                   feat_extract_norm: str, path: str | Path = "") -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Rename ``state`` (source layout) into the names of ``model_state`` (a fresh HubertModel's state dict).

    Returns (mapped state dict, dropped source keys). Raises ``AvesConversionError`` listing every unmapped source
    key, every HF key without a source, every duplicate target and every shape mismatch.
    """
    dropped_allowed = FAIRSEQ_DROPPED if layout == "fairseq" else TORCHAUDIO_DROPPED
    by_canonical = {canonical_name(k): k for k in model_state}
    mapped: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    dropped, unmapped, problems = [], [], []
    for key, tensor in state.items():
        if key in dropped_allowed:
            dropped.append(key)
            continue
        canonical = source_to_hf_name(key, layout, feat_extract_norm)
        target = by_canonical.get(canonical) if canonical is not None else None
        if target is None:
            unmapped.append(key)
            continue
        if target in mapped:
            problems.append(f"{key} and {sources[target]} both map to {target}")
            continue
        if tuple(tensor.shape) != tuple(model_state[target].shape):
            problems.append(f"{key}: shape {tuple(tensor.shape)}, the config expects "
                            f"{tuple(model_state[target].shape)} for {target}")
            continue
        mapped[target] = tensor.detach().to("cpu").contiguous()
        sources[target] = key
    missing = sorted(set(model_state) - set(mapped))
    if unmapped:
        problems.append(f"source tensors with no counterpart: {', '.join(sorted(unmapped))}")
    if missing:
        problems.append(f"model tensors missing from the checkpoint: {', '.join(missing)}")
    if problems:
        raise AvesConversionError(f"{path}: cannot convert this {layout} checkpoint with this config:\n  - "
                                  + "\n  - ".join(problems))
    return mapped, tuple(sorted(dropped))


