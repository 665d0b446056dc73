"""Packed frames: clips of different lengths share one ``LayerFeatures`` pass, each keeping its solo features.

Extraction runs one clip per forward (zero padding would change the features: ``features``' docstring), so every
transformer Linear sees M = one clip's frames and runs weight-bandwidth bound. Most of a layer treats each frame on
its own: the feature projection, q/k/v/out projections, the feed-forward, LayerNorms, GELU and residual adds. Those
run here on the frames of many clips stacked into one ``[frames, D]`` matrix; only what mixes frames runs per clip:
the CNN (its GroupNorm normalises over one clip's frames), the positional convolution (zero padding at the clip's
edges) and attention (softmax over one clip's frames, through the same attention function and scaling transformers
uses). Every op is the one ``LayerFeatures.hidden_states`` calls, so a clip's statistics equal its solo run up to
GEMM rounding (none at all where the BLAS computes a row independently of the others: docs/features.md).

The positional convolution's weight-normed weight is computed once here instead of on every call (the same
numbers); the shared backbone is not modified, so ``LayerFeatures`` and its export stay as they are.

WavLM (gated relative position bias inside ``torch``'s fused attention) and anything else ``supports`` rejects run
clip by clip through ``LayerFeatures.frame_stats``, with the same results as before.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from vocalprobe.training.features import FrameStats, LayerFeatures, conv_frames

__all__ = ["DEFAULT_MAX_FRAMES", "PackedFeatures"]

#: Frames per pack: large enough that the GEMMs run near the CPU's rate, small enough to bound memory (each
#: layer's hidden state is ``max_frames x D`` float32, the FFN's ``max_frames x 4D``).
DEFAULT_MAX_FRAMES = 2048


class PackedFeatures:
    """Frame statistics / features of many preprocessed clips of any lengths, packed (see the module docs).

    ``module``: the ``LayerFeatures`` whose results to reproduce (its layers, max_layer and conventions).
    ``max_frames``: frames per pack; a clip with more frames forms a pack of its own. The positional conv weight is
    read once, here: build a new runner after changing the model's weights.
    """

    def __init__(self, module: LayerFeatures, max_frames: int = DEFAULT_MAX_FRAMES):
        if max_frames < 1:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        self.module, self.max_frames = module, int(max_frames)
        self._convs = [(layer.conv.kernel_size[0], layer.conv.stride[0])
                       for layer in module.feature_extractor.conv_layers]
        self.packed = self.supports(module)
        if self.packed:
            conv = module.pos_conv_embed.conv
            with torch.no_grad():
                # weight_norm recomputes this on every forward; materialised once, it is the same tensor
                self._pos_weight = conv.weight.detach().clone()
            self._functions = [self._attention_function(block.attention) for block in module.blocks]

    @staticmethod
    def supports(module: LayerFeatures) -> bool:
        """Whether ``module``'s layers are the post-LN or pre-LN (stable-layer-norm) hubert / wav2vec2 layers this
        reproduces; anything else runs clip by clip."""
        if module.family not in ("hubert", "wav2vec2") or module.training:
            return False
        expected = {"attention", "dropout", "layer_norm", "feed_forward", "final_layer_norm"}
        for block in module.blocks:
            names = {name for name, _ in block.named_children()}
            if names - {"adapter_layer"} != expected:
                return False
            if not module.stable_layer_norm and getattr(block, "adapter_layer", None) is not None:
                return False
            attn = block.attention
            if getattr(attn, "is_decoder", False) or getattr(attn, "is_causal", False):
                return False
        return True

    @staticmethod
    def _attention_function(attn):
        """The function the attention module itself calls (transformers' interface for its implementation)."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        eager = inspect.getmodule(type(attn)).eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)

    # -- public ---------------------------------------------------------------------------------------------------
    def frames(self, n_samples: int) -> int:
        """Frames the CNN makes from a preprocessed clip of ``n_samples`` samples."""
        return conv_frames(n_samples, self._convs)

    def features(self, waveforms: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw clips (1-D, 16 kHz, each at most one chunk) -> per clip ``[n_layers, 2D]`` float32, as
        ``LayerFeatures.forward`` of that clip alone computes them."""
        out = []
        for stats in self.frame_stats([self.module.preprocess(w.reshape(1, -1))[0] for w in waveforms]):
            std = (stats.m2 / stats.count).sqrt()  # as LayerFeatures.forward
            out.append(torch.cat([stats.mean, std], dim=-1)[0])
        return out

    def frame_stats(self, waveforms: Sequence[torch.Tensor]) -> list[FrameStats]:
        """PREPROCESSED clips (1-D each) -> one batch-1 ``FrameStats`` per clip, in order; packs of at most
        ``max_frames`` frames (consecutive clips), so the result does not depend on how the caller groups them
        except through GEMM rounding."""
        if not self.packed:
            return [self.module.frame_stats(w.reshape(1, -1)) for w in waveforms]
        results: list[FrameStats] = []
        pack: list[torch.Tensor] = []
        frames = 0
        for waveform in waveforms:
            n = self.frames(waveform.shape[-1])
            if pack and frames + n > self.max_frames:
                results.extend(self._pack(pack))
                pack, frames = [], 0
            pack.append(waveform.reshape(-1))
            frames += n
        if pack:
            results.extend(self._pack(pack))
        return results

    # -- one pack -------------------------------------------------------------------------------------------------
    def _pack(self, waveforms: list[torch.Tensor]) -> list[FrameStats]:
        module = self.module
        # per clip: CNN (GroupNorm over the clip) -> frames x conv channels
        conv = [module.feature_extractor(w[None]).transpose(1, 2)[0] for w in waveforms]
        lengths = [c.shape[0] for c in conv]
        bounds = []
        start = 0
        for n in lengths:
            bounds.append((start, start + n))
            start += n
        projected = module.feature_projection(torch.cat(conv)[None])
        hidden = (projected[0] if isinstance(projected, tuple) else projected)[0]  # (frames, D)
        hidden = hidden + torch.cat([self._pos_conv(hidden[s:e]) for s, e in bounds])
        if module.input_layer_norm is not None:
            hidden = module.input_layer_norm(hidden)
        wanted = set(module.layers)
        stats: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        if 0 in wanted:
            stats[0] = self._segment_stats(hidden, bounds)
        for index, block in enumerate(module.blocks):
            hidden = self._block(index, block, hidden, bounds)
            if index + 1 in wanted:
                stats[index + 1] = self._segment_stats(hidden, bounds)
        results = []
        for clip, n in enumerate(lengths):
            mean = torch.stack([stats[layer][clip][0] for layer in module.layers])[None]  # (1, layers, D)
            m2 = torch.stack([stats[layer][clip][1] for layer in module.layers])[None]
            results.append(FrameStats(n, mean, m2))
        return results

    def _pos_conv(self, hidden: torch.Tensor) -> torch.Tensor:
        """The positional conv embedding of ONE clip ``[frames, D]`` (its zero padding at this clip's edges)."""
        pos = self.module.pos_conv_embed
        x = hidden[None].transpose(1, 2)
        if getattr(pos, "batch_norm", None) is not None:
            x = pos.batch_norm(x)
        x = pos.conv._conv_forward(x, self._pos_weight, pos.conv.bias)
        x = pos.activation(pos.padding(x))
        return x.transpose(1, 2)[0]

    def _attention(self, index: int, attn, hidden: torch.Tensor, bounds) -> torch.Tensor:
        """Self-attention of each clip's frames among themselves; projections on the packed frames."""
        shape = (-1, attn.head_dim)
        query, key, value = attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden)
        function = self._functions[index]
        outputs = []
        for s, e in bounds:
            q = query[s:e][None].view(1, e - s, *shape).transpose(1, 2)
            k = key[s:e][None].view(1, e - s, *shape).transpose(1, 2)
            v = value[s:e][None].view(1, e - s, *shape).transpose(1, 2)
            out, _ = function(attn, q, k, v, None, dropout=0.0, scaling=attn.scaling, output_attentions=False)
            outputs.append(out.reshape(e - s, -1))
        return attn.out_proj(torch.cat(outputs))

    def _block(self, index: int, block, hidden: torch.Tensor, bounds) -> torch.Tensor:
        """One encoder layer, as transformers' EncoderLayer / EncoderLayerStableLayerNorm forward (eval mode)."""
        if self.module.stable_layer_norm:
            hidden = hidden + self._attention(index, block.attention, block.layer_norm(hidden), bounds)
            hidden = hidden + block.feed_forward(block.final_layer_norm(hidden))
            if getattr(block, "adapter_layer", None) is not None:
                hidden = hidden + block.adapter_layer(hidden)
            return hidden
        hidden = block.layer_norm(hidden + self._attention(index, block.attention, hidden, bounds))
        hidden = hidden + block.feed_forward(hidden)
        return block.final_layer_norm(hidden)

    @staticmethod
    def _segment_stats(hidden: torch.Tensor, bounds) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per clip: mean and sum of squared deviations over its frames (as ``LayerFeatures.frame_stats``)."""
        out = []
        for s, e in bounds:
            frames = hidden[s:e].float()
            mean = frames.mean(dim=0)
            out.append((mean, (frames - mean).square().sum(dim=0)))
        return out
