"""What defines a study: its config (datasets, backbones, layers, seeds, probe settings), read from TOML or flags.

``StudyConfig`` is a plain frozen dataclass; ``to_dict``/``from_dict``/``from_toml``/``to_toml`` round-trip it, so the
``study.toml`` saved beside the results reproduces the study.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.training.probe import ProbeConfig

DEFAULT_OUT_ROOT = Path("artifacts/studies")
DEFAULT_CACHE_DIR = Path("artifacts/cache/features")


class StudyError(VocalprobeError):
    """A study configuration or a dataset that the study cannot run on."""


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # shown in tables and used as a folder name
    manifest: Path  # a manifest with train/val/test splits


@dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study. Relative paths are relative to the working directory."""

    name: str  # folder name under out_root
    datasets: tuple[DatasetSpec, ...]
    backbones: tuple[str, ...]  # registry names (see training.backbones.REGISTRY), hub ids or checkpoint folders
    layers: tuple[int, ...] | None = None  # None: every layer, 0 (transformer input) .. N
    seeds: int = 3  # each probe is trained with seeds base_seed .. base_seed + seeds - 1
    base_seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (backbone and probes)
    out_root: Path = DEFAULT_OUT_ROOT
    cache_dir: Path | None = DEFAULT_CACHE_DIR  # feature cache (None: no cache)
    chunk_seconds: float = 20.0  # long clips go through the backbone in chunks of this length
    batch_size: int = 8  # clips per backbone forward pass
    dtype: str = "float32"  # backbone precision: float32, or bfloat16 / float16 on a GPU (difference reported)
    bootstrap_resamples: int = 1000  # for the Test-UAR confidence intervals
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # seed and device are set per probe by the study
    description: str = ""  # free text at the top of report.md
    untrained_backbones: bool = False  # the embedded demo: the report says the scores say nothing about the paper
    folds: int = 0  # K >= 2: K-fold cross-validation over groups (``study.folds``) instead of the manifest's splits

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or "\\" in self.name or self.name in {".", ".."}:
            raise StudyError(f"study name must be a plain folder name, got {self.name!r}")
        if not self.datasets:
            raise StudyError("a study needs at least one dataset (--data MANIFEST)")
        if not self.backbones:
            raise StudyError("a study needs at least one backbone (--backbone NAME_OR_FOLDER)")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise StudyError(f"dataset names must be unique, got {names}; name them in a --config file")
        if len(set(self.backbones)) != len(self.backbones):
            raise StudyError(f"backbones are listed twice: {list(self.backbones)}")
        labels = [backbone_label(b) for b in self.backbones]
        if len(set(labels)) != len(labels):
            raise StudyError(f"two backbones would share the name {labels}; rename a checkpoint folder")
        if self.seeds < 1:
            raise StudyError(f"seeds must be >= 1, got {self.seeds}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0
                                        or len(set(self.layers)) != len(self.layers)):
            raise StudyError(f"layers must be distinct non-negative layer numbers, got {list(self.layers)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise StudyError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if not (isinstance(self.chunk_seconds, (int, float)) and math.isfinite(self.chunk_seconds)
                and self.chunk_seconds > 0):
            raise StudyError(f"chunk_seconds must be a positive number of seconds, got {self.chunk_seconds!r}")
        if self.batch_size < 1:
            raise StudyError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.folds != 0 and self.folds < 2:
            raise StudyError(f"folds must be 2 or more (or 0: the manifest's own splits), got {self.folds}")
        if self.bootstrap_resamples < 10:
            raise StudyError(f"bootstrap_resamples must be >= 10, got {self.bootstrap_resamples}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out_root) / self.name

    @property
    def seed_list(self) -> list[int]:
        return [self.base_seed + i for i in range(self.seeds)]

    # -- (de)serialisation -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        probe = self.probe.to_dict()
        probe.pop("device")  # the study's device applies
        probe.pop("seed")  # the study's seeds apply
        return {
            "name": self.name,
            "description": self.description,
            "untrained_backbones": self.untrained_backbones,
            "backbones": list(self.backbones),
            "layers": "all" if self.layers is None else list(self.layers),
            "seeds": self.seeds,
            "base_seed": self.base_seed,
            "device": self.device,
            "out_root": str(self.out_root),
            "cache_dir": "" if self.cache_dir is None else str(self.cache_dir),
            "chunk_seconds": self.chunk_seconds,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "bootstrap_resamples": self.bootstrap_resamples,
            "datasets": [{"name": d.name, "manifest": str(d.manifest)} for d in self.datasets],
            "probe": probe,
            **({"folds": self.folds} if self.folds else {}),  # absent without folds: older study.toml unchanged
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "StudyConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StudyError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            if "datasets" in data:
                data["datasets"] = tuple(_dataset_spec(d, source) for d in data["datasets"])
            if "backbones" in data:
                data["backbones"] = tuple(str(b) for b in data["backbones"])
            if "layers" in data:
                data["layers"] = parse_layers(data["layers"])
            for key in ("out_root",):
                if key in data:
                    data[key] = Path(data[key])
            if "cache_dir" in data:
                data["cache_dir"] = Path(data["cache_dir"]) if data["cache_dir"] else None
            if "probe" in data and not isinstance(data["probe"], ProbeConfig):
                data["probe"] = ProbeConfig.from_dict(data["probe"])
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise StudyError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "StudyConfig":
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"study config not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise StudyError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(data, source=str(path))

    def to_toml(self) -> str:
        return dict_to_toml(self.to_dict())


def _dataset_spec(item: Any, source: str) -> DatasetSpec:
    if isinstance(item, DatasetSpec):
        return item
    if isinstance(item, (str, Path)):
        return dataset_from_manifest(item)
    if isinstance(item, dict):
        extra = sorted(set(item) - {"name", "manifest"})
        if "manifest" not in item or extra:
            raise StudyError(f"{source}: each [[datasets]] entry has `manifest` and optional `name`, got {item}")
        manifest = Path(item["manifest"])
        return DatasetSpec(str(item.get("name") or default_dataset_name(manifest)), manifest)
    raise StudyError(f"{source}: a dataset is a manifest path or a table with `manifest`, got {item!r}")


def default_dataset_name(manifest: str | Path) -> str:
    """A dataset's name from its manifest path: the folder name (``data/imv/manifest.csv`` -> ``imv``)."""
    manifest = Path(manifest)
    return manifest.parent.name if manifest.stem == "manifest" and manifest.parent.name else manifest.stem


def dataset_from_manifest(manifest: str | Path) -> DatasetSpec:
    """``NAME=PATH`` names the dataset explicitly; a bare path is named after its folder."""
    text = str(manifest)
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        return DatasetSpec(name.strip(), Path(path.strip()))
    return DatasetSpec(default_dataset_name(text), Path(text))


def parse_layers(value: Any) -> tuple[int, ...] | None:
    """``"all"`` / None -> None; ``"0,3,6"``, ``"0-4"`` or ``[0, 3, 6]`` -> sorted unique layer numbers."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"all", ""}):
        return None
    items: list[int] = []
    parts = value.split(",") if isinstance(value, str) else list(value)
    for part in parts:
        text = str(part).strip()
        try:
            if isinstance(part, str) and "-" in text[1:]:
                lo, hi = text.split("-", 1)
                items.extend(range(int(lo), int(hi) + 1))
            else:
                items.append(int(text))
        except ValueError:
            raise ValueError(f"layers must be 'all' or numbers like 0,3,6 or 0-4, got {value!r}") from None
    if not items or min(items) < 0:
        raise ValueError(f"layers must be 'all' or non-negative numbers like 0,3,6, got {value!r}")
    return tuple(sorted(set(items)))


def dict_to_toml(data: dict[str, Any]) -> str:
    """The small subset of TOML a study config needs: scalars, lists of scalars, [tables], [[arrays of tables]]."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    table_lists = {k: v for k, v in data.items() if _is_table_list(v)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, items in table_lists.items():
        for item in items:
            lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    for key, table in tables.items():
        lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise StudyError(f"cannot write {value} to TOML: use a finite number")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


# ----------------------------------------------------------------------------------------------------------------
# backbone facts that do not need the weights


def backbone_label(name: str) -> str:
    """Display name: the paper's label for a registry name (``W2V2-100h``), else the folder or hub id's last part."""
    from vocalprobe.training.backbones import REGISTRY

    spec = REGISTRY.get(str(name).strip().lower())
    if spec is not None:
        return spec.label
    return Path(str(name).rstrip("/\\")).name or str(name)


def backbone_key(name: str) -> dict[str, Any]:
    """What pins a backbone before loading it: the name as given plus, for local folders, a hash of the weights."""
    from vocalprobe.training.backbones import REGISTRY, aves_dir, weights_fingerprint

    spec = REGISTRY.get(str(name).strip().lower())
    folder = None
    if spec is not None and spec.hub_id is None:
        folder = aves_dir()
    elif spec is not None:
        folder = spec.local_folder()  # a converted Whisper folder, when there is one
    elif spec is None and Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    key: dict[str, Any] = {"name": str(name)}
    if folder is not None and folder.is_dir():
        key["weights_sha256"] = weights_fingerprint(folder)
    return key
