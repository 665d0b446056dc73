"""Cached feature extraction over a manifest: batching, chunking, failures, cache keys and resuming."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from vocalprobe.runtime.core.clips import load_row
from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.runtime.core.manifest import ManifestRow, read_manifest, write_manifest
from vocalprobe.training import extract as extract_module
from vocalprobe.training.extract import FeatureCacheError, extract_features
from vocalprobe.training.features import FrameStats, LayerFeatures
from vocalprobe.training.packed_features import PackedFeatures

# 0.1 s and 0.2 s clips are padded to 5,000 samples and share a batch; 0.5 s twice shares one too.
DURATIONS = [0.1, 0.5, 0.2, 1.3, 0.5, 0.05, 0.9]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def manifest_path(tmp_path, synthetic_manifest):
    return synthetic_manifest(tmp_path / "data", DURATIONS, sample_rate=22_050)


def _alone(backbone, manifest, layers=None):
    module = LayerFeatures(backbone.model, layers=layers)
    with torch.no_grad():
        return np.stack([module(torch.from_numpy(load_row(manifest, row))[None])[0].numpy() for row in manifest])


def test_features_match_one_clip_at_a_time(manifest_path, tiny_backbone):
    manifest = read_manifest(manifest_path)
    result = extract_features(manifest, tiny_backbone, device="cpu", batch_size=4, progress=False)
    assert result.features.shape == (len(DURATIONS), 3, 64) and result.features.dtype == np.float32
    assert result.layers == (0, 1, 2)
    np.testing.assert_array_equal(result.rows, np.arange(len(DURATIONS)))
    np.testing.assert_allclose(result.features, _alone(tiny_backbone, manifest), rtol=1e-5, atol=1e-5)
    assert result.class_names == tuple(manifest.labels)
    assert [result.class_names[i] for i in result.labels] == [row.label for row in manifest]
    assert list(result.splits) == [row.split for row in manifest]
    assert result.failed == () and result.cache_dir is None
    np.testing.assert_array_equal(result.layer(1), result.features[:, 1])


def test_layer_subset(manifest_path, tiny_backbone):
    manifest = read_manifest(manifest_path)
    result = extract_features(manifest, tiny_backbone, layers=[2, 0], device="cpu", progress=False)
    assert result.layers == (2, 0) and result.features.shape[1] == 2
    full = _alone(tiny_backbone, manifest)
    np.testing.assert_allclose(result.features, full[:, [2, 0]], rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError):
        result.layer(1)
    with pytest.raises(VocalprobeError, match="out of range"):
        extract_features(manifest, tiny_backbone, layers=[5], device="cpu", progress=False)


def test_unreadable_files_are_reported_and_the_rest_finishes(tmp_path, synthetic_manifest, tiny_backbone):
    path = synthetic_manifest(tmp_path / "data", [0.3, 0.4, 0.5])
    manifest = read_manifest(path)
    (tmp_path / "data" / "broken.wav").write_bytes(b"RIFF not really a wav")
    rows = list(manifest.rows) + [ManifestRow("missing.wav", "call0", split="train"),
                                  ManifestRow("broken.wav", "call1", split="val")]
    manifest = write_manifest(path, rows)
    result = extract_features(manifest, tiny_backbone, device="cpu", cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(result.rows, [0, 1, 2])
    assert [f.row for f in result.failed] == [3, 4]
    assert "missing.wav" in result.failed[0].path and "not found" in result.failed[0].error
    assert "broken.wav" in result.failed[1].error
    index = json.loads((result.cache_dir / "index.json").read_text())
    assert [f["row"] for f in index["failed"]] == [3, 4]


def test_long_clip_chunked_is_close_to_unchunked(tmp_path, synthetic_manifest, tiny_backbone):
    manifest = read_manifest(synthetic_manifest(tmp_path / "data", [3.0, 1.5]))
    whole = extract_features(manifest, tiny_backbone, device="cpu", chunk_seconds=20.0, progress=False)
    chunked = extract_features(manifest, tiny_backbone, device="cpu", chunk_seconds=1.0, progress=False)
    np.testing.assert_allclose(whole.features, _alone(tiny_backbone, manifest), rtol=1e-5, atol=1e-5)
    # 3 chunks and 2 chunks: frames near the cuts see other context, and the CNN's GroupNorm normalises per chunk,
    # so features move a little (measured 2% and 5% here with chunks of 1 s; 20 s chunks move them far less) ...
    moved = [np.linalg.norm(chunked.features[i] - whole.features[i]) / np.linalg.norm(whole.features[i])
             for i in range(2)]
    assert 0 < max(moved) < 0.08, moved
    # ... an order of magnitude less than the difference between two clips
    between_clips = np.linalg.norm(whole.features[0] - whole.features[1]) / np.linalg.norm(whole.features[0])
    assert between_clips > 10 * max(moved)
    with pytest.raises(VocalprobeError, match="chunk limit"):
        extract_features(manifest, tiny_backbone, device="cpu", chunk_seconds=0.5, progress=False)


def test_chunked_pooling_is_exact_for_a_model_without_context(tmp_path, synthetic_manifest, tiny_backbone):
    """With the frame-level path replaced by a context-free one, chunked pooling equals pooling all frames."""
    manifest = read_manifest(synthetic_manifest(tmp_path / "data", [2.5]))
    clip = load_row(manifest, manifest.rows[0])
    runner = extract_module._Runner(LayerFeatures(tiny_backbone.model, layers=[0]), torch.device("cpu"),
                                    "float32", 0)

    def frames_are_samples(waveform):  # one "frame" per sample: no receptive field, no context across cuts
        x = waveform[0].double()
        return FrameStats(x.numel(), x.mean().reshape(1, 1, 1), ((x - x.mean()) ** 2).sum().reshape(1, 1, 1))

    runner.module.frame_stats = frames_are_samples
    got = runner.long_clip(clip, 16_000)  # 3 chunks
    normalized = clip / np.abs(clip).max()
    np.testing.assert_allclose(got, [[normalized.mean(), normalized.std()]], rtol=1e-5, atol=1e-7)


def test_cache_hit_resume_and_invalidation(tmp_path, manifest_path, tiny_backbone, monkeypatch):
    manifest = read_manifest(manifest_path)
    cache = tmp_path / "cache"
    reference = extract_features(manifest, tiny_backbone, device="cpu", progress=False)

    calls = {"n": 0}
    original = extract_module._extract_block

    def interrupted(*args, **kwargs):  # interrupted while computing the second cache shard (packed or batched)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(extract_module, "_extract_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract_features(manifest, tiny_backbone, device="cpu", cache_dir=cache, batch_size=1, shard_size=2,
                         progress=False)
    monkeypatch.setattr(extract_module, "_extract_block", original)
    (folder,) = cache.iterdir()
    index = json.loads((folder / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [[0, 1]]  # the first shard survived the interruption

    resumed = extract_features(manifest, tiny_backbone, device="cpu", cache_dir=cache, batch_size=1, shard_size=2,
                               progress=False)
    assert resumed.stats["cached"] == 2 and resumed.stats["computed"] == len(DURATIONS) - 2
    np.testing.assert_allclose(resumed.features, reference.features, rtol=1e-5, atol=1e-5)

    again = extract_features(manifest, tiny_backbone, device="cpu", cache_dir=cache, progress=False)
    assert again.stats["cached"] == len(DURATIONS) and again.stats["computed"] == 0
    np.testing.assert_array_equal(again.features, resumed.features)
    assert again.cache_dir == folder

    # any change to the manifest or a setting gives a new cache folder
    relabelled = write_manifest(manifest_path, [replace(manifest.rows[0], label="other"), *manifest.rows[1:]])
    for kwargs in ({"manifest": relabelled}, {"layers": [1]}, {"chunk_seconds": 10.0}):
        args = {"manifest": manifest, **kwargs}
        result = extract_features(args.pop("manifest"), tiny_backbone, device="cpu", cache_dir=cache,
                                  progress=False, **args)
        assert result.stats["cached"] == 0 and result.cache_dir != folder
    assert len(list(cache.iterdir())) == 4


def test_corrupt_shard_is_a_clear_error(tmp_path, manifest_path, tiny_backbone):
    result = extract_features(manifest_path, tiny_backbone, device="cpu", cache_dir=tmp_path / "c", progress=False)
    (result.cache_dir / "shard-00000.npy").write_bytes(b"garbage")
    with pytest.raises(FeatureCacheError, match="shard-00000.npy"):
        extract_features(manifest_path, tiny_backbone, device="cpu", cache_dir=tmp_path / "c", progress=False)


def test_bfloat16_reports_difference_to_float32(manifest_path, tiny_backbone):
    result = extract_features(manifest_path, tiny_backbone, device="cpu", dtype="bfloat16", progress=False)
    assert result.precision["dtype"] == "bfloat16" and result.precision["clips"] >= 1
    assert 0 < result.precision["max_rel_l2_diff"] < 0.2
    reference = extract_features(manifest_path, tiny_backbone, device="cpu", progress=False)
    assert reference.precision is None
    with pytest.raises(VocalprobeError, match="unknown dtype"):
        extract_features(manifest_path, tiny_backbone, device="cpu", dtype="int8", progress=False)


def test_backbone_by_path(tmp_path, manifest_path, tiny_checkpoints):
    result = extract_features(manifest_path, tiny_checkpoints["wavlm"], layers=[1], device="cpu", progress=False)
    assert result.backbone["family"] == "wavlm" and result.features.shape == (len(DURATIONS), 1, 64)


def test_long_clip_never_runs_more_than_a_chunk(tmp_path, synthetic_manifest, tiny_backbone, monkeypatch):
    """Bounded memory: the backbone only ever sees inputs of at most the chunk limit."""
    manifest = read_manifest(synthetic_manifest(tmp_path / "data", [7.3, 0.4]))
    seen = []
    original = LayerFeatures.frame_stats

    def recording(self, waveform):
        seen.append(int(waveform.shape[-1]))
        return original(self, waveform)

    packed = PackedFeatures.frame_stats

    def recording_packed(self, waveforms):  # the short clip goes through the packed runner
        seen.extend(int(w.shape[-1]) for w in waveforms)
        return packed(self, waveforms)

    monkeypatch.setattr(LayerFeatures, "frame_stats", recording)
    monkeypatch.setattr(PackedFeatures, "frame_stats", recording_packed)
    result = extract_features(manifest, tiny_backbone, device="cpu", chunk_seconds=2.0, progress=False)
    assert result.features.shape[0] == 2
    assert max(seen) <= 32_000 and sum(seen[:4]) == int(7.3 * 16_000)  # 4 chunks of the long clip, then the short
    assert seen[4] == 6_400


def test_shards_of_an_extraction_merge_into_the_one_run(tmp_path, manifest_path, tiny_backbone):
    """``shard=`` i/n units share one cache folder, each writing only its own index and prefixed files; a run
    without a shard then reads them all together, computes nothing, and has the one run's features exactly."""
    from vocalprobe.runtime.core.shards import Shard

    manifest = read_manifest(manifest_path)
    broken = ManifestRow("missing.wav", manifest.rows[0].label, split="train")
    manifest = write_manifest(manifest_path, [*manifest.rows, broken])
    one = extract_features(manifest, tiny_backbone, device="cpu", cache_dir=tmp_path / "one", batch_size=1,
                           progress=False)
    cache = tmp_path / "shared"
    parts = [extract_features(manifest, tiny_backbone, device="cpu", cache_dir=cache, batch_size=1, shard_size=2,
                              progress=False, shard=Shard(i, 3)) for i in range(3)]
    assert all(len(p.rows) for p in parts)  # each shard holds clips: three real parts
    assert sorted(r for p in parts for r in p.rows) == list(range(len(DURATIONS)))  # each clip in one shard
    assert [f.row for p in parts for f in p.failed] == [len(DURATIONS)]
    folder = parts[0].cache_dir
    assert folder == one.cache_dir.parent.parent / "shared" / one.cache_dir.name  # the same key
    assert sorted(p.name for p in folder.glob("index*.json")) == ["index-0of3.json", "index-1of3.json",
                                                                  "index-2of3.json"]
    assert all(p.name.split("-")[0] in {"0of3", "1of3", "2of3"} for p in folder.glob("*.npy"))
    joined = extract_features(manifest, tiny_backbone, device="cpu", cache_dir=cache, batch_size=1, progress=False)
    assert joined.stats["cached"] == len(DURATIONS) and joined.stats["computed"] == 0
    np.testing.assert_array_equal(joined.rows, one.rows)
    np.testing.assert_array_equal(joined.features, one.features)
    assert [f.row for f in joined.failed] == [f.row for f in one.failed] == [len(DURATIONS)]
    again = extract_features(manifest, tiny_backbone, device="cpu", cache_dir=cache, shard=Shard(1, 3),
                             progress=False)
    assert again.stats["computed"] == 0 and again.stats["cached"] == len(parts[1].rows)  # a shard resumes too
