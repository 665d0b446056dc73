"""Reading AVES checkpoints (fairseq or TorchAudio) without executing pickle code, and translating their
architecture arguments into a transformers ``HubertConfig``."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from vocalprobe.runtime.core.errors import VocalprobeError

if TYPE_CHECKING:  # torch/transformers are imported inside functions: importing this module stays cheap
    import torch
    from transformers import HubertConfig


_RESAVE_SNIPPET = (
    "    import torch; from omegaconf import OmegaConf\n"
    "    ck = torch.load('{name}', map_location='cpu', weights_only=False)  # trusted environment only\n"
    "    torch.save({{'model': ck['model'], 'cfg': OmegaConf.to_container(ck['cfg'], resolve=True)}}, "
    "'{stem}.plain.pt')\n"
    "(an old checkpoint that has ck['args'] instead of ck['cfg']: save {{'model': ck['model'], "
    "'args': vars(ck['args'])}})"
)


class AvesConversionError(VocalprobeError):
    """The checkpoint cannot be converted: names the file and what is wrong with it."""


class ForeignPickleError(AvesConversionError):
    """The checkpoint needs classes outside torch's weights-only allowlist to unpickle."""


# TorchAudio `wav2vec2_model` arguments -> HubertConfig fields (the renames; the rest is handled in code).
_TORCHAUDIO_TO_HF = {
    "extractor_conv_bias": "conv_bias",
    "encoder_embed_dim": "hidden_size",
    "encoder_projection_dropout": "feat_proj_dropout",
    "encoder_pos_conv_kernel": "num_conv_pos_embeddings",
    "encoder_pos_conv_groups": "num_conv_pos_embedding_groups",
    "encoder_num_layers": "num_hidden_layers",
    "encoder_num_heads": "num_attention_heads",
    "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_features": "intermediate_size",
    "encoder_ff_interm_dropout": "activation_dropout",
    "encoder_dropout": "hidden_dropout",
    "encoder_layer_norm_first": "do_stable_layer_norm",
    "encoder_layer_drop": "layerdrop",
}
_TORCHAUDIO_REQUIRED = {"extractor_mode", "extractor_conv_layer_config", *_TORCHAUDIO_TO_HF}

# fairseq HubertConfig fields -> torchaudio arguments (as torchaudio's own import_fairseq does).
_FAIRSEQ_TO_TORCHAUDIO = {
    "conv_bias": "extractor_conv_bias",
    "encoder_embed_dim": "encoder_embed_dim",
    "dropout_input": "encoder_projection_dropout",
    "conv_pos": "encoder_pos_conv_kernel",
    "conv_pos_groups": "encoder_pos_conv_groups",
    "encoder_layers": "encoder_num_layers",
    "encoder_attention_heads": "encoder_num_heads",
    "attention_dropout": "encoder_attention_dropout",
    "encoder_ffn_embed_dim": "encoder_ff_interm_features",
    "activation_dropout": "encoder_ff_interm_dropout",
    "dropout": "encoder_dropout",
    "layer_norm_first": "encoder_layer_norm_first",
    "encoder_layerdrop": "encoder_layer_drop",
}


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoints
# ---------------------------------------------------------------------------------------------------------------

def load_checkpoint(path: str | Path) -> Any:
    """Load a ``.pt``/``.pth`` with ``torch.load(weights_only=True)`` or a ``.safetensors`` file, on CPU.

    Raises ``ForeignPickleError`` (with the way out) when the file needs non-allowlisted classes, such as the
    ``omegaconf.DictConfig`` or ``argparse.Namespace`` that fairseq stores next to the weights.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise AvesConversionError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise AvesConversionError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it contains {', '.join(sorted(set(found)))})" if found else ""
        raise ForeignPickleError(
            f"{path}: this checkpoint stores Python objects that torch's safe loader refuses{what}; vocalprobe "
            "never unpickles arbitrary code. Either use the TorchAudio release of AVES (aves-base-bio.torchaudio.pt "
            "+ aves-base-bio.torchaudio.model_config.json, see the README) or, in an environment you trust that has "
            "fairseq/omegaconf installed, re-save the weights and config as plain data:\n"
            + _RESAVE_SNIPPET.format(name=path.name, stem=path.stem)
            + f"\nthen run: vocalprobe convert-aves {path.stem}.plain.pt"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise AvesConversionError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None


def split_checkpoint(obj: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Return (state dict, fairseq model cfg or None) from what ``load_checkpoint`` returned."""
    import torch

    if not isinstance(obj, Mapping):
        raise AvesConversionError(f"{path}: expected a state dict or a fairseq checkpoint dict, "
                                  f"got {type(obj).__name__}")
    cfg = None
    if "model" in obj and isinstance(obj["model"], Mapping):  # fairseq checkpoint: {"model": ..., "cfg"/"args": ...}
        state = obj["model"]
        stored = obj.get("cfg") if obj.get("cfg") is not None else obj.get("args")  # hydra cfg, or old flat args
        if isinstance(stored, Mapping):
            cfg = dict(stored["model"]) if isinstance(stored.get("model"), Mapping) else dict(stored)
    else:
        state = obj
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise AvesConversionError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:5]))}")
    return dict(state), cfg


def detect_layout(state: Mapping[str, Any], path: str | Path = "") -> str:
    """``"torchaudio"`` or ``"fairseq"``, from the key names."""
    keys = set(state)
    if any(k.startswith("encoder.transformer.") for k in keys):
        return "torchaudio"
    if "post_extract_proj.weight" in keys or any(k.startswith("encoder.pos_conv.") for k in keys):
        return "fairseq"
    sample = ", ".join(sorted(keys)[:4])
    raise AvesConversionError(f"{path}: neither a TorchAudio nor a fairseq HuBERT state dict (keys: {sample}, ...)")


