"""Convert an AVES checkpoint (fairseq or TorchAudio release) into a Hugging Face ``HubertModel`` directory.

AVES (Earth Species Project) is HuBERT base pre-trained on animal sounds. It ships as a fairseq checkpoint
(``aves-base-bio.pt``) and as a TorchAudio state dict (``aves-base-bio.torchaudio.pt`` plus
``aves-base-bio.torchaudio.model_config.json``), never in Hugging Face format. ``convert_aves`` writes
``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json`` and ``conversion.json``) so the study and
the export load AVES like every other backbone.

The conversion is strict and checked:

- every source tensor is mapped, or dropped because it is listed in ``FAIRSEQ_DROPPED`` / ``TORCHAUDIO_DROPPED``;
  any other leftover, any Hugging Face tensor left without a source, and any shape mismatch is an error naming the key;
- the written directory is reloaded with ``HubertModel.from_pretrained`` and its hidden states (every layer, float64)
  are compared with ``reference_hidden_states``: a functional HuBERT forward pass written from the fairseq
  architecture that reads the *source* tensors by their source names and the *source's* architecture arguments.
  It shares no code with transformers' modeling, so it also checks the config translation (conv stack, norm mode,
  positional conv, layer-norm order) and the weight-norm handling. When torchaudio is importable, TorchAudio's own
  ``wav2vec2_model`` holding the original TorchAudio state dict is compared as well (torchaudio is optional).
  Neither can detect a *wrong input config* whose tensor shapes happen to fit: both would follow it.

Checkpoints are read with ``torch.load(weights_only=True)`` (or safetensors); a fairseq file that needs foreign
classes to unpickle raises ``ForeignPickleError`` with the steps to re-save it. No pickle code is ever executed.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vocalprobe import __version__
from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.training.backbones import AVES_DIR_ENV, DEFAULT_AVES_DIR, aves_dir  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # torch/transformers are imported inside functions: importing this module stays cheap
    import torch
    from transformers import HubertConfig

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

# Absolute tolerance of the hidden-state check, relative to the largest reference activation (both run in float64,
# so a correct conversion lands near 1e-12; any mapping or config error is orders of magnitude above this).
CHECK_RTOL = 1e-6
_CHECK_SECONDS = (1.0, 0.37)  # two input lengths (the second is odd-sized) of seeded noise at 16 kHz

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


@dataclass(frozen=True)
class ConversionReport:
    """What ``convert_aves`` did; also written as ``conversion.json`` in the output directory."""

    source: str  # checkpoint path as given
    source_sha256: str
    layout: str  # "fairseq" or "torchaudio"
    config_source: str  # where the architecture came from: the checkpoint's cfg or a JSON path
    out_dir: str
    num_tensors: int  # tensors written to model.safetensors
    dropped: tuple[str, ...]  # source keys intentionally not converted (see FAIRSEQ_DROPPED / TORCHAUDIO_DROPPED)
    reference: str  # "functional+torchaudio", or "functional (why torchaudio was not used)"
    max_abs_diff: float  # over all hidden states and check inputs, float64
    tolerance: float  # the absolute bound max_abs_diff had to stay under
    vocalprobe_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def default_aves_dir() -> Path:
    """Where the registry's ``aves-bio`` backbone is loaded from: ``$VOCALPROBE_AVES_DIR`` or
    ``artifacts/models/aves-bio`` (``vocalprobe.training.backbones.aves_dir``)."""
    return aves_dir()


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


def _canonical(hf_key: str) -> str:
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
    by_canonical = {_canonical(k): k for k in model_state}
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


# ---------------------------------------------------------------------------------------------------------------
# Reference forward pass (fairseq HuBERT semantics, functional, reading source tensors by source names)
# ---------------------------------------------------------------------------------------------------------------

def reference_hidden_states(get: Callable[[str], torch.Tensor], arch: Mapping[str, Any],
                            waveform: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(hidden states, last hidden state) as ``HubertModel(output_hidden_states=True)`` defines them: the
    transformer input then each layer's output, and the encoder output (for pre-LN models the last layer's output
    after the encoder's final layer norm, otherwise the last hidden state). ``get(hf_name)`` returns a weight.

``arch`` is the *source's* description of the network (TorchAudio ``wav2vec2_model`` arguments), not the
translated ``HubertConfig``, so a mistake in the config translation shows up as a difference.

    Written from fairseq's HubertModel/TransformerEncoder; runs in the dtype of ``waveform`` (use float64).
    """
    import torch.nn.functional as F

    dtype = waveform.dtype
    w = lambda name: get(name).to(dtype)  # noqa: E731
    eps = 1e-5  # fairseq's and torchaudio's LayerNorm / GroupNorm epsilon
    mode = arch["extractor_mode"]
    h = waveform[:, None, :]  # (b, 1, samples)
    for i, (dim, kernel, stride) in enumerate(arch["extractor_conv_layer_config"]):
        prefix = f"feature_extractor.conv_layers.{i}"
        bias = w(f"{prefix}.conv.bias") if arch["extractor_conv_bias"] else None
        h = F.conv1d(h, w(f"{prefix}.conv.weight"), bias, stride=stride)  # (b, dim, frames)
        if mode == "group_norm" and i == 0:  # one group per channel: normalise each over time
            h = F.group_norm(h, dim, w(f"{prefix}.layer_norm.weight"), w(f"{prefix}.layer_norm.bias"), eps)
        elif mode == "layer_norm":  # normalise each frame over channels
            h = F.layer_norm(h.transpose(1, 2), (dim,), w(f"{prefix}.layer_norm.weight"),
                             w(f"{prefix}.layer_norm.bias"), eps).transpose(1, 2)
        h = F.gelu(h)
    h = h.transpose(1, 2)  # (b, frames, conv_dim)
    h = F.layer_norm(h, (h.shape[-1],), w("feature_projection.layer_norm.weight"),
                     w("feature_projection.layer_norm.bias"), eps)
    h = F.linear(h, w("feature_projection.projection.weight"), w("feature_projection.projection.bias"))

    g, v = w("encoder.pos_conv_embed.conv.weight_g"), w("encoder.pos_conv_embed.conv.weight_v")
    pos_weight = v * (g / v.norm(dim=(0, 1), keepdim=True))  # weight norm over all but the kernel axis (dim=2)
    kernel = arch["encoder_pos_conv_kernel"]
    pos = F.conv1d(h.transpose(1, 2), pos_weight, w("encoder.pos_conv_embed.conv.bias"), padding=kernel // 2,
                   groups=arch["encoder_pos_conv_groups"])
    if kernel % 2 == 0:  # "same" padding for an even kernel drops the last frame
        pos = pos[:, :, :-1]
    h = h + F.gelu(pos).transpose(1, 2)
    pre_ln = bool(arch["encoder_layer_norm_first"])
    if not pre_ln:
        h = F.layer_norm(h, (h.shape[-1],), w("encoder.layer_norm.weight"), w("encoder.layer_norm.bias"), eps)

    heads = arch["encoder_num_heads"]
    b, t, d = h.shape

    def attention(x: torch.Tensor, prefix: str) -> torch.Tensor:
        def proj(name: str, y: torch.Tensor) -> torch.Tensor:
            return F.linear(y, w(f"{prefix}.{name}.weight"), w(f"{prefix}.{name}.bias"))

        q, k, val = (proj(n, x).view(b, t, heads, d // heads).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // heads)  # (b, heads, t, t)
        out = (scores.softmax(dim=-1) @ val).transpose(1, 2).reshape(b, t, d)
        return proj("out_proj", out)

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (d,), w(f"{name}.weight"), w(f"{name}.bias"), eps)

    def feed_forward(x: torch.Tensor, prefix: str) -> torch.Tensor:
        x = F.gelu(F.linear(x, w(f"{prefix}.intermediate_dense.weight"), w(f"{prefix}.intermediate_dense.bias")))
        return F.linear(x, w(f"{prefix}.output_dense.weight"), w(f"{prefix}.output_dense.bias"))

    states = [h]
    for i in range(arch["encoder_num_layers"]):
        p = f"encoder.layers.{i}"
        if pre_ln:
            h = h + attention(ln(h, f"{p}.layer_norm"), f"{p}.attention")
            h = h + feed_forward(ln(h, f"{p}.final_layer_norm"), f"{p}.feed_forward")
        else:  # post-LN (HuBERT base, AVES)
            h = ln(h + attention(h, f"{p}.attention"), f"{p}.layer_norm")
            h = ln(h + feed_forward(h, f"{p}.feed_forward"), f"{p}.final_layer_norm")
        states.append(h)
    last = ln(h, "encoder.layer_norm") if pre_ln else h
    return states, last


def _check_inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.randn(1, int(seconds * 16000), generator=generator, dtype=torch.float64).to(dtype) * 0.1
            for seconds in _CHECK_SECONDS]


