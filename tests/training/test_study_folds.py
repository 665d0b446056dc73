"""`study --folds K` end to end on a tiny random backbone: folds over groups, a probe set per fold, the layer chosen
per fold on Val, the cross-validated UAR, its files and report, and a free re-run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vocalprobe.runtime.core.manifest import ManifestRow, write_manifest
from vocalprobe.training.study.config import DatasetSpec, StudyConfig, StudyError
from vocalprobe.training.study.results import load_cv_summary

CALLS = {"chirp": 500.0, "hoot": 1500.0, "trill": 4000.0}
K = 3


def make_grouped_tones(root: Path) -> Path:
    """Three call types, 4 individuals each (their own pitch offset), 3 clips per individual; no splits."""
    rng = np.random.default_rng(0)
    rows = []
    for label, freq in CALLS.items():
        for ind in range(4):
            offset = 1 + 0.04 * rng.normal()
            for j in range(3):
                sr = 16_000
                t = np.arange(int(sr * rng.uniform(0.2, 0.5))) / sr
                x = 0.5 * np.sin(2 * np.pi * freq * offset * t) + 0.05 * rng.normal(size=len(t))
                path = root / "clips" / f"{label}_{ind}_{j}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(path), x.astype(np.float32), sr)
                rows.append(ManifestRow(path.relative_to(root).as_posix(), label, group=f"{label}-{ind}"))
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def cv_study(tmp_path_factory, tiny_checkpoints):
    from vocalprobe.training.study.crossval import run_cv

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cv")
    config = StudyConfig(name="cv", datasets=(DatasetSpec("tones", make_grouped_tones(root / "tones")),),
                         backbones=(str(tiny_checkpoints["hubert"]),), seeds=1, base_seed=5, device="cpu",
                         out_root=root / "studies", cache_dir=root / "cache", bootstrap_resamples=10, folds=K)
    return config, run_cv(config, progress=False)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_each_fold_tests_its_own_groups_and_every_clip_once(cv_study):
    config, summary = cv_study
    out = config.out_dir
    folds = read_csv(out / "folds" / "tones.csv")
    assert len(folds) == 36 and {int(r["fold"]) for r in folds} == set(range(K))
    assert all(len({r["fold"] for r in folds if r["group"] == g}) == 1 for g in {r["group"] for r in folds})
    tested = []
    for f in range(K):
        clips = json.loads((out / "runs" / "tones" / "hubert" / f"fold{f}" / "clips.json").read_text())
        split_of = dict(zip(clips["rows"], clips["splits"]))
        test = sorted(r for r, s in split_of.items() if s == "test")
        assert test == sorted(int(r["row"]) for r in folds if int(r["fold"]) == f)
        groups = {s: {folds[r]["group"] for r, sp in split_of.items() if sp == s} for s in ("train", "val", "test")}
        assert not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
        assert not (groups["train"] & groups["val"]) and all(groups.values())
        tested += test
    assert sorted(tested) == list(range(36))
    info = summary.datasets[0]
    assert info.group_by == "group" and info.n_units == 12 and sum(info.fold_sizes) == 36


def test_cv_uar_is_the_mean_over_folds_of_test_at_the_val_chosen_layer(cv_study):
    config, summary = cv_study
    (cv,) = summary.cv
    assert cv.folds == K and len(summary.choices) == K and cv.layers == (0, 1, 2)
    for choice in summary.choices:
        probes = {p.result.layer: p.result for p in summary.results if p.fold == choice.fold}
        assert set(probes) == {0, 1, 2}
        best = max(probes.values(), key=lambda r: (r.val_uar, -r.layer))  # best on Val, ties -> lower layer
        assert choice.best_layer == best.layer and choice.test_uar == best.test_uar
        assert choice.n_test == best.n_test and choice.n_train + choice.n_val + choice.n_test == 36
    scores = [c.test_uar for c in summary.choices]
    assert cv.fold_test_uar == tuple(scores) and cv.best_layers == tuple(c.best_layer for c in summary.choices)
    assert cv.mean == pytest.approx(np.mean(scores)) and cv.std == pytest.approx(np.std(scores))
    assert cv.low == min(scores) and cv.high == max(scores)
    assert cv.mean > 1 / 3 + 0.2  # tones an individual apart still separate on a random tiny backbone


def test_files_and_report_say_what_the_numbers_are(cv_study):
    config, summary = cv_study
    out = config.out_dir
    assert load_cv_summary(out) == summary
    assert StudyConfig.from_toml(out / "study.toml") == config and "folds = 3" in (out / "study.toml").read_text()
    (row,) = read_csv(out / "cv.csv")
    assert float(row["cv_uar_mean"]) == pytest.approx(summary.cv[0].mean, abs=1e-6) and row["folds"] == "3"
    assert [int(r["fold"]) for r in read_csv(out / "cv_folds.csv")] == [0, 1, 2]
    report = (out / "cv_report.md").read_text()
    assert "3-fold cross-validation over groups" in report
    assert "Folds dealt with seed 5" in report and "Probes trained with seed(s) 5" in report
    assert "best layer is chosen per fold on that fold's Val" in report and "Untrained backbones: hubert" in report
    cv = summary.cv[0]
    assert f"{cv.mean * 100:.2f} ± {cv.std * 100:.2f}" in report
    assert not (out / "summary.json").exists() and not (out / "probes").exists()  # no single-split outputs


def test_rerun_trains_nothing_and_rewrites_the_same_bytes(cv_study, monkeypatch):
    from vocalprobe.training.study.crossval import run_cv

    config, summary = cv_study
    before = {p: p.read_bytes() for p in config.out_dir.rglob("*") if p.is_file()}
    import vocalprobe.training.backbones as backbones
    import vocalprobe.training.probe_batched as probe_batched

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cross-validated study must not load a backbone or train a probe again")

    monkeypatch.setattr(backbones, "load_backbone", refuse)
    monkeypatch.setattr(probe_batched, "fit_probes", refuse)
    assert run_cv(config, progress=False) == summary
    assert {p: p.read_bytes() for p in config.out_dir.rglob("*") if p.is_file()} == before


def test_cli_folds_runs_and_refuses_what_it_cannot_do(cv_study, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)  # the default feature cache (artifacts/cache) lands here, not in the checkout

    from vocalprobe.cli import app

    config, summary = cv_study
    manifest = config.datasets[0].manifest
    common = ["study", "--data", f"tones={manifest}", "--backbone", config.backbones[0], "--seeds", "1",
              "--device", "cpu", "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(app, common + ["--folds", "3", "--layers", "0,2", "--name", "cli"])
    assert result.exit_code == 0, result.output
    assert "cv_report.md" in result.output and (tmp_path / "cli" / "cv_report.md").is_file()
    rows = read_csv(tmp_path / "cli" / "cv_folds.csv")
    assert len(rows) == 3 and {r["best_layer_on_val"] for r in rows} <= {"0", "2"}
    import vocalprobe  # the Python API takes the same option

    report = vocalprobe.study(data=[f"tones={manifest}"], backbones=[config.backbones[0]], layers="0,2", seeds=1,
                              device="cpu", out=tmp_path, name="api", folds=3)
    assert report == tmp_path / "api" / "cv_report.md"
    assert read_csv(tmp_path / "api" / "cv_folds.csv") == rows  # same config, same seed: the same folds and scores
    result = CliRunner().invoke(app, common + ["--folds", "3", "--engine", "ray"])
    assert result.exit_code == 1 and "--folds runs locally" in result.output
    result = CliRunner().invoke(app, common + ["--folds", "1"])
    assert result.exit_code == 2  # typer: min=2
    with pytest.raises(StudyError, match="folds must be 2 or more"):
        StudyConfig(name="x", datasets=config.datasets, backbones=config.backbones, folds=1)


def test_without_folds_the_config_and_its_toml_are_as_before(cv_study):
    config, _ = cv_study
    plain = StudyConfig(name="x", datasets=config.datasets, backbones=config.backbones)
    assert plain.folds == 0 and "folds" not in plain.to_dict() and "folds" not in plain.to_toml()
