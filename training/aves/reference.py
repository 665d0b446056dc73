"""The conversion's proof: a functional HuBERT forward pass (fairseq semantics) over the *source* tensors, compared
with the converted directory's hidden states (and TorchAudio's own model when it is installed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vocalprobe.training.aves.checkpoints import AvesConversionError
from vocalprobe.training.aves.key_map import TORCHAUDIO_DROPPED, canonical_name, hf_to_source_name

if TYPE_CHECKING:  # torch/transformers are imported inside functions: importing this module stays cheap
    import torch


# Absolute tolerance of the hidden-state check, relative to the largest reference activation (both run in float64,
# so a correct conversion lands near 1e-12; any mapping or config error is orders of magnitude above this).
CHECK_RTOL = 1e-6
_CHECK_SECONDS = (1.0, 0.37)  # two input lengths (the second is odd-sized) of seeded noise at 16 kHz


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


def torchaudio_reference(arch: Mapping[str, Any], layout: str, source: Mapping[str, torch.Tensor],
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
    by_canonical = {canonical_name(k): k for k in model.state_dict()}
    if layout == "torchaudio":
        pairs = [(k, v) for k, v in source.items() if k not in TORCHAUDIO_DROPPED]
    else:
        pairs = [(hf_to_source_name(canonical_name(k), "torchaudio", ""), v) for k, v in mapped.items()
                 if k != "masked_spec_embed"]
    state = {}
    for key, tensor in pairs:
        ta_key = by_canonical.get(canonical_name(key))
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


