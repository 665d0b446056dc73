"""``study --engine ray`` (training/extract_ray.py) on a real local Ray: (backbone, dataset, shard) tasks write the
feature cache a local run writes, a task killed mid-run is retried and stores no clip twice, and the study's probes
are those of a local study."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_study import make_tones

from vocalprobe.runtime.core.manifest import read_manifest
from vocalprobe.training.extract import extract_features
from vocalprobe.training.extract_ray import extract_on_ray, extract_unit, make_units

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return make_tones(tmp_path_factory.mktemp("tones"))


def units_of(backbone: Path, manifest: Path, cache: Path, **options):
    return make_units([(str(backbone), manifest)], 2, cache_dir=cache, layers=None, chunk_seconds=20.0, batch_size=1,
                      dtype="float32", **options)


def local_features(manifest: Path, backbone: Path, cache: Path):
    return extract_features(read_manifest(manifest), str(backbone), device="cpu", cache_dir=cache, batch_size=1,
                            progress=False)


def test_features_via_ray_are_the_local_cache(ray_cluster, tones, tiny_checkpoints, tmp_path):
    backbone = tiny_checkpoints["hubert"]
    local = local_features(tones, backbone, tmp_path / "local")
    results = extract_on_ray(units_of(backbone, tones, tmp_path / "ray"))
    assert [r["shard"] for r in results] == ["0/2", "1/2"] and all(r["clips"] for r in results)
    assert sum(r["clips"] for r in results) == len(local.rows) and {r["device"] for r in results} == {"cpu"}
    joined = local_features(tones, backbone, tmp_path / "ray")
    assert joined.cache_dir.name == local.cache_dir.name  # the same cache key
    assert joined.stats["computed"] == 0 and joined.stats["cached"] == len(local.rows)
    np.testing.assert_array_equal(joined.rows, local.rows)
    np.testing.assert_array_equal(joined.features, local.features)


def dies_once(unit, device="cpu", threads=1):
    """Kills its worker process right after its first cache file (a marker file remembers it did), as a preempted
    node or an OOM kill would."""
    marker = Path(unit.cache_dir).parent / f"died-{unit.shard.replace('/', 'of')}"

    def maybe_die(computed: int) -> None:
        if not marker.exists():
            marker.write_text(str(computed))
            os._exit(1)

    return extract_unit(unit, device=device, threads=threads, on_shard=maybe_die)


def test_a_task_killed_mid_run_is_retried_without_duplicates(ray_cluster, tones, tiny_checkpoints, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test file
    backbone = tiny_checkpoints["wav2vec2"]
    local = local_features(tones, backbone, tmp_path / "local")
    results = extract_on_ray(units_of(backbone, tones, tmp_path / "ray", shard_size=4), task=dies_once)
    assert sorted(p.name for p in tmp_path.glob("died-*")) == ["died-0of2", "died-1of2"]  # both were killed once
    assert all(r["computed"] < r["clips"] for r in results)  # the retry resumed from the file written before
    (folder,) = (tmp_path / "ray").iterdir()
    held = [row for index in folder.glob("index-*.json") for shard in json.loads(index.read_text())["shards"]
            for row in shard["rows"]]
    assert sorted(held) == list(local.rows)  # every clip stored once
    joined = local_features(tones, backbone, tmp_path / "ray")
    assert joined.stats["computed"] == 0
    np.testing.assert_array_equal(joined.features, local.features)


def test_study_on_ray_trains_the_probes_of_a_local_study(ray_cluster, tones, tiny_checkpoints, tmp_path):
    from vocalprobe.training.study.config import DatasetSpec, StudyConfig
    from vocalprobe.training.study.runner import run_study

    config = StudyConfig(name="local", datasets=(DatasetSpec("tones", tones),), layers=(0, 2), seeds=1,
                         backbones=(str(tiny_checkpoints["hubert"]),), device="cpu", batch_size=1,
                         out_root=tmp_path / "studies", cache_dir=tmp_path / "cache-local", bootstrap_resamples=20)
    local = run_study(config, progress=False, write_outputs=False)
    on_ray = replace(config, name="ray", cache_dir=tmp_path / "cache-ray")
    summary = run_study(on_ray, progress=False, write_outputs=False, engine="ray")
    assert sorted(p.name for p in next((tmp_path / "cache-ray").iterdir()).glob("index*.json")) == [
        "index-0of2.json", "index-1of2.json"]  # the features came from the Ray tasks
    assert summary.results == local.results
    posteriors = [{p.relative_to(c.out_dir): p.read_bytes() for p in c.out_dir.rglob("*.test_proba.npy")}
                  for c in (config, on_ray)]
    assert len(posteriors[0]) == len(local.results) and posteriors[0] == posteriors[1]


def test_study_shards_extract_into_the_cache_and_the_study_then_trains_from_it(tones, tiny_checkpoints, tmp_path):
    """`study --shard i/n` (a SLURM array task each) only extracts; the study without --shard computes nothing."""
    from typer.testing import CliRunner

    from vocalprobe.cli import app
    from vocalprobe.training.study.config import DatasetSpec, StudyConfig

    config = StudyConfig(name="sharded", datasets=(DatasetSpec("tones", tones),), layers=(0, 1), seeds=1,
                         backbones=(str(tiny_checkpoints["hubert"]),), device="cpu", batch_size=1,
                         out_root=tmp_path / "studies", cache_dir=tmp_path / "cache", bootstrap_resamples=20)
    toml = tmp_path / "study.toml"
    toml.write_text(config.to_toml())
    runner = CliRunner()
    for i in range(2):
        result = runner.invoke(app, ["study", "--config", str(toml), "--shard", f"{i}/2", "--no-progress"])
        assert result.exit_code == 0, result.output
        assert f"features of shard {i}/2" in result.output
    assert not config.out_dir.joinpath("summary.json").exists()  # no probe before every shard is done
    (folder,) = (tmp_path / "cache").iterdir()
    assert sorted(p.name for p in folder.glob("index*.json")) == ["index-0of2.json", "index-1of2.json"]
    result = runner.invoke(app, ["study", "--config", str(toml), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (config.out_dir / "report.md").is_file()
    assert not (folder / "index.json").exists()  # nothing was left to compute
    both = runner.invoke(app, ["study", "--config", str(toml), "--shard", "0/2", "--engine", "ray"])
    assert both.exit_code == 1 and "error: --shard is for a batch scheduler" in both.output
    bad = runner.invoke(app, ["study", "--config", str(toml), "--shard", "2/2"])
    assert bad.exit_code == 1 and "error: --shard 2/2" in bad.output
