"""The study folder's format: what a finished study holds and where. The report, export, fusion, the demo and the
benchmarks read a study through this module only; the runner writes it.

Layout under the study folder (``StudyConfig.out_dir``):

* ``study.toml``: the config that reproduces the study;
* ``summary.json``: a ``StudySummary`` (every probe's scores, the layer choices, the fusion);
* ``runs/DATASET/BACKBONE/``: every probe, ``L{layer:02d}_s{seed}.{json,safetensors,test_proba.npy}``, plus
  ``clips.json`` (which clips the features hold) and, at reduced precision, ``precision.json``;
* ``probes/DATASET/BACKBONE.*``: the best-on-Val probe (``.safetensors``, ``.json``) with its Test posteriors, rows
  and labels (``.test_posteriors.npy``, ``.test_rows.npy``, ``.test_labels.npy``);
* ``fusion/DATASET/``: ``s{seed}.test_posteriors.npy``, ``test_rows.npy``, ``test_labels.npy``, ``fusion.json``.

DATASET and BACKBONE are the display names through ``safe_name``. JSON is written with sorted keys, so a study's
files are byte-identical whenever its results are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vocalprobe import __version__
from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.records import from_record, to_record
from vocalprobe.training.study.config import StudyError

#: Bumped when the meaning of a saved per-probe result changes, so old results are recomputed, not reused.
RESULT_FORMAT = 1

STUDY_CONFIG_FILE = "study.toml"
SUMMARY_FILE = "summary.json"
CLIPS_FILE = "clips.json"
PRECISION_FILE = "precision.json"
FUSION_FILE = "fusion.json"


@dataclass(frozen=True)
class ProbeResult:
    """One trained probe: (dataset, backbone, layer, seed)."""

    dataset: str
    backbone: str  # display label
    layer: int
    seed: int
    val_uar: float
    test_uar: float
    test_ci_low: float
    test_ci_high: float
    best_epoch: int
    epochs_run: int
    n_train: int
    n_val: int
    n_test: int


@dataclass(frozen=True)
class LayerChoice:
    """The best layer of one (dataset, backbone), chosen on Val, plus the best on Test for the paper's table."""

    dataset: str
    backbone: str  # display label
    backbone_name: str  # as given in the config
    kind: str  # PT | PT+FT | untrained | other
    layers: tuple[int, ...]
    val_mean: tuple[float, ...]  # per layer, mean over seeds
    val_std: tuple[float, ...]
    test_mean: tuple[float, ...]
    test_std: tuple[float, ...]
    best_layer: int  # on Val (honest)
    best_layer_on_test: int  # on Test (what the paper's Table III reports; optimistic)
    exported_seed: int  # the seed whose probe is saved under probes/ (best Val UAR at best_layer)
    probe_path: str  # relative to the study folder
    posteriors_path: str  # Test posteriors of the saved probe, relative to the study folder

    def score(self, layer: int, split: str = "test") -> tuple[float, float]:
        i = self.layers.index(layer)
        return ((self.test_mean[i], self.test_std[i]) if split == "test" else (self.val_mean[i], self.val_std[i]))


@dataclass(frozen=True)
class FusionResult:
    """Fusion of every backbone's best-on-Val probe on one dataset: per seed and mean +- std."""

    dataset: str
    backbones: tuple[str, ...]
    layers: tuple[int, ...]  # best layer of each backbone, same order
    seeds: tuple[int, ...]
    test_uar: tuple[float, ...]  # per seed
    test_ci: tuple[tuple[float, float], ...]  # per seed
    mean: float
    std: float
    posteriors: tuple[str, ...]  # per seed: fused Test posteriors (.npy), relative to the study folder
    sources: tuple[tuple[str, ...], ...]  # per seed: the per-backbone posterior files that were averaged
    rows: str  # .npy of the Test manifest row indices the posteriors belong to
    labels: str  # .npy of their reference class indices
    confusion: tuple[tuple[int, ...], ...]  # summed over seeds; rows = reference, columns = predicted


@dataclass
class DatasetInfo:
    name: str
    manifest: str
    labels: list[str]
    n_clips: dict[str, int]  # per split, after unreadable clips are dropped
    failed: list[dict[str, str]]  # {"backbone", "path", "problem"} for clips that could not be used
    origin: str = "unknown"  # synthetic | prepared | unknown (runtime.datasets.provenance.dataset_origin)
    warnings: list[str] = field(default_factory=list)  # runtime.datasets.audit: leakage, small Test classes, ...


@dataclass
class StudySummary:
    """What the report is written from; saved as summary.json in the study folder."""

    config: dict[str, Any]
    datasets: list[DatasetInfo]
    results: list[ProbeResult]
    choices: list[LayerChoice]
    fusion: list[FusionResult]
    vocalprobe_version: str = __version__


# ----------------------------------------------------------------------------------------------------------------
# where things are


def safe_name(name: str) -> str:
    """A label as a file or folder name: keep letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def probe_name(layer: int, seed: int) -> str:
    """The stem of one probe's files in its run folder, e.g. ``L03_s1``."""
    return f"L{layer:02d}_s{seed}"


def with_suffix(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix`` (``L03_s1`` + ``.test_proba.npy``); ``Path.with_suffix`` would cut at the first dot."""
    return stem.with_name(stem.name + suffix)


def run_dir(study_dir: str | Path, dataset: str, backbone: str) -> Path:
    """The folder of every probe of one (dataset, backbone label)."""
    return Path(study_dir) / "runs" / safe_name(dataset) / safe_name(backbone)


def probe_checkpoint(study_dir: str | Path, dataset: str, backbone: str, layer: int, seed: int) -> Path:
    """The saved probe of any (dataset, backbone label, layer, seed) of a study, e.g. to export a non-best layer."""
    return with_suffix(run_dir(study_dir, dataset, backbone) / probe_name(layer, seed), ".safetensors")


def best_probe_stem(study_dir: str | Path, dataset: str, backbone: str) -> Path:
    """``probes/DATASET/BACKBONE``: the stem of the best-on-Val probe's files."""
    return Path(study_dir) / "probes" / safe_name(dataset) / safe_name(backbone)


def fusion_dir(study_dir: str | Path, dataset: str) -> Path:
    return Path(study_dir) / "fusion" / safe_name(dataset)


# ----------------------------------------------------------------------------------------------------------------
# reading and writing


def write_json(path: Path, obj: Any) -> None:
    """The study folder's JSON: indented, sorted keys, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when it does not exist (a result not computed yet)."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_summary(study_dir: str | Path, summary: StudySummary) -> Path:
    path = Path(study_dir) / SUMMARY_FILE
    write_json(path, to_record(summary))
    return path


def load_summary(study_dir: str | Path) -> StudySummary:
    path = Path(study_dir) / SUMMARY_FILE
    if not path.is_file():
        raise StudyError(f"{path} not found: run the study first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return from_record(StudySummary, {"vocalprobe_version": "unknown", **data})
    except (TypeError, ValueError, AttributeError) as exc:
        raise StudyError(f"{path}: not a study summary this vocalprobe can read ({exc}); re-run the study") from None
