"""The embedded synthetic dataset (runtime/datasets/synthetic.py): varied, deterministic, learnable, with a field
recording."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from vocalprobe.runtime.core.audio import audio_info
from vocalprobe.runtime.core.clips import load_row
from vocalprobe.runtime.core.manifest import read_manifest
from vocalprobe.runtime.datasets import synthetic
from vocalprobe.runtime.datasets.describe import summarize


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate_dataset(out, seed=3, clips_per_class=12, field_minutes=1.0)


def band_energies(x: np.ndarray) -> np.ndarray:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 4096))
    bands = np.array_split(spectrum[:2048], 32)
    envelope = np.abs(x[: len(x) // 50 * 50]).reshape(-1, 50).mean(axis=1) if len(x) >= 500 else np.abs(x)
    return np.log1p(np.r_[[b.mean() for b in bands], envelope.std() / (envelope.mean() + 1e-9), len(x) / 16_000])


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
        info.write_text(text[: len(text) // 2])  # a marker cut by a crash: stale, not a traceback
        assert not synthetic.is_current(folder, seed=3)
        info.write_text("[]")
        assert not synthetic.is_current(folder, seed=3)
    finally:
        info.write_text(text)


def test_origin_is_synthetic_only_while_the_manifest_is_the_generated_one(tmp_path):
    from vocalprobe.runtime.datasets.audit import dataset_origin
    from vocalprobe.runtime.datasets.provenance import write_provenance

    manifest = synthetic.generate_dataset(tmp_path / "syn", seed=1, clips_per_class=2, field_minutes=0)
    assert dataset_origin(manifest) == "synthetic" and synthetic.is_current(manifest.parent, seed=1)
    manifest.write_text(manifest.read_text().replace("up_sweep", "robin"))  # prepared over it, by hand or a tool
    assert dataset_origin(manifest) == "unknown" and not synthetic.is_current(manifest.parent, seed=1)
    write_provenance(manifest.parent, "folders", tmp_path)
    assert dataset_origin(manifest) == "prepared"
