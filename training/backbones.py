"""Backbones: the paper's seven foundation models by name, and loading any HuBERT / wav2vec2 / WavLM checkpoint.

``load_backbone`` accepts a registry name (``hubert``, ``aves-bio``...), a Hugging Face hub id or a local
directory written by ``save_pretrained``. It reads the config's ``model_type``, builds the *base* model of that
family (a fine-tuned ``*ForCTC`` checkpoint loads its encoder; the CTC head is ignored) and refuses a checkpoint
whose weights do not cover the model, instead of letting transformers fill the gap with random weights.

``make_tiny_checkpoint`` writes a real, randomly initialised, tiny checkpoint of any family: the tests and the
embedded default study use it (it is labelled untrained in its config and README).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.digests import update_with_file
from vocalprobe.runtime.core.errors import VocalprobeError

if TYPE_CHECKING:  # torch and transformers are imported lazily: importing this module stays cheap
    import torch

FAMILIES = ("hubert", "wav2vec2", "wavlm")
AVES_DIR_ENV = "VOCALPROBE_AVES_DIR"
DEFAULT_AVES_DIR = Path("artifacts/models/aves-bio")  # relative to the working directory
#: Weights that a base model may lack without consequence in eval mode (only used for SpecAugment in training).
_HARMLESS_MISSING = ("masked_spec_embed",)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class BackboneError(VocalprobeError):
    """A backbone name, hub id or folder that cannot be loaded as a supported foundation model."""


@dataclass(frozen=True)
class BackboneSpec:
    """One row of the paper's Table II."""

    name: str  # registry name, e.g. "wav2vec2-100h"
    label: str  # the paper's name, e.g. "W2V2-100h"
    family: str  # hubert | wav2vec2 | wavlm
    hub_id: str | None  # None: a local folder (aves-bio)
    corpus: str  # pre-training (and fine-tuning) corpus as in Table II
    kind: str  # "PT" (self-supervised pre-training only) or "PT+FT" (then fine-tuned on ASR)
    params_m: float  # parameters in millions (Table II)
    dim: int  # hidden size D
    num_layers: int  # transformer layers
    local_dir: str | None = None  # a converted folder (relative to the working directory) preferred to the hub id

    @property
    def source(self) -> str:
        """Where the weights come from: the converted local folder when it exists, the hub id, or AVES' folder."""
        local = self.local_folder()
        if local is not None:
            return str(local)
        return self.hub_id if self.hub_id is not None else str(aves_dir())

    def local_folder(self) -> Path | None:
        """The local folder this name loads from, if any: AVES' folder, or a converted Whisper folder that exists
        (``vocalprobe convert-whisper`` writes artifacts/models/whisper-<size>[.en] by default)."""
        if self.hub_id is None:
            return aves_dir()
        if self.local_dir is not None and (Path(self.local_dir) / "config.json").is_file():
            return Path(self.local_dir)
        return None


REGISTRY: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec("aves-bio", "AVES-Bio", "hubert", None, "FSD, AS, Bio", "PT", 94.68, 768, 12),
        BackboneSpec("hubert", "HuBERT", "hubert", "facebook/hubert-base-ls960", "LS 960", "PT", 94.68, 768, 12),
        BackboneSpec("wav2vec2", "W2V2", "wav2vec2", "facebook/wav2vec2-base", "LS 960", "PT", 95.04, 768, 12),
        BackboneSpec("wav2vec2-100h", "W2V2-100h", "wav2vec2", "facebook/wav2vec2-base-100h", "LS 960", "PT+FT",
                     95.04, 768, 12),
        BackboneSpec("wav2vec2-960h", "W2V2-960h", "wav2vec2", "facebook/wav2vec2-base-960h", "LS 960", "PT+FT",
                     95.04, 768, 12),
        BackboneSpec("wavlm", "WavLM", "wavlm", "microsoft/wavlm-base", "LS 960", "PT", 94.38, 768, 12),
        BackboneSpec("wavlm-100h", "WavLM-100h", "wavlm", "patrickvonplaten/wavlm-libri-clean-100h-base", "LS 960",
                     "PT+FT", 94.38, 768, 12),
        # Whisper encoders (weakly supervised ASR on 680k h of web audio); params: OpenAI's whole-model counts.
        *(BackboneSpec(f"whisper-{size}{en}", f"Whisper-{size}{en}", "whisper", f"openai/whisper-{size}{en}",
                       "680k h web" + (" (English)" if en else ""), "ASR", params, dim, layers,
                       local_dir=f"artifacts/models/whisper-{size}{en}")
          for size, params, dim, layers in (("tiny", 39.0, 384, 4), ("base", 74.0, 512, 6), ("small", 244.0, 768, 12))
          for en in ("", ".en")),
    )
}


