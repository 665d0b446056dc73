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

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vocalprobe import __version__
from vocalprobe.runtime.core.atomic import atomic_write_text, replace_folder
from vocalprobe.runtime.core.digests import file_sha256
from vocalprobe.training.backbones import AVES_DIR_ENV, DEFAULT_AVES_DIR, aves_dir  # noqa: F401 (re-exported)
from vocalprobe.training.aves.checkpoints import (
    AvesConversionError,
    detect_layout,
    hubert_config_from_torchaudio,
    load_checkpoint,
    read_config_json,
    split_checkpoint,
    torchaudio_config_from_fairseq,
)
from vocalprobe.training.aves.key_map import canonical_name, hf_to_source_name, map_state_dict, source_to_hf_name
from vocalprobe.training.aves.reference import torchaudio_reference, verify_directory

if TYPE_CHECKING:  # torch/transformers are imported inside functions: importing this module stays cheap
    import torch


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
        hf_to_source_name(canonical_name(k), layout, config.feat_extract_norm), layout,
        config.feat_extract_norm) != canonical_name(k)]
    if inverse_bad:  # the two hand-written mappings disagree: a bug in this module, not in the checkpoint
        raise AvesConversionError(f"internal: key mapping is not invertible for {', '.join(inverse_bad)}")
    model.load_state_dict(mapped, strict=True)

    by_source_name = {canonical_name(k): v for k, v in state.items()}  # weight norm under either naming

    def source_get(hf_name: str) -> torch.Tensor:
        return by_source_name[hf_to_source_name(hf_name, layout, config.feat_extract_norm)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        say(f"writing {out_dir}")
        model.save_pretrained(str(tmp), safe_serialization=True)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                 return_attention_mask=False).save_pretrained(str(tmp))
        torchaudio_model, why_not = torchaudio_reference(ta_config, layout, state, mapped)
        reference = "functional+torchaudio" if torchaudio_model is not None else f"functional ({why_not})"
        say(f"checking hidden states against the reference: {reference}")
        max_diff, tolerance = verify_directory(tmp, ta_config, source_get, torchaudio_model)
        report = ConversionReport(
            source=str(checkpoint), source_sha256=file_sha256(checkpoint), layout=layout, config_source=config_source,
            out_dir=str(out_dir), num_tensors=len(mapped), dropped=dropped, reference=reference,
            max_abs_diff=max_diff, tolerance=tolerance)
        atomic_write_text(tmp / "conversion.json", report.to_json())
        replace_folder(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return report