# ---------------------------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------------------------

def _literal_conv_layers(text: str) -> list[list[int]]:
    """Evaluate fairseq's ``conv_feature_layers`` string (e.g. ``"[(512,10,5)] + [(512,3,2)] * 4"``) without eval:
    only list/tuple literals of ints, ``+`` and ``* int`` are accepted."""

    def value(node: ast.AST):
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = value(node.left), value(node.right)
            if isinstance(left, list) and isinstance(right, list):
                return left + right
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = value(node.left), value(node.right)
            if isinstance(left, list) and isinstance(right, int):
                return left * right
        raise ValueError(ast.dump(node))

    try:
        layers = value(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError) as exc:
        raise AvesConversionError(f"conv_feature_layers {text!r} is not a plain list of (dim, kernel, stride) "
                                  f"tuples ({exc})") from None
    if not all(isinstance(t, list) and len(t) == 3 and all(isinstance(i, int) for i in t) for t in layers):
        raise AvesConversionError(f"conv_feature_layers {text!r}: every entry must be (dim, kernel, stride)")
    return layers


def torchaudio_config_from_fairseq(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """fairseq HuBERT model cfg (plain dict) -> TorchAudio ``wav2vec2_model`` arguments."""
    missing = sorted({"extractor_mode", "conv_feature_layers", *_FAIRSEQ_TO_TORCHAUDIO} - set(cfg))
    if missing:
        raise AvesConversionError(f"fairseq model config lacks {', '.join(missing)}")
    if cfg.get("activation_fn", "gelu") != "gelu":
        raise AvesConversionError(f"fairseq model config: activation_fn {cfg['activation_fn']!r} is not supported "
                                  "(HuBERT uses gelu)")
    if cfg.get("pos_conv_depth", 1) != 1:
        raise AvesConversionError(f"fairseq model config: pos_conv_depth {cfg['pos_conv_depth']} is not supported "
                                  "(HuBERT uses 1)")
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    if cfg["extractor_mode"] not in modes:
        raise AvesConversionError(f"fairseq model config: unknown extractor_mode {cfg['extractor_mode']!r}")
    out = {"extractor_mode": modes[cfg["extractor_mode"]],
           "extractor_conv_layer_config": _literal_conv_layers(str(cfg["conv_feature_layers"]))}
    out.update({ta: cfg[fs] for fs, ta in _FAIRSEQ_TO_TORCHAUDIO.items()})
    return out


def hubert_config_from_torchaudio(cfg: Mapping[str, Any], *, mask_embedding: bool) -> HubertConfig:
    """TorchAudio ``wav2vec2_model`` arguments (AVES' ``*.model_config.json``) -> ``HubertConfig``.

    ``mask_embedding``: whether the source has a SpecAugment mask vector. Without one the config disables masking
    (``mask_time_prob=0``), so the model has no randomly initialised ``masked_spec_embed``.
    """
    from transformers import HubertConfig

    cfg = dict(cfg)
    if cfg.pop("aux_num_out", None) is not None:
        raise AvesConversionError("model config has aux_num_out set: that is a fine-tuned CTC model, not a backbone")
    missing = sorted(_TORCHAUDIO_REQUIRED - set(cfg))
    unknown = sorted(set(cfg) - _TORCHAUDIO_REQUIRED)
    if missing or unknown:
        raise AvesConversionError("model config does not match TorchAudio's wav2vec2_model arguments: "
                                  + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                            unknown and f"unknown {', '.join(unknown)}"])))
    modes = {"group_norm": "group", "layer_norm": "layer"}
    if cfg["extractor_mode"] not in modes:
        raise AvesConversionError(f"model config: extractor_mode {cfg['extractor_mode']!r} is neither "
                                  "'group_norm' nor 'layer_norm'")
    layers = cfg["extractor_conv_layer_config"]
    if not layers or not all(len(t) == 3 for t in layers):
        raise AvesConversionError("model config: extractor_conv_layer_config must be a list of [dim, kernel, stride]")
    fields = {hf: cfg[ta] for ta, hf in _TORCHAUDIO_TO_HF.items()}
    return HubertConfig(
        **fields,
        feat_extract_norm=modes[cfg["extractor_mode"]],
        conv_dim=tuple(int(t[0]) for t in layers),
        conv_kernel=tuple(int(t[1]) for t in layers),
        conv_stride=tuple(int(t[2]) for t in layers),
        feat_extract_activation="gelu",
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        feat_proj_layer_norm=True,  # fairseq/TorchAudio HuBERT always normalise the CNN features before projecting
        conv_pos_batch_norm=False,
        mask_time_prob=0.05 if mask_embedding else 0.0,
        mask_feature_prob=0.0,
    )


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A model config JSON: TorchAudio ``wav2vec2_model`` arguments, or a fairseq model cfg dumped as JSON.
    Returned as TorchAudio arguments."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AvesConversionError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AvesConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AvesConversionError(f"{path}: expected a JSON object")
    if "encoder_num_layers" in data:
        return data
    if "encoder_layers" in data:
        return torchaudio_config_from_fairseq(data.get("model", data))
    raise AvesConversionError(f"{path}: neither TorchAudio wav2vec2_model arguments (encoder_num_layers, ...) nor a "
                              "fairseq model cfg (encoder_layers, ...)")


