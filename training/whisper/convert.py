"""Convert a Whisper checkpoint (faster-whisper / CTranslate2 folder, or OpenAI's ``.pt``) into a Hugging Face
``WhisperForConditionalGeneration`` folder (``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``
+ ``conversion.json``) that ``WhisperModel.from_pretrained`` and the study load.

Strict and checked: every source tensor must be mapped (``key_map``), every transformers tensor filled with the
right shape; the written folder is reloaded and its encoder output, on a fixed log-mel input, compared with the
functional encoder of ``reference`` reading the source tensors, and with CTranslate2's own ``encode`` when
ctranslate2 is importable and the source is a CTranslate2 folder. The folder appears at ``out_dir`` only after the
checks pass.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from vocalprobe import __version__
from vocalprobe.runtime.core.atomic import atomic_write_text, replace_folder
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.training.whisper import reference
from vocalprobe.training.whisper.config import ENGLISH_VOCAB, whisper_config
from vocalprobe.training.whisper.ct2_file import WhisperConversionError
from vocalprobe.training.whisper.key_map import check_complete, map_ct2, map_openai
from vocalprobe.training.whisper.sources import read_source

DEFAULT_MODELS_DIR = Path("artifacts/models")  # relative to the working directory, like aves-bio
#: max |converted - reference| / max |reference| each check allows (measured figures: docs/whisper.md). The
#: functional check runs the reloaded encoder in float64, so only a mapping or config error can exceed its bound;
#: ctranslate2 runs in float32, whose rounding over 1500 frames reaches ~1e-4 of the output's peak.
TOLERANCES = {"functional": 1e-9, "ctranslate2": 1e-3}
_SIZES = {(384, 4): "tiny", (512, 6): "base", (768, 12): "small", (1024, 24): "medium", (1280, 32): "large"}


@dataclass(frozen=True)
class ConversionReport:
    """What ``convert_whisper`` did; also written as ``conversion.json`` in the output folder."""

    source: str
    source_sha256: str  # of model.bin or the .pt
    layout: str  # "ctranslate2" or "openai"
    name: str  # e.g. whisper-tiny.en (from the sizes; the default folder name)
    out_dir: str
    num_tensors: int  # source tensors consumed
    checks: dict[str, float]  # reference name -> relative max difference of the encoder output
    skipped: dict[str, str]  # reference name -> why it did not run
    tolerances: dict[str, float]
    vocalprobe_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def model_name(config) -> str:
    """``whisper-<size>[.en]`` from the encoder's width and depth (``-v3`` for the 128-mel large models)."""
    size = _SIZES.get((config.d_model, config.encoder_layers), f"{config.d_model}x{config.encoder_layers}")
    size += "-v3" if config.num_mel_bins == 128 else ""
    return f"whisper-{size}" + (".en" if config.vocab_size == ENGLISH_VOCAB else "")


def convert_whisper(path: str | Path, out_dir: str | Path | None = None, *, overwrite: bool = False,
                    progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Convert ``path`` into a transformers Whisper folder at ``out_dir`` (default
    ``artifacts/models/<model_name>``), verified before it appears there; an existing folder is replaced only with
    ``overwrite=True``."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel

    say = progress or (lambda message: None)
    if out_dir is not None and Path(out_dir).exists() and not overwrite:  # before reading a large checkpoint
        raise WhisperConversionError(f"{out_dir} already exists; pass --force (overwrite=True) to replace it")
    say(f"reading {path}")
    source = read_source(path)
    mapped, used = (map_ct2 if source.layout == "ctranslate2" else map_openai)(source.tensors)
    config = whisper_config(mapped, encoder_heads=source.encoder_heads, decoder_heads=source.decoder_heads,
                            where=str(source.path))
    name = model_name(config)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_MODELS_DIR / name
    if out_dir.exists() and not overwrite:
        raise WhisperConversionError(f"{out_dir} already exists; pass --force (overwrite=True) to replace it")
    say(f"{source.layout} layout: {name}, {config.encoder_layers}+{config.decoder_layers} layers, "
        f"d_model {config.d_model}")

    torch.manual_seed(0)  # every weight is overwritten; seeded anyway
    model = WhisperForConditionalGeneration(config).eval()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "proj_out.weight"}  # tied
    check_complete(mapped, used, source.tensors, expected, str(source.path))
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in mapped.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        say(f"writing {out_dir}")
        model.save_pretrained(str(tmp), safe_serialization=True)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(str(tmp))
        if source.folder is not None and (source.folder / "tokenizer.json").is_file():
            shutil.copyfile(source.folder / "tokenizer.json", tmp / "tokenizer.json")
        del model, state

        say("checking the encoder output against the references")
        features = reference.check_features(config.num_mel_bins)
        reloaded = WhisperModel.from_pretrained(str(tmp)).eval()
        checks, skipped = {}, {}
        if source.folder is not None:
            ct2 = reference.ctranslate2_encoder(source.folder, features)
            if isinstance(ct2, str):
                skipped["ctranslate2"] = ct2
            else:
                with torch.no_grad():
                    ours = reloaded.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
                checks["ctranslate2"] = reference.relative_difference(ours, ct2)
        getter = (reference.ct2_getter if source.layout == "ctranslate2" else reference.openai_getter)(source.tensors)
        functional = reference.functional_encoder(getter, config.encoder_layers, config.encoder_attention_heads,
                                                  torch.from_numpy(features)).numpy()
        encoder64 = reloaded.encoder.double()
        with torch.no_grad():
            ours64 = encoder64(torch.from_numpy(features).double()).last_hidden_state.numpy()
        checks["functional"] = reference.relative_difference(ours64, functional)
        del reloaded, encoder64
        failed = {k: v for k, v in checks.items() if not v <= TOLERANCES[k]}
        if failed:
            raise WhisperConversionError(
                f"{source.path}: the converted encoder disagrees with "
                + ", ".join(f"{k} (relative max difference {v:.2e} > {TOLERANCES[k]:.0e})" for k, v in failed.items())
                + "; the checkpoint does not fit transformers' Whisper")
        report = ConversionReport(
            source=str(path), source_sha256=file_sha256(source.path), layout=source.layout, name=name,
            out_dir=str(out_dir), num_tensors=len(used), checks=checks, skipped=skipped,
            tolerances=TOLERANCES)
        atomic_write_text(tmp / "conversion.json", report.to_json())
        replace_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return report
