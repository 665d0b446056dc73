"""A study's config from the options of `vocalprobe study` (and of ``vocalprobe.study()``): a TOML config, manifests
and backbones, and overrides of its fields; one place, so the command and the Python API accept and refuse the
same things."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Sequence

from vocalprobe.training.study.config import StudyConfig, StudyError, dataset_from_manifest, parse_layers


def study_overrides(*, layers: str | Sequence[int] | None = None, **values) -> dict:
    """The StudyConfig fields given (None: not given); ``layers`` as 'all', '0,3,6', '0-4' or a list."""
    overrides = {key: value for key, value in values.items() if value is not None}
    if isinstance(layers, str):
        try:
            overrides["layers"] = parse_layers(layers)
        except ValueError as exc:
            raise StudyError(f"--layers: {exc}") from None
    elif layers is not None:
        overrides["layers"] = tuple(layers)
    return overrides


def study_config(config: str | Path | None, data: Sequence[str] | None, backbones: Sequence[str] | None,
                 overrides: dict) -> StudyConfig:
    """The config of a study that is not the demo: ``config`` (TOML) with ``data``/``backbones``/``overrides``
    over it, or ``data`` and ``backbones`` alone."""
    if config is not None:
        cfg = StudyConfig.from_toml(config)
        changes = dict(overrides)
        if data:
            changes["datasets"] = tuple(dataset_from_manifest(d) for d in data)
        if backbones:
            changes["backbones"] = tuple(backbones)
        return StudyConfig.from_dict({**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **changes},
                                     source=str(config))
    if not data:
        raise StudyError("--backbone given without --data: pass at least one manifest (--data MANIFEST)")
    if not backbones:
        raise StudyError("--data given without --backbone: pass at least one backbone (e.g. --backbone hubert)")
    datasets = tuple(dataset_from_manifest(d) for d in data)
    return StudyConfig.from_dict({"name": "study", **overrides, "datasets": datasets, "backbones": tuple(backbones)},
                                 source="command line")


def check_scale(demo: bool, shard: str | None, engine: str, folds: int | None = None) -> None:
    if folds and (shard is not None or engine != "local"):
        raise StudyError("--folds runs locally: its features are extracted once from the manifest without splits; "
                         "drop --shard / --engine ray")
    if demo and (shard is not None or engine != "local"):
        raise StudyError("--shard and --engine ray split a study's feature extraction; give --config or --data and "
                         "--backbone")
    if shard is not None and engine != "local":
        raise StudyError("--shard is for a batch scheduler's tasks; --engine ray shards the extraction itself")
