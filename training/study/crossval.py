"""`study --folds K`: the study as K-fold cross-validation over groups, for datasets too small for one Test split.

Per dataset the manifest's own splits are set aside and its groups dealt into K folds (``runtime.datasets.folds``,
seeded by ``base_seed``); in fold f, Test is fold f and Train/Val come from the other folds' groups. Each fold is a
``BackboneRun`` of its own (folder ``runs/DATASET/BACKBONE/fold{f}``, so finished probes are reused), with the
features extracted once per backbone from the split-less manifest (one cache entry for every fold). In each fold the
best layer is chosen on that fold's Val; the fold's score is its Test UAR there, and the cross-validated UAR is their
mean and spread over the K folds. No fusion and no exported probes: those need one fixed Test split.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace

import numpy as np

from vocalprobe.runtime.core.atomic import atomic_write_text
from vocalprobe.runtime.core.manifest import Manifest, read_manifest
from vocalprobe.training.study.config import StudyConfig, StudyError
from vocalprobe.training.study.results import (
    STUDY_CONFIG_FILE,
    CrossValidation,
    CVDatasetInfo,
    CVSummary,
    FoldChoice,
    FoldProbe,
    fold_run_dir,
    folds_path,
    write_cv_summary,
)
from vocalprobe.training.study.runner import BackboneRun, _argmax_lowest

@dataclass
class FoldRun(BackboneRun):
    """One fold of one dataset x backbone: the fold's split manifest, features from the split-less one."""

    fold: int = 0
    plain: Manifest | None = None  # the manifest without splits: what every fold's features come from
    shared: dict = field(default_factory=dict, repr=False)  # backbone -> feature_set(), shared by the folds

    def __post_init__(self) -> None:
        super().__post_init__()
        self.run_dir = fold_run_dir(self.config.out_dir, self.dataset.name, self.label, self.fold)

    def features_manifest(self) -> Manifest:
        return self.plain

    def feature_set(self, shard=None):
        if self.backbone not in self.shared:  # extracted (or read from the cache) once, for every fold
            self.shared[self.backbone] = super().feature_set(shard)
        return self.shared[self.backbone]


def run_cv(config: StudyConfig, *, progress: bool = True, write_outputs: bool = True, say=None) -> CVSummary:
    """Run (or resume) a cross-validated study (``config.folds`` >= 2); returns its summary and, with
    ``write_outputs``, writes cv.csv, cv_folds.csv and cv_report.md."""
    from vocalprobe.runtime.datasets.folds import assign_folds, fold_rows
    from vocalprobe.training.backbones import resolve_device
    from vocalprobe.training.study.cv_report import write_cv_report

    if config.folds < 2:
        raise StudyError(f"cross-validation needs folds >= 2, got {config.folds}")
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STUDY_CONFIG_FILE, config.to_toml())
    probe = replace(config.probe, device=str(resolve_device(config.device)))
    datasets, results, choices, cv = [], [], [], []
    for spec in config.datasets:
        manifest = read_manifest(spec.manifest)
        if len(manifest.labels) < 2:
            raise StudyError(f"dataset {spec.name} ({spec.manifest}): needs at least 2 classes, found "
                             f"{manifest.labels}")
        plain = manifest.with_rows(row.with_split(None) for row in manifest.rows)
        folds = assign_folds(plain.rows, config.folds, seed=config.base_seed)
        warnings = []
        if any(row.split for row in manifest.rows):
            warnings.append("the manifest's own train/val/test splits are not used: each fold deals its own")
        if folds.group_by == "none":
            warnings.append("the manifest names no groups: folds are dealt per clip, so clips of one individual or "
                            "recording can be in Train and Test (add a group column)")
        for text in warnings:
            if say is not None:
                say(f"warning: dataset {spec.name}: {text}")
        path = folds_path(out, spec.name)
        atomic_write_text(path, _folds_csv(plain, folds.fold))
        shared: dict = {}
        for name in config.backbones:
            fold_choices = []
            run = None
            for f in range(config.folds):
                split = plain.with_rows(fold_rows(plain.rows, folds, f))
                run = FoldRun(config, spec, split, name, probe, progress=progress, fold=f, plain=plain,
                              shared=shared)
                run.ensure_probes()
                results += [FoldProbe(f, r) for r in run.results]
                fold_choices.append(choose_in_fold(run))
            choices += fold_choices
            cv.append(cross_validate(run, fold_choices))
            shared.clear()  # this backbone's features are not needed again
        sizes = [len(folds.test_rows(f)) for f in range(config.folds)]
        datasets.append(CVDatasetInfo(spec.name, str(spec.manifest), list(manifest.labels), folds.group_by,
                                      folds.n_units, sizes,
                                      str(path.relative_to(out)), warnings))
    summary = CVSummary(config.to_dict(), config.folds, config.base_seed, list(config.seed_list), datasets, results,
                        choices, cv)
    write_cv_summary(out, summary)
    if write_outputs:
        write_cv_report(out, summary)
    return summary


def _folds_csv(manifest: Manifest, fold: tuple[int, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "path", "start", "end", "label", "group", "fold"])
    for i, (row, f) in enumerate(zip(manifest.rows, fold)):
        writer.writerow([i, row.path, "" if row.start is None else row.start, "" if row.end is None else row.end,
                         row.label, row.group or "", f])
    return buffer.getvalue()


def choose_in_fold(run: FoldRun) -> FoldChoice:
    """The fold's best layer on mean Val UAR over seeds (ties -> lower layer), scored by its mean Test UAR."""
    layers, seeds = run.table.layers, run.config.seed_list
    by = {(r.layer, r.seed): r for r in run.results}
    val = np.array([[by[(layer, s)].val_uar for s in seeds] for layer in layers]).mean(1)
    test = np.array([[by[(layer, s)].test_uar for s in seeds] for layer in layers]).mean(1)
    i = _argmax_lowest(list(val))
    counts = run.clip_counts()
    return FoldChoice(run.dataset.name, run.label, run.fold, tuple(layers), tuple(float(v) for v in val),
                      tuple(float(v) for v in test), layers[i], float(val[i]), float(test[i]), counts["train"],
                      counts["val"], counts["test"])


def cross_validate(run: FoldRun, choices: list[FoldChoice]) -> CrossValidation:
    scores = np.array([c.test_uar for c in choices])
    curve = np.array([c.test_mean for c in choices])  # (folds, layers)
    return CrossValidation(
        dataset=run.dataset.name, backbone=run.label, backbone_name=run.backbone, kind=run.table.kind,
        folds=len(choices), best_layers=tuple(c.best_layer for c in choices),
        fold_test_uar=tuple(float(s) for s in scores), mean=float(scores.mean()), std=float(scores.std()),
        low=float(scores.min()), high=float(scores.max()), layers=tuple(choices[0].layers),
        layer_test_mean=tuple(float(v) for v in curve.mean(0)), layer_test_std=tuple(float(v) for v in curve.std(0)))