def _torchaudio_reference(arch: Mapping[str, Any], layout: str, source: Mapping[str, torch.Tensor],
                          mapped: Mapping[str, torch.Tensor]):
    """TorchAudio's ``wav2vec2_model`` built from the source's own arguments, as (model, None), or (None, why not).

    A TorchAudio source is loaded as is (the original file is the reference); a fairseq source goes through the
    converted weights renamed into TorchAudio's layout.
    """
    try:
        from torchaudio.models import wav2vec2_model
    except (ImportError, OSError) as exc:  # OSError: torchaudio installed but its extension does not match torch
        return None, f"torchaudio unusable: {type(exc).__name__}: {exc}".splitlines()[0][:200]
    model = wav2vec2_model(**{**arch, "aux_num_out": None})
    by_canonical = {_canonical(k): k for k in model.state_dict()}
    if layout == "torchaudio":
        pairs = [(k, v) for k, v in source.items() if k not in TORCHAUDIO_DROPPED]
    else:
        pairs = [(hf_to_source_name(_canonical(k), "torchaudio", ""), v) for k, v in mapped.items()
                 if k != "masked_spec_embed"]
    state = {}
    for key, tensor in pairs:
        ta_key = by_canonical.get(_canonical(key))
        if ta_key is None:
            raise AvesConversionError(f"torchaudio reference: its model has no tensor {key}")
        state[ta_key] = tensor
    model.load_state_dict(state, strict=True)
    return model.double().eval(), None


