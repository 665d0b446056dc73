"""--engine ray (runtime/engine/ray_engine.py) on a real local Ray: the same bytes as a local run, chunks cut only
where the samples stay exact, an actor killed mid-run is retried without duplicates, a clear error without Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_graphs import DEFAULT_FREQS, tone_track
from test_workers import FORMATS, config_of, make_recordings, run, tree

from vocalprobe.runtime.engine.onnx_model import OnnxModel
from vocalprobe.runtime.field.outputs import Outputs
from contextlib import contextmanager

from vocalprobe.runtime.engine import ray_engine
from vocalprobe.runtime.engine.batches import window_probabilities
from vocalprobe.runtime.engine.predict import predict
from vocalprobe.runtime.engine.ray_engine import ChunkPredictor, plan_chunks
from vocalprobe.runtime.engine.scale import ModelSpec, Scale
from vocalprobe.runtime.field.run_state import RunState
from vocalprobe.runtime.engine.sources import FileSource, collect_files
from vocalprobe.runtime.field.stream import DetectConfig, output_options, run_settings, run_sources
from vocalprobe.runtime.engine.windows import WindowPlan

pytestmark = pytest.mark.slow  # a Ray cluster and its actors: seconds, still part of the default run


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = make_recordings(tmp_path_factory.mktemp("rec"))
    sf.write(folder / "night2" / "20210505_040000.flac",  # at the model's rate and lossless: cut into chunks
             tone_track([(0.5, 2.0, DEFAULT_FREQS[1]), (6.0, 9.5, DEFAULT_FREQS[2])], 12.4, 16_000, seed=9), 16_000)
    return folder


@contextmanager
def ray_settings(chunk_windows: int = ray_engine.DEFAULT_CHUNK_WINDOWS, predictor: type = ChunkPredictor):
    """Small chunks (so recordings are cut) or an actor class that dies, for the runs inside."""
    saved = ray_engine.DEFAULT_CHUNK_WINDOWS, ray_engine.PREDICTOR
    ray_engine.DEFAULT_CHUNK_WINDOWS, ray_engine.PREDICTOR = chunk_windows, predictor
    try:
        yield
    finally:
        ray_engine.DEFAULT_CHUNK_WINDOWS, ray_engine.PREDICTOR = saved


def ray_run(folder: Path, out: Path, graph: Path, config: DetectConfig, **options):
    model = OnnxModel(graph, threads=1)
    with Outputs(out, FORMATS, 8000) as outputs, RunState(out, run_settings(model, config),
                                                         output_options(config, FORMATS)) as state, \
            ray_settings(**options):
        todo = list(state.todo(collect_files([folder], block_size=5_000)))
        return run_sources(todo, model, config, outputs, state, spec=ModelSpec((str(graph),), threads=1),
                           scale=Scale(engine="ray", concurrency=2))


def test_stream_via_ray_writes_the_bytes_of_a_local_run(ray_cluster, recordings, graph, tmp_path):
    local = run(recordings, tmp_path / "local", graph, None)
    config = config_of()
    chunks = plan_chunks(collect_files([recordings], block_size=5_000), config.plan, config.batch, 16_000,
                         chunk_windows=7)
    cut = [c for c in chunks if not c.whole]
    assert len(cut) > 4 and all(c.first_window % config.batch == 0 for c in cut)  # batch-aligned cuts
    assert {Path(c.name).suffix for c in cut} == {".wav", ".flac"}  # only files needing no resampling are cut
    summary = ray_run(recordings, tmp_path / "ray", graph, config, chunk_windows=7)
    assert summary.done == local.done and [n for n, _ in summary.failed] == ["night1/broken.WAV"]
    assert summary.audio_seconds == local.audio_seconds and summary.detections == local.detections > 0
    got, want = tree(tmp_path / "ray"), tree(tmp_path / "local")
    assert sorted(got) == sorted(want)
    assert [k for k in got if got[k] != want[k]] == []


@pytest.mark.parametrize("policy", ["shorter", "drop"])
def test_chunks_give_the_windows_and_probabilities_of_a_local_run(ray_cluster, recordings, graph, policy):
    model = OnnxModel(graph, threads=1)
    config = DetectConfig(WindowPlan.from_seconds(0.7, 0.4, 16_000, policy), batch=2)
    source = FileSource(recordings / "night2" / "20210505_040000.flac", "x.flac", 5_000)
    local = list(window_probabilities(source.blocks(16_000), model, config.plan, config.batch))
    assert len(plan_chunks([source], config.plan, config.batch, 16_000, chunk_windows=4)) > 3
    with ray_settings(chunk_windows=4):
        recording, = predict([source], model, config.plan, config.batch, Scale(engine="ray", concurrency=2),
                             spec=ModelSpec((str(graph),), threads=1))
        replayed = [(w, p) for batch in recording.predictions() for w, p in zip(batch.windows, batch.probabilities)]
    assert [w for w, _ in replayed] == [w for w, _ in local]
    np.testing.assert_array_equal(np.stack([p for _, p in replayed]), np.stack([p for _, p in local]))


class DiesOnce(ChunkPredictor):
    """Kills its actor process the first time it meets a chunk past the start of a recording (a marker file
    remembers it did), as a preempted node or an OOM kill would."""

    marker: str = ""

    def predict_chunk(self, chunk):
        if chunk.first_window > 0 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(chunk))
            os._exit(1)
        return super().predict_chunk(chunk)


def test_an_actor_killed_mid_run_is_retried_without_duplicates(ray_cluster, recordings, graph, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test file
    DiesOnce.marker = str(tmp_path / "died")
    local = run(recordings, tmp_path / "local", graph, None)
    summary = ray_run(recordings, tmp_path / "ray", graph, config_of(), chunk_windows=7, predictor=DiesOnce)
    assert (tmp_path / "died").exists(), "no actor was killed"
    assert summary.done == local.done
    got, want = tree(tmp_path / "ray"), tree(tmp_path / "local")
    assert [k for k in got if got[k] != want[k]] == [] and sorted(got) == sorted(want)
    rows = got["detections.jsonl"].splitlines()
    assert len(rows) == len(set(rows))


def test_without_ray_the_error_says_how_to_install_it():
    code = ("import sys; sys.modules['ray'] = None\n"
            "from vocalprobe.runtime.engine.ray_engine import import_ray, RayEngineError\n"
            "try:\n    import_ray()\nexcept RayEngineError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'vocalprobe[ray]'" in out


def test_a_ray_run_is_quiet_and_uses_no_deprecated_argument(recordings, graph, tmp_path):
    """`stream --engine ray` in its own process (its own local Ray): no Ray deprecation warning, no Ray Data
    progress bars or banners, a few lines of its own."""
    pytest.importorskip("ray.data", reason="ray[data] is not installed: the ray extra (pip install 'vocalprobe[ray]')")
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run([sys.executable, "-c", "from vocalprobe.cli import main; main()", "stream", str(recordings),
                           "-m", str(graph),
                           "-o", str(tmp_path / "out"), "--engine", "ray", "--concurrency", "1", "--threads", "1",
                           "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode in (0, 2), proc.stderr[-3000:]  # 2: the broken recording is listed in errors.csv
    assert "deprecated" not in proc.stderr, proc.stderr[-3000:]
    assert "done: 5 file(s)" in proc.stderr or "done: 4 file(s)" in proc.stderr, proc.stderr[-3000:]
    for noise in ("Starting execution", "Running Dataset", "Progress bars disabled", "Token authentication",
                  "core_worker"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 12, "\n".join(lines)
