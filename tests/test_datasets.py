"""Dataset preparers on small copies of each dataset's real layout, and the synthetic embedded default."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vocalprobe.runtime.audio import audio_info
from vocalprobe.runtime.clips import load_row
from vocalprobe.runtime.datasets import preparers, synthetic
from vocalprobe.runtime.describe import summarize
from vocalprobe.runtime.errors import DatasetError
from vocalprobe.runtime.manifest import read_manifest, write_manifest


def wav(path: Path, seconds: float = 0.2, sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(len(str(path))).uniform(-.3, .3, int(sr * seconds)).astype(np.float32), sr)
    return path


def test_folders(tmp_path):
    for label in ("owl", "frog"):
        for i in range(3):
            wav(tmp_path / "src" / label / "deep" / f"{i}.WAV")
    rows = preparers.prepare_folders(tmp_path / "src", tmp_path / "out")
    assert Counter(r.label for r in rows) == {"owl": 3, "frog": 3}
    manifest = write_manifest(tmp_path / "out" / "manifest.csv", rows)
    assert all(manifest.audio_path(r).is_file() for r in manifest)


def test_folders_empty_class_is_an_error(tmp_path):
    wav(tmp_path / "src" / "owl" / "a.wav")
    (tmp_path / "src" / "frog").mkdir()
    with pytest.raises(DatasetError, match="class folders without any wav/flac/ogg file: 1: frog"):
        preparers.prepare_folders(tmp_path / "src", tmp_path)


def test_watkins_annotations(tmp_path):
    src = tmp_path / "watkins"
    wav(src / "audio" / "a.wav")
    wav(src / "audio" / "b.wav")
    (src / "annotations.csv").write_text("path,species\naudio/a.wav,Orcinus orca\naudio/b.wav,Tursiops\n")
    rows = preparers.prepare_watkins(src, tmp_path)
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


def test_imv_segments_and_dropped_rows(tmp_path):
    rows = preparers.prepare_imv(imv_layout(tmp_path), tmp_path / "out")
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
    rows = preparers.prepare_abzaliev(src, tmp_path)
    assert sorted((r.group, r.label) for r in rows) == [("Luna", "bark_stranger"), ("Luna", "growl"),
                                                       ("Max", "growl")]
    wav(src / "loose.wav")
    with pytest.raises(DatasetError, match="loose.wav"):
        preparers.prepare_abzaliev(src, tmp_path)
    assert preparers.drop_labels(rows, ["GROWL"]) == [r for r in rows if r.label == "bark_stranger"]


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate_dataset(out, seed=3, clips_per_class=12, field_minutes=1.0)


def test_synthetic_dataset_is_varied_and_split(synthetic_set):
    manifest = read_manifest(synthetic_set)
    assert len(manifest.labels) >= 7 and len(manifest) == 12 * len(manifest.labels)
    assert synthetic.BACKGROUND in manifest.labels
    infos = [audio_info(manifest.audio_path(r)) for r in manifest]
    assert {i.sample_rate for i in infos} == set(synthetic.SAMPLE_RATES)
    assert {"PCM_16", "PCM_24", "FLOAT", "PCM_U8"} <= {i.subtype for i in infos}
    assert any(manifest.audio_path(r).suffix == ".flac" for r in manifest)
    durations = [i.duration for i in infos]
    assert min(durations) < 0.3 and max(durations) > 1.0
    assert {r.split for r in manifest} == {"train", "val", "test"}
    summary = summarize(manifest)
    assert summary.n_clips == len(manifest) and summary.n_classes == len(manifest.labels)


def test_synthetic_is_deterministic(synthetic_set, tmp_path):
    again = synthetic.generate_dataset(tmp_path, seed=3, clips_per_class=12, field_minutes=0)
    assert again.read_text() == synthetic_set.read_text()
    first = read_manifest(synthetic_set)
    second = read_manifest(again)
    for row in first.rows[::17]:
        assert first.audio_path(row).read_bytes() == second.audio_path(row).read_bytes()


def band_energies(x: np.ndarray) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 4096))
    bands = np.array_split(spectrum[:2048], 32)
    envelope = np.abs(x[: len(x) // 50 * 50]).reshape(-1, 50).mean(axis=1) if len(x) >= 500 else np.abs(x)
    return np.log1p(np.r_[[b.mean() for b in bands], envelope.std() / (envelope.mean() + 1e-9), len(x) / 16_000])


def test_synthetic_calls_are_learnable(synthetic_set):
    """A nearest-centroid classifier on crude band energies separates the call types well above chance."""
    manifest = read_manifest(synthetic_set)
    labels = manifest.labels
    feats = {r: band_energies(load_row(manifest, r)) for r in manifest}
    train = [r for r in manifest if r.split != "test"]
    test = [r for r in manifest if r.split == "test"]
    mu = np.mean([feats[r] for r in train], axis=0)
    sd = np.std([feats[r] for r in train], axis=0) + 1e-9
    centroids = {c: np.mean([(feats[r] - mu) / sd for r in train if r.label == c], axis=0) for c in labels}
    correct = [min(labels, key=lambda c: np.sum(((feats[r] - mu) / sd - centroids[c]) ** 2)) == r.label for r in test]
    assert np.mean(correct) > 3 / len(labels)


def test_field_recording_and_truth(synthetic_set):
    field = synthetic_set.parent / "field"
    wav_path = field / synthetic.FIELD_NAME
    info = audio_info(wav_path)
    assert info.duration == pytest.approx(60.0) and info.sample_rate == synthetic.FIELD_SAMPLE_RATE
    with (field / "20250601_053000.truth.csv").open() as handle:
        events = list(csv.DictReader(handle))
    assert len(events) >= 5
    starts = [float(e["start_s"]) for e in events]
    assert starts == sorted(starts)
    assert all(float(e["end_s"]) <= 60.0 and float(e["end_s"]) > float(e["start_s"]) for e in events)
    assert {e["label"] for e in events} <= {c.name for c in synthetic.CALLS}
    assert synthetic.BACKGROUND not in {e["label"] for e in events}


def test_generator_version_marks_stale_datasets(synthetic_set, tmp_path):
    folder = synthetic_set.parent
    assert synthetic.is_current(folder, seed=3, clips_per_class=12)
    assert not synthetic.is_current(folder, seed=4)
    assert not synthetic.is_current(tmp_path)
    info = folder / "synthetic.json"
    text = info.read_text()
    try:
        info.write_text(text.replace(f'"generator_version": {synthetic.GENERATOR_VERSION}', '"generator_version": 1'))
        assert not synthetic.is_current(folder, seed=3)
    finally:
        info.write_text(text)
