"""`embed --engine ray` on a real local Ray: the archive is, row for row, the one a local `embed` writes (recordings
cut into chunks, resampled ones read whole, a broken one reported), and a re-run sends nothing to the cluster."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import tone_track
from test_shards_merge import assert_same_archive

from vocalprobe.runtime.archive.embed import embed_sources, is_archived
from vocalprobe.runtime.archive.store import ArchiveDB
from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.engine import ray_engine
from vocalprobe.runtime.engine.ray_engine import plan_chunks
from vocalprobe.runtime.engine.scale import ModelSpec, Scale
from vocalprobe.runtime.engine.sources import collect_files
from vocalprobe.runtime.engine.windows import WindowPlan

pytestmark = pytest.mark.slow  # a Ray cluster and its actors: seconds, still part of the default run


@pytest.fixture(scope="module")
def audio(tmp_path_factory, tone_folder):
    root = tone_folder(tmp_path_factory.mktemp("ray") / "audio", n_files=3, seconds=4.0)
    sf.write(root / "REC01" / "20210510_040000.flac",  # at the model's rate and lossless: cut into chunks
             tone_track([(0.5, 1.0, 600.0)], 6.3, 16_000, seed=7), 16_000)
    sf.write(root / "REC02" / "20210511_040000.WAV",  # resampled: one task
             tone_track([(1.0, 1.5, 4200.0)], 3.1, 22_050, seed=8), 22_050)
    (root / "REC02" / "broken.WAV").write_bytes(b"RIFF0000WAVEnot audio")
    return root


def test_embed_via_ray_is_the_local_archive(ray_cluster, audio, graph, tmp_path, run_cli, monkeypatch):
    args = ["embed", audio, "-m", graph, "--hop", "0.25", "--batch", "3"]
    local = run_cli([*args, "--db", tmp_path / "local"])
    assert local.exit_code == 2 and "could not embed REC02/broken.WAV" in local.output, local.output

    model = OnnxModel(graph, threads=1)
    plan = WindowPlan.from_seconds(0.5, 0.25, 16_000)
    files = collect_files([audio])
    chunks = plan_chunks(files, plan, 3, 16_000, chunk_windows=7)
    assert sum(not c.whole for c in chunks) > len(files)  # recordings really are cut
    monkeypatch.setattr(ray_engine, "DEFAULT_CHUNK_WINDOWS", 7)
    with ArchiveDB.open_writer(tmp_path / "ray") as archive:
        summary = embed_sources(files, model, plan, archive, spec=ModelSpec((str(graph),), threads=1), batch=3,
                                scale=Scale(engine="ray", concurrency=2))
    monkeypatch.undo()
    assert [n for n, _ in summary.failed] == ["REC02/broken.WAV"] and len(summary.done) == 5
    assert_same_archive(tmp_path / "ray", tmp_path / "local")

    cli = run_cli([*args, "--db", tmp_path / "ray-cli", "--engine", "ray", "--concurrency", "2"])
    assert cli.exit_code == 2 and "could not embed REC02/broken.WAV" in cli.output, cli.output
    assert_same_archive(tmp_path / "ray-cli", tmp_path / "local")


def test_a_resumed_ray_embed_adds_only_the_new_recording(ray_cluster, audio, graph, tmp_path, run_cli):
    folder = tmp_path / "audio"
    shutil.copytree(audio, folder)
    (folder / "REC02" / "broken.WAV").unlink()
    args = ["embed", folder, "-m", graph, "--db", tmp_path / "db", "--engine", "ray", "--concurrency", "2"]
    assert run_cli(args).exit_code == 0
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        before = archive.count_windows()
        assert all(is_archived(archive, s) for s in collect_files([folder]))  # none is sent to the cluster again
    extra = folder / "REC01" / "20210512_040000.WAV"
    sf.write(extra, tone_track([(0.2, 0.6, 600.0)], 2.0, 16_000, seed=11), 16_000, subtype="FLOAT")
    model = OnnxModel(graph, threads=1)
    plan = WindowPlan.from_seconds(0.5, None, 16_000)
    files = collect_files([folder])
    with ArchiveDB.open_writer(tmp_path / "db") as archive:
        summary = embed_sources(files, model, plan, archive, spec=ModelSpec((str(graph),), threads=1),
                                scale=Scale(engine="ray", concurrency=2))
    assert summary.done == [extra.relative_to(folder).as_posix()]
    assert len(summary.skipped) == len(files) - 1 and all(why == "already embedded" for _, why in summary.skipped)
    with ArchiveDB.open_reader(tmp_path / "db") as archive:
        assert archive.count_windows() == before + 4
        ids = [w.id for w in archive.windows()]
        assert archive.index.size == len(ids) == len(set(ids))
        assert np.isfinite(archive.vectors(ids)).all()