@contextlib.contextmanager
def _no_transformers_progress():
    """transformers draws a bar for every tiny load/save; our own progress bars say what is going on."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def aves_dir() -> Path:
    """The AVES-Bio folder (HF format): ``$VOCALPROBE_AVES_DIR`` if set, else ``artifacts/models/aves-bio``."""
    env = os.environ.get(AVES_DIR_ENV, "").strip()
    return Path(env) if env else DEFAULT_AVES_DIR


@dataclass(frozen=True)
class Backbone:
    """A loaded base model and where it came from (what caches, probe checkpoints and exports record)."""

    model: Any  # transformers HubertModel | Wav2Vec2Model | WavLMModel, in eval mode
    name: str  # the registry name, or the hub id / folder as given
    source: str  # hub id or resolved local folder
    revision: str | None  # the requested hub revision (None: default branch / local folder)
    family: str  # hubert | wav2vec2 | wavlm
    fingerprint: str  # sha256 of a local folder's config and weight files, or of a hub model's loaded weights
    spec: BackboneSpec | None  # the registry row, when loaded by registry name

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    def identity(self) -> dict:
        """JSON-able facts that pin what this backbone computes (used in cache keys and checkpoints)."""
        config = self.model.config.to_dict()
        for volatile in ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype",
                         "_attn_implementation_autoset", "_commit_hash"):
            config.pop(volatile, None)
        return {"name": self.name, "source": self.source, "revision": self.revision, "family": self.family,
                "fingerprint": self.fingerprint, "config": config}


def resolve_device(device: str = "auto") -> "torch.device":
    """``"auto"`` is cuda when available, else cpu; ``"cuda"`` without a GPU is an error, not a silent cpu run."""
    import torch

    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackboneError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
        return torch.device(text)
    raise BackboneError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and "\\" not in text


def _looks_like_local_path(text: str) -> bool:
    """A path, not a hub id: starts with ./ ../ / ~ or a drive, uses a backslash, has more than two parts, or its
    first part exists here (``bb/small-hubrt`` beside a folder ``bb``)."""
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or "\\" in text or Path(text).is_absolute():
        return True
    parts = text.split("/")
    return len(parts) > 2 or (len(parts) > 1 and Path(parts[0]).exists())


def _resolve_source(name_or_path: str | os.PathLike) -> tuple[str, str, BackboneSpec | None, bool]:
    """(display name, source, registry spec, is_local_dir) for a registry name, local folder or hub id."""
    text = str(name_or_path).strip()
    if not text:
        raise BackboneError("empty backbone name; expected one of " + ", ".join(REGISTRY) + ", a hub id or a folder")
    spec = REGISTRY.get(text.lower()) or REGISTRY.get(text.lower().removeprefix("openai/"))
    if spec is not None:
        local = spec.local_folder() if spec.hub_id is not None else None
        if local is not None:
            return spec.name, str(local.resolve()), spec, True
        if spec.hub_id is not None:
            return spec.name, spec.hub_id, spec, False
        folder = aves_dir()
        if not (folder / "config.json").is_file():
            raise BackboneError(
                f"{spec.name}: no converted checkpoint at {folder} (a folder with config.json and model weights "
                f"in Hugging Face format). Convert the AVES-Bio checkpoint into that folder (see the README's "
                f"AVES section), or point ${AVES_DIR_ENV} at an existing one")
        return spec.name, str(folder.resolve()), spec, True
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path}: folder has no config.json; expected a Hugging Face checkpoint folder "
                                "written by save_pretrained")
        return text, str(path.resolve()), None, True
    if path.exists():
        raise BackboneError(f"{path}: is a file; a backbone is a registry name, a hub id or a checkpoint folder")
    if _looks_like_local_path(text):
        raise BackboneError(f"backbone folder not found: {text} (it looks like a path, so it is not tried as a hub "
                            "id); check the spelling, or give a registry name or an owner/name hub id")
    if _looks_like_hub_id(text):
        return text, text, None, False
    raise BackboneError(f"unknown backbone {text!r}: not a registry name ({', '.join(REGISTRY)}), not an existing "
                        "folder, and not a hub id of the form owner/name")


def backbone_family(name_or_path: str | os.PathLike, *, revision: str | None = None) -> str:
    """The model_type of a backbone without loading its weights (registry entry, local config.json or hub config)."""
    display, source, spec, is_local = _resolve_source(name_or_path)
    if spec is not None:
        return spec.family
    if is_local:
        try:
            return str(json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))["model_type"])
        except (OSError, ValueError, KeyError) as exc:
            raise BackboneError(f"{display}: cannot read model_type from {source}/config.json: {exc}") from exc
    from transformers import AutoConfig

    try:
        return str(AutoConfig.from_pretrained(source, revision=revision).model_type)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{display}: cannot load the config of hub id {source!r}: {_first_line(exc)}") from exc


def _model_class(model_type: str, where: str):
    import transformers

    classes = {"hubert": transformers.HubertModel, "wav2vec2": transformers.Wav2Vec2Model,
               "wavlm": transformers.WavLMModel, "whisper": transformers.WhisperModel}  # whisper: encoder used
    if model_type not in classes:
        raise BackboneError(f"{where}: model_type {model_type!r} is not supported; vocalprobe handles the "
                            f"{', '.join(FAMILIES)} and whisper families")
    return classes[model_type]


def weights_fingerprint(folder: str | Path) -> str:
    """sha256 over a checkpoint folder's config and weight files (names and bytes)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name in _WEIGHT_FILES
                                       or (p.name.startswith("model-") and p.suffix == ".safetensors")))
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        update_with_file(digest, p)
    return digest.hexdigest()


