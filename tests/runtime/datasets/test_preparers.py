"""Dataset preparers (runtime/datasets/preparers.py): folders, Watkins, IMV, Abzaliev layouts and their checks."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vocalprobe.runtime.core.audio import READABLE_KINDS
from vocalprobe.runtime.core.clips import load_row
from vocalprobe.runtime.core.errors import DatasetError
from vocalprobe.runtime.core.manifest import write_manifest
from vocalprobe.runtime.datasets import preparers


def wav(path: Path, seconds: float = 0.2, sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(len(str(path))).uniform(-.3, .3, int(sr * seconds)).astype(np.float32), sr)
    return path


def imv_layout(tmp_path: Path) -> Path:
    src = tmp_path / "imv"
    wav(src / "data" / "twin_1" / "rec_1.wav", seconds=3.0, sr=44_100)
    wav(src / "data" / "twin_2" / "rec_2.wav", seconds=3.0, sr=44_100)
    with (src / "labels.csv").open("w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["filename", "start", "end", "duration", "calltype", "caller"])
        w.writerow(["rec_1.wav", 0.1, 0.3, 0.2, "Phee", "A1"])
        w.writerow(["rec_1.wav", 0.5, 0.6, 0.1, "Silence", "A1"])
        w.writerow(["twin_2/rec_2.wav", 1.0, 1.2, 0.2, "Trill", "B2"])
        w.writerow(["rec_2.wav", 2.0, 2.1, 0.1, "Noise", "B2"])
    return src


def test_folders(tmp_path):
    for label in ("owl", "frog"):
        for i in range(3):
            wav(tmp_path / "src" / label / "deep" / f"{i}.WAV")
    rows = preparers.prepare_folders(tmp_path / "src", tmp_path / "out").rows
    assert Counter(r.label for r in rows) == {"owl": 3, "frog": 3}
    manifest = write_manifest(tmp_path / "out" / "manifest.csv", rows)
    assert all(manifest.audio_path(r).is_file() for r in manifest)


def test_folders_empty_class_is_an_error(tmp_path):
    wav(tmp_path / "src" / "owl" / "a.wav")
    (tmp_path / "src" / "frog").mkdir()
    with pytest.raises(DatasetError, match=f"class folders without any {READABLE_KINDS} file: 1: frog"):
        preparers.prepare_folders(tmp_path / "src", tmp_path)


def test_watkins_annotations(tmp_path):
    src = tmp_path / "watkins"
    wav(src / "audio" / "a.wav")
    wav(src / "audio" / "b.wav")
    (src / "annotations.csv").write_text("path,species\naudio/a.wav,Orcinus orca\naudio/b.wav,Tursiops\n")
    rows = preparers.prepare_watkins(src, tmp_path).rows
    assert [r.label for r in rows] == ["Orcinus orca", "Tursiops"]


def test_watkins_validates(tmp_path):
    src = tmp_path / "watkins"
    wav(src / "audio" / "a.wav")
    wav(src / "audio" / "stray.wav")
    (src / "annotations.csv").write_text("path,species\naudio/a.wav,X\naudio/missing.wav,Y\n")
    with pytest.raises(DatasetError, match="labels without audio 1: audio/missing.wav"):
        preparers.prepare_watkins(src, tmp_path)
    (src / "annotations.csv").write_text("path,species\naudio/a.wav,X\n")
    with pytest.raises(DatasetError, match="audio files without a label.*stray.wav"):
        preparers.prepare_watkins(src, tmp_path)
    (src / "annotations.csv").write_text("path,species,notes\naudio/a.wav,X,hi\n")
    with pytest.raises(DatasetError, match="unknown notes"):
        preparers.prepare_watkins(src, tmp_path)


def test_imv_segments_and_dropped_rows(tmp_path):
    rows = preparers.prepare_imv(imv_layout(tmp_path), tmp_path / "out").rows
    assert [(r.label, r.start, r.end, r.group) for r in rows] == [("Phee", 0.1, 0.3, "A1"), ("Trill", 1.0, 1.2, "B2")]
    manifest = write_manifest(tmp_path / "out" / "manifest.csv", rows)
    clip = load_row(manifest, manifest.rows[0])
    assert abs(len(clip) - 3200) <= 1  # 0.2 s at 16 kHz, read as a segment of the long file


def test_imv_reports_every_problem(tmp_path):
    src = imv_layout(tmp_path)
    with (src / "labels.csv").open("a", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["gone.wav", 0.1, 0.2, 0.1, "Phee", "A1"])
        w.writerow(["rec_1.wav", 9.0, 9.5, 0.5, "Phee", "A1"])
    with pytest.raises(DatasetError, match="labels without audio 1: gone.wav.*invalid rows 1: .*9.0-9.5 s outside"):
        preparers.prepare_imv(src, tmp_path)


def test_abzaliev_layout(tmp_path):
    src = tmp_path / "dogs"
    wav(src / "Luna" / "bark_stranger" / "1.wav")
    wav(src / "Luna" / "growl" / "2.wav")
    wav(src / "Max" / "growl" / "3.wav")
    rows = preparers.prepare_abzaliev(src, tmp_path).rows
    assert sorted((r.group, r.label) for r in rows) == [("Luna", "bark_stranger"), ("Luna", "growl"),
                                                       ("Max", "growl")]
    wav(src / "loose.wav")
    with pytest.raises(DatasetError, match="loose.wav"):
        preparers.prepare_abzaliev(src, tmp_path)
    assert preparers.drop_labels(rows, ["GROWL"]) == [r for r in rows if r.label == "bark_stranger"]
