"""The transformers ``WhisperConfig`` of a checkpoint: sizes read off its tensors, head counts from the source's
own record (CTranslate2 ``num_heads`` scalars, OpenAI ``dims``), special tokens from the vocabulary size."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping

import numpy as np

from vocalprobe.training.whisper.ct2_file import WhisperConversionError

if TYPE_CHECKING:
    from transformers import WhisperConfig

# OpenAI's rule (whisper/model.py is_multilingual): the English-only vocabulary has 51864 tokens.
ENGLISH_VOCAB = 51864
# CTranslate2 scalars -> the value this conversion requires (None: any value, decoding-only metadata)
CT2_SCALARS = {
    "encoder/num_heads": None, "decoder/num_heads": None,
    "decoder/activation": 3,  # common_spec.Activation.GELU
    "decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/alibi_use_positive_positions": 0, "decoder/scale_alibi": 0,
    "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_heads": None, "decoder/alignment_layer": None,
}


def check_ct2_scalars(scalars: Mapping[str, int | float], where: str) -> None:
    """Refuse scalars this conversion does not know, and known ones set to something transformers cannot run."""
    unknown = sorted(set(scalars) - set(CT2_SCALARS))
    if unknown:
        raise WhisperConversionError(f"{where}: unknown CTranslate2 options {', '.join(unknown)}; this converter "
                                     "knows WhisperSpec revision 3 as ctranslate2 4.x writes it")
    wrong = [f"{k}={scalars[k]} (needs {v})" for k, v in CT2_SCALARS.items()
             if v is not None and k in scalars and scalars[k] != v]
    if wrong:
        raise WhisperConversionError(f"{where}: options transformers' Whisper cannot reproduce: {', '.join(wrong)}")
    missing = [k for k in ("encoder/num_heads", "decoder/num_heads") if k not in scalars]
    if missing:
        raise WhisperConversionError(f"{where}: lacks {', '.join(missing)}")


def _layers(mapped: Mapping[str, np.ndarray], side: str) -> int:
    found = {int(m.group(1)) for k in mapped if (m := re.match(rf"model\.{side}\.layers\.(\d+)\.", k))}
    if found != set(range(len(found))):
        raise WhisperConversionError(f"{side} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def whisper_config(mapped: Mapping[str, np.ndarray], *, encoder_heads: int, decoder_heads: int,
                   where: str) -> WhisperConfig:
    """Build the config from the mapped tensors' shapes (``mapped`` uses transformers' names)."""
    from transformers import WhisperConfig

    try:
        conv1 = mapped["model.encoder.conv1.weight"]
        vocab, d_model = mapped["model.decoder.embed_tokens.weight"].shape
        sizes = dict(
            d_model=int(conv1.shape[0]), num_mel_bins=int(conv1.shape[1]), vocab_size=int(vocab),
            encoder_layers=_layers(mapped, "encoder"), decoder_layers=_layers(mapped, "decoder"),
            encoder_ffn_dim=int(mapped["model.encoder.layers.0.fc1.weight"].shape[0]),
            decoder_ffn_dim=int(mapped["model.decoder.layers.0.fc1.weight"].shape[0]),
            max_source_positions=int(mapped["model.encoder.embed_positions.weight"].shape[0]),
            max_target_positions=int(mapped["model.decoder.embed_positions.weight"].shape[0]))
    except KeyError as exc:
        raise WhisperConversionError(f"{where}: not a Whisper checkpoint (no tensor for {exc.args[0]})") from None
    for heads, side in ((encoder_heads, "encoder"), (decoder_heads, "decoder")):
        if heads < 1 or sizes["d_model"] % heads:
            raise WhisperConversionError(f"{where}: {heads} {side} heads do not divide d_model {sizes['d_model']}")
    end = 50256 if vocab == ENGLISH_VOCAB else 50257  # <|endoftext|>; <|startoftranscript|> follows it
    return WhisperConfig(**sizes, encoder_attention_heads=encoder_heads, decoder_attention_heads=decoder_heads,
                         bos_token_id=end, eos_token_id=end, pad_token_id=end, decoder_start_token_id=end + 1,
                         begin_suppress_tokens=[220, end],
                         activation_function="gelu", scale_embedding=False, tie_word_embeddings=True)