def state_dict_fingerprint(model) -> str:
    """sha256 over a model's parameter names, dtypes, shapes and bytes (for hub models, whose files live in the
    transformers cache): a hub repository that changes its weights changes the fingerprint."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_backbone(name_or_path: str | os.PathLike, *, revision: str | None = None, device: str = "cpu",
                  local_files_only: bool = False) -> Backbone:
    """Load a foundation model's base (no CTC head) in eval mode.

    ``name_or_path``: a registry name (see ``REGISTRY``), a hub id (``owner/name``) or a local checkpoint folder.
    ``revision``: hub branch, tag or commit (rejected for local folders, where it would be ignored).
    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. ``local_files_only``: never touch the network.
    """
    from transformers import AutoConfig

    display, source, spec, is_local = _resolve_source(name_or_path)
    if is_local and revision is not None:
        raise BackboneError(f"{display}: --revision only applies to hub ids, not to the local folder {source}")
    torch_device = resolve_device(device)
    kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        where = "folder" if is_local else "hub id"
        raise BackboneError(f"{display}: cannot load the config of {where} {source!r}"
                            f"{'' if revision is None else f' at revision {revision!r}'}: {_first_line(exc)}. "
                            "If you are offline, download the model once or pass a local folder") from exc
    model_class = _model_class(getattr(config, "model_type", None), display)
    try:
        with _no_transformers_progress():
            model, info = model_class.from_pretrained(source, config=config, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BackboneError(f"{display}: cannot load the weights from {source!r}: {_first_line(exc)}") from exc
    missing = [k for k in info.get("missing_keys", ()) if not any(h in k for h in _HARMLESS_MISSING)]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        shown = ", ".join(map(str, (missing + mismatched)[:5]))
        raise BackboneError(f"{display}: the checkpoint does not match a {config.model_type} model "
                            f"({len(missing)} missing, {len(mismatched)} mismatched weights, e.g. {shown}); "
                            "refusing to fill them with random values")
    model.eval()
    model.to(torch_device)
    if spec is not None and spec.family != config.model_type:
        raise BackboneError(f"{display}: expected a {spec.family} checkpoint, found model_type {config.model_type!r}")
    fingerprint = weights_fingerprint(source) if is_local else state_dict_fingerprint(model)
    return Backbone(model=model, name=display, source=source, revision=revision, family=config.model_type,
                    fingerprint=fingerprint, spec=spec)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tiny_config(family: str, *, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                intermediate_size: int = 64, conv_channels: int = 32, stable_layer_norm: bool = False,
                vocab_size: int = 8):
    """A small config of ``family`` with the base models' real CNN geometry (7 convs, 20 ms frames, 400-sample
    field)."""
    import transformers

    classes = {"hubert": transformers.HubertConfig, "wav2vec2": transformers.Wav2Vec2Config,
               "wavlm": transformers.WavLMConfig}
    if family not in classes:
        raise BackboneError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    kwargs = dict(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        intermediate_size=intermediate_size, conv_dim=(conv_channels,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=stable_layer_norm, feat_extract_norm="layer" if stable_layer_norm else "group",
        vocab_size=vocab_size,
    )
    if family == "wavlm":
        kwargs.update(num_buckets=32, max_bucket_distance=64)
    return classes[family](**kwargs)


def make_tiny_checkpoint(family: str, out_dir: str | Path, *, seed: int = 0, hidden_size: int = 32,
                         num_layers: int = 2, stable_layer_norm: bool = False, num_heads: int = 2,
                         intermediate_size: int = 64, conv_channels: int = 32, ctc: bool = False) -> Path:
    """Save a randomly initialised (untrained) tiny checkpoint of ``family`` to ``out_dir``; returns the folder.

    ``ctc=True`` saves a ``*ForCTC`` model, as the fine-tuned checkpoints are, to exercise head-dropping loads.
    The same seed and arguments give the same weights. The folder gets a README saying the weights are random.
    """
    import torch
    import transformers

    config = tiny_config(family, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         intermediate_size=intermediate_size, conv_channels=conv_channels,
                         stable_layer_norm=stable_layer_norm)
    config.vocalprobe_untrained = True
    config.vocalprobe_note = "random weights from vocalprobe.training.backbones.make_tiny_checkpoint; not trained"
    names = {"hubert": "Hubert", "wav2vec2": "Wav2Vec2", "wavlm": "WavLM"}
    model_class = getattr(transformers, f"{names[family]}{'ForCTC' if ctc else 'Model'}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _no_transformers_progress():
        model.save_pretrained(out_dir, safe_serialization=True)
    recipe = dict(family=family, seed=seed, hidden_size=hidden_size, num_layers=num_layers,
                  stable_layer_norm=stable_layer_norm, ctc=ctc)
    atomic_write_text(out_dir / "README.md", (
        f"# Tiny untrained {family} checkpoint\n\n"
        "Randomly initialised weights (not trained on anything), written by "
        "`vocalprobe.training.backbones.make_tiny_checkpoint` for tests and the embedded demo study.\n\n"
        f"```json\n{json.dumps(recipe, indent=2)}\n```\n"))
    return out_dir
