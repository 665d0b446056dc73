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

With ``folds = K`` (``study --folds K``: K-fold cross-validation over groups) the study folder holds instead:

* ``study.toml`` (with ``folds``), ``folds/DATASET.csv``: each manifest row's fold (the fold whose Test holds it);
* ``runs/DATASET/BACKBONE/fold{f}/``: fold f's probes and ``clips.json``, named as above;
* ``cv_summary.json``: a ``CVSummary``; ``cv.csv`` (per dataset x backbone), ``cv_folds.csv`` (per fold) and
  ``cv_report.md``, written from it (``study.cv_report``).

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
CV_SUMMARY_FILE = "cv_summary.json"
CV_FILE = "cv.csv"
CV_FOLDS_FILE = "cv_folds.csv"
CV_REPORT_FILE = "cv_report.md"


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


@dataclass(frozen=True)
class FoldProbe:
    """One probe of a cross-validated study: its fold and its result (scored on that fold's Val and Test)."""

    fold: int
    result: ProbeResult


@dataclass(frozen=True)
class FoldChoice:
    """One fold of one (dataset, backbone): the layer chosen on this fold's Val, and its Test UAR (seed means)."""

    dataset: str
    backbone: str  # display label
    fold: int
    layers: tuple[int, ...]
    val_mean: tuple[float, ...]  # per layer, mean over seeds
    test_mean: tuple[float, ...]  # per layer, mean over seeds
    best_layer: int  # highest mean Val UAR (ties -> lower layer)
    val_uar: float  # at best_layer, mean over seeds
    test_uar: float  # at best_layer, mean over seeds: this fold's score
    n_train: int
    n_val: int
    n_test: int


@dataclass(frozen=True)
class CrossValidation:
    """The cross-validated UAR of one (dataset, backbone): each fold's Test UAR at its own best-on-Val layer."""

    dataset: str
    backbone: str  # display label
    backbone_name: str  # as given in the config
    kind: str
    folds: int  # K
    best_layers: tuple[int, ...]  # per fold
    fold_test_uar: tuple[float, ...]  # per fold
    mean: float  # over folds
    std: float  # over folds (population std, like the seeds')
    low: float  # the worst fold
    high: float  # the best fold
    layers: tuple[int, ...]
    layer_test_mean: tuple[float, ...]  # per layer, mean over folds of the seed means: the layer curve, not a choice
    layer_test_std: tuple[float, ...]


@dataclass
class CVDatasetInfo:
    name: str
    manifest: str
    labels: list[str]
    group_by: str  # "group": folds of whole groups; "none": the manifest names no groups, folds of clips
    n_units: int  # groups (or clips) dealt into folds
    fold_sizes: list[int]  # clips in each fold's Test
    folds_path: str  # folds/DATASET.csv, relative to the study folder
    warnings: list[str] = field(default_factory=list)


@dataclass
class CVSummary:
    """What a cross-validated study's report is written from; saved as cv_summary.json in the study folder."""

    config: dict[str, Any]
    folds: int  # K
    fold_seed: int  # the seed the folds (and, with the fold number added, each fold's Train/Val) were dealt with
    seeds: list[int]  # the probes' seeds, in every fold
    datasets: list[CVDatasetInfo]
    results: list[FoldProbe]
    choices: list[FoldChoice]
    cv: list[CrossValidation]
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


def fold_run_dir(study_dir: str | Path, dataset: str, backbone: str, fold: int) -> Path:
    """The folder of one fold's probes of one (dataset, backbone label), in a cross-validated study."""
    return run_dir(study_dir, dataset, backbone) / f"fold{fold}"


def folds_path(study_dir: str | Path, dataset: str) -> Path:
    """``folds/DATASET.csv``: which fold's Test each manifest row is in."""
    return Path(study_dir) / "folds" / f"{safe_name(dataset)}.csv"


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


def write_cv_summary(study_dir: str | Path, summary: CVSummary) -> Path:
    path = Path(study_dir) / CV_SUMMARY_FILE
    write_json(path, to_record(summary))
    return path


def load_cv_summary(study_dir: str | Path) -> CVSummary:
    path = Path(study_dir) / CV_SUMMARY_FILE
    if not path.is_file():
        raise StudyError(f"{path} not found: run the study with --folds first")
    try:
        return from_record(CVSummary, json.loads(path.read_text(encoding="utf-8")))
    except (TypeError, ValueError, AttributeError) as exc:
        raise StudyError(f"{path}: not a cross-validation summary this vocalprobe can read ({exc}); re-run the "
                         "study") from None


def load_summary(study_dir: str | Path) -> StudySummary:
    path = Path(study_dir) / SUMMARY_FILE
    if not path.is_file():
        raise StudyError(f"{path} not found: run the study first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return from_record(StudySummary, {"vocalprobe_version": "unknown", **data})
    except (TypeError, ValueError, AttributeError) as exc:
        raise StudyError(f"{path}: not a study summary this vocalprobe can read ({exc}); re-run the study") from None