def verify_directory(out_dir: str | Path, arch: Mapping[str, Any], source_get: Callable[[str], torch.Tensor],
                     torchaudio_model=None) -> tuple[float, float]:
    """Reload ``out_dir`` and compare its hidden states with the functional reference (always) and with
    ``torchaudio_model`` (when given), in float64, on two seeded noise inputs.

    Returns (max abs diff, tolerance); raises ``AvesConversionError`` when the difference exceeds the tolerance,
    ``CHECK_RTOL`` times the largest reference activation (at least 1).
    """
    import torch
    from transformers import HubertModel

    model, info = HubertModel.from_pretrained(str(out_dir), output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise AvesConversionError(f"{out_dir}: written model does not reload cleanly: {problems}")
    model = model.double().eval()
    n, pre_ln = int(arch["encoder_num_layers"]), bool(arch["encoder_layer_norm_first"])
    worst, scale, worst_name = 0.0, 1.0, ""
    with torch.no_grad():
        for x in _check_inputs(torch.float64):
            output = model(x, output_hidden_states=True)
            got = output.hidden_states
            if len(got) != n + 1:
                raise AvesConversionError(f"{out_dir}: expected {n + 1} hidden states, got {len(got)}")
            # The last entry of hidden_states is version-dependent for pre-LN models (with or without the final
            # norm), so the encoder output is checked through last_hidden_state instead.
            ref_states, ref_last = reference_hidden_states(source_get, arch, x)
            pairs = [("functional", a, b) for a, b in zip(got[:n], ref_states[:n])]
            pairs.append(("functional", output.last_hidden_state, ref_last))
            if torchaudio_model is not None:  # each layer's output, before any final pre-LN norm
                ref_layers, _ = torchaudio_model.extract_features(x)
                pairs += [("torchaudio", a, b) for a, b in zip(got[1:n], ref_layers[:n - 1])]
                if not pre_ln:
                    pairs.append(("torchaudio", output.last_hidden_state, ref_layers[n - 1]))
            for name, a, b in pairs:
                if a.shape != b.shape:
                    raise AvesConversionError(f"{out_dir}: hidden state shape {tuple(a.shape)} != {name} reference "
                                              f"{tuple(b.shape)}")
                diff = (a - b).abs().max().item()
                if not diff <= worst:  # also keeps NaN
                    worst, worst_name = diff, name
                scale = max(scale, b.abs().max().item())
    if not worst <= CHECK_RTOL * scale:  # also catches NaN
        raise AvesConversionError(f"{out_dir}: converted model differs from the {worst_name} reference: max abs "
                                  f"diff {worst:.3g} > {CHECK_RTOL * scale:.3g}; the conversion is wrong, nothing kept")
    return worst, CHECK_RTOL * scale


# ---------------------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------------------

def _sibling_config(checkpoint: Path) -> Path | None:
    """AVES' naming: ``x.torchaudio.pt`` comes with ``x.torchaudio.model_config.json``."""
    candidate = checkpoint.with_name(checkpoint.stem + ".model_config.json")
    return candidate if candidate.is_file() else None


def resolve_config(checkpoint: Path, layout: str, stored_cfg: dict | None,
                   config_path: str | Path | None) -> tuple[dict[str, Any], str]:
    """TorchAudio-style architecture arguments and where they came from (explicit JSON > checkpoint cfg > sibling
    ``*.model_config.json``)."""
    if config_path is not None:
        return read_config_json(config_path), str(config_path)
    if stored_cfg is not None:
        return torchaudio_config_from_fairseq(stored_cfg), "checkpoint cfg"
    sibling = _sibling_config(checkpoint) if layout == "torchaudio" else None
    if sibling is not None:
        return read_config_json(sibling), str(sibling)
    expected = f" (looked for {checkpoint.stem}.model_config.json beside it)" if layout == "torchaudio" else ""
    raise AvesConversionError(f"{checkpoint}: a {layout} state dict without its architecture{expected}; pass "
                              "--config with the model config JSON (AVES publishes aves-base-bio.torchaudio."
                              "model_config.json)")


def convert_aves(checkpoint: str | Path, out_dir: str | Path | None = None, *, config_path: str | Path | None = None,
                 overwrite: bool = False, progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert an AVES (or any HuBERT) fairseq/TorchAudio checkpoint into a Hugging Face directory at ``out_dir``
    (default ``default_aves_dir()``), verified numerically before it appears there.

    The directory is built in a temporary sibling and renamed into place only after the check passes; an existing
    ``out_dir`` is replaced only with ``overwrite=True``.
    """
    import torch
    from transformers import HubertModel, Wav2Vec2FeatureExtractor

    say = progress or (lambda message: None)
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir is not None else default_aves_dir()
    if out_dir.exists() and not overwrite:
        raise AvesConversionError(f"{out_dir} already exists; pass --force (overwrite=True) to replace it")

    say(f"reading {checkpoint}")
    state, stored_cfg = split_checkpoint(load_checkpoint(checkpoint), checkpoint)
    layout = detect_layout(state, checkpoint)
    ta_config, config_source = resolve_config(checkpoint, layout, stored_cfg, config_path)
    config = hubert_config_from_torchaudio(ta_config, mask_embedding="mask_emb" in state)
    say(f"{layout} layout, {config.num_hidden_layers} layers, hidden size {config.hidden_size} "
        f"(config: {config_source})")

    torch.manual_seed(0)  # the fresh model's init is overwritten entirely; seeded anyway so nothing is left to chance
    model = HubertModel(config).eval()
    mapped, dropped = map_state_dict(state, layout, model.state_dict(), config.feat_extract_norm, checkpoint)
    inverse_bad = [k for k in mapped if source_to_hf_name(
        hf_to_source_name(_canonical(k), layout, config.feat_extract_norm), layout,
        config.feat_extract_norm) != _canonical(k)]
    if inverse_bad:  # the two hand-written mappings disagree: a bug in this module, not in the checkpoint
        raise AvesConversionError(f"internal: key mapping is not invertible for {', '.join(inverse_bad)}")
    model.load_state_dict(mapped, strict=True)

    by_source_name = {_canonical(k): v for k, v in state.items()}  # weight norm under either naming

    def source_get(hf_name: str) -> torch.Tensor:
        return by_source_name[hf_to_source_name(hf_name, layout, config.feat_extract_norm)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        say(f"writing {out_dir}")
        model.save_pretrained(str(tmp), safe_serialization=True)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                 return_attention_mask=False).save_pretrained(str(tmp))
        torchaudio_model, why_not = _torchaudio_reference(ta_config, layout, state, mapped)
        reference = "functional+torchaudio" if torchaudio_model is not None else f"functional ({why_not})"
        say(f"checking hidden states against the reference: {reference}")
        max_diff, tolerance = verify_directory(tmp, ta_config, source_get, torchaudio_model)
        report = ConversionReport(
            source=str(checkpoint), source_sha256=file_sha256(checkpoint), layout=layout, config_source=config_source,
            out_dir=str(out_dir), num_tensors=len(mapped), dropped=dropped, reference=reference,
            max_abs_diff=max_diff, tolerance=tolerance)
        atomic_write_text(tmp / "conversion.json", report.to_json())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return report
